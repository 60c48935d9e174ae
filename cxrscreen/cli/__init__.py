"""Typer CLI: one module per command; thin over the Python API."""
