"""video_jobs: POST /v1/videos jobs (status, owner, result file, error, the worker's lease)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "video_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("caller", sa.JSON, nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("provider", sa.String(64)),
        sa.Column("served_model", sa.String(256)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("seconds", sa.String(16), nullable=False),
        sa.Column("size", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("input_file", sa.String(64)),
        sa.Column("input_name", sa.String(256)),
        sa.Column("result_file", sa.String(64)),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("completed_at", sa.Float),
        sa.Column("expires_at", sa.Float),
        sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.String(32)),
        sa.Column("lease_until", sa.Float, nullable=False, server_default="0"),
    )
    op.create_index("ix_video_jobs_principal_created", "video_jobs", ["principal", "created_at"])
    op.create_index("ix_video_jobs_created_at", "video_jobs", ["created_at"])
    op.create_index("ix_video_jobs_status_lease", "video_jobs", ["status", "lease_until"])


def downgrade() -> None:
    op.drop_table("video_jobs")
