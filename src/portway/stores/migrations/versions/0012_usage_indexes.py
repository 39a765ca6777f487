"""usage indexes: (principal, ts) for one caller's usage over a time range (replaces the principal index)

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_request_log_principal_ts", "request_log", ["principal", "ts"])
    # A prefix of the new index: the old one would only cost every insert.
    op.drop_index("ix_request_log_principal", table_name="request_log")


def downgrade() -> None:
    op.create_index("ix_request_log_principal", "request_log", ["principal"])
    op.drop_index("ix_request_log_principal_ts", table_name="request_log")
