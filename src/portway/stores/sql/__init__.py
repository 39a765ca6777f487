"""SQLAlchemy 2 async stores. SQLite (aiosqlite) by default, Postgres (asyncpg) by URL."""
