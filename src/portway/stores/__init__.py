"""Stores: interfaces with memory, SQL (SQLite default, Postgres) and Redis implementations."""
