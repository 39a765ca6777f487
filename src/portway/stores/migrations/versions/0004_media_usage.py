"""request_log: the endpoint (task) of each request, bytes in/out and media units (images, characters,
audio and video seconds)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("endpoint", sa.String(32), "chat"),
    ("bytes_in", sa.Integer, "0"),
    ("bytes_out", sa.Integer, "0"),
    ("images", sa.Integer, "0"),
    ("characters", sa.Integer, "0"),
    ("audio_seconds", sa.Float, "0"),
    ("video_seconds", sa.Float, "0"),
)


def upgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        for name, type_, default in _COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=False, server_default=default))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        for name, _, _ in _COLUMNS:
            batch.drop_column(name)
