"""Destinations for a session's lines: `http` (the confab backend) and `archive` (local SQLite)."""
