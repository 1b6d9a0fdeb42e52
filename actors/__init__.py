"""Dramatiq side of jobline: job functions, the runner, middleware and the sweeper."""
