"""provider_status: one row per provider per check slot, for the uptime of GET /v1/status

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_status",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("slot", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float),
    )
    op.create_index("ix_provider_status_ts", "provider_status", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_provider_status_ts", table_name="provider_status")
    op.drop_table("provider_status")
