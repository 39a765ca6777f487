"""catalog: the model catalog's stored provider lists (table model_catalog)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_catalog",
        sa.Column("id", sa.String(320), primary_key=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("entry", sa.JSON, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("fetched_at", sa.Float, nullable=False),
    )
    op.create_index("ix_model_catalog_provider", "model_catalog", ["provider"])


def downgrade() -> None:
    op.drop_table("model_catalog")
