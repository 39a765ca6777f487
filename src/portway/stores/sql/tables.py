"""Table definitions (SQLAlchemy Core). Alembic migrations in stores/migrations create and evolve them."""

from __future__ import annotations

import sqlalchemy as sa

from portway.usage.records import TEXT_LENGTHS as _LEN

# The newest Alembic revision in stores/migrations/versions (a unit test keeps the two in step): a worker
# that finds the database already there skips importing Alembic at all.
SCHEMA_REVISION = "0013"

metadata = sa.MetaData()

request_log = sa.Table(
    "request_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("request_id", sa.String(_LEN["request_id"]), nullable=False),
    sa.Column("principal", sa.String(_LEN["principal"]), nullable=False),
    sa.Column("requested_model", sa.String(_LEN["requested_model"]), nullable=False),
    sa.Column("provider", sa.String(_LEN["provider"])),
    sa.Column("served_model", sa.String(_LEN["served_model"])),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("stream", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error_code", sa.String(_LEN["error_code"])),
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("usage_estimated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("endpoint", sa.String(_LEN["endpoint"]), nullable=False, server_default="chat"),
    sa.Column("bytes_in", sa.Integer, nullable=False, server_default="0"),
    sa.Column("bytes_out", sa.Integer, nullable=False, server_default="0"),
    sa.Column("images", sa.Integer, nullable=False, server_default="0"),
    sa.Column("characters", sa.Integer, nullable=False, server_default="0"),
    sa.Column("audio_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("video_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("ttft_ms", sa.Float, nullable=False, server_default="0"),
    sa.Column("cached_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("reasoning_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cache_hit", sa.Boolean, nullable=False, server_default=sa.false()),
    # One caller's usage over a time range (/v1/usage, the key and user filters): 0012.
    sa.Index("ix_request_log_principal_ts", "principal", "ts"),
)
