"""usage analytics: TTFT, cached and reasoning tokens, cache hits on the request log

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        batch.add_column(sa.Column("ttft_ms", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cached_tokens", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("reasoning_tokens", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cache_hit", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        for name in ("cache_hit", "reasoning_tokens", "cached_tokens", "ttft_ms"):
            batch.drop_column(name)
