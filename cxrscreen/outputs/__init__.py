"""Worklists (CSV), per-study PDF reports, the batch summary."""
