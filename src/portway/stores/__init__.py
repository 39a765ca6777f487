"""Stores: SQL tables, queries and Alembic migrations (SQLite by default, Postgres by URL)."""
