"""response_cache: the response cache's answers (cache.store: database), keyed by a request digest

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "response_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_response_cache_expires", "response_cache", ["expires_at"])


def downgrade() -> None:
    op.drop_table("response_cache")
