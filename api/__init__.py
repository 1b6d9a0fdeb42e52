"""HTTP side of jobline: the FastAPI app, its publisher, and the `jobline` command."""
