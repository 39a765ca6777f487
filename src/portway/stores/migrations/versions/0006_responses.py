"""responses: stored Responses API answers (POST /v1/responses with store), for previous_response_id

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("previous_response_id", sa.String(64)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("input_items", sa.JSON, nullable=False),
    )
    op.create_index("ix_responses_principal_created", "responses", ["principal", "created_at"])


def downgrade() -> None:
    op.drop_table("responses")
