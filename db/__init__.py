"""Persistence for jobline: settings, schema, migrations and every query."""
