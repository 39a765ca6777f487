"""Table definitions (SQLAlchemy Core). Alembic migrations in portway/migrations create and evolve them."""

from __future__ import annotations

import sqlalchemy as sa

# The newest Alembic revision in portway/migrations/versions (a unit test keeps the two in step): a worker
# that finds the database already there skips importing Alembic at all.
SCHEMA_REVISION = "0003"

# sa.Integer is a 32-bit INTEGER on Postgres (SQLite's are 64-bit): records are clamped to the narrower one.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1

metadata = sa.MetaData()

request_log = sa.Table(
    "request_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("principal", sa.String(128), nullable=False, index=True),
    sa.Column("requested_model", sa.String(256), nullable=False),
    sa.Column("provider", sa.String(64)),
    sa.Column("served_model", sa.String(256)),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("stream", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error_code", sa.String(64)),
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("usage_estimated", sa.Boolean, nullable=False, server_default=sa.false()),
)
