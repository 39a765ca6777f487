"""identity: users, virtual keys (hashed), rotating-key policies

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _limit_columns() -> list[sa.Column]:
    return [
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("daily_requests", sa.Integer),
        sa.Column("budget_usd", sa.Float),
        sa.Column("budget_period", sa.String(16), nullable=False, server_default="total"),
    ]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(256)),
        sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        *_limit_columns(),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_table(
        "key_policies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("period_seconds", sa.Float, nullable=False),
        sa.Column("grace_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("current_key_id", sa.String(32)),
        sa.Column("previous_key_id", sa.String(32)),
        sa.Column("rotated_at", sa.Float, nullable=False),
        sa.Column("next_rotation_at", sa.Float, nullable=False),
        sa.Column("sealed_key", sa.Text),
        sa.Column("allowed_models", sa.JSON),
        *_limit_columns(),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("name", name="uq_key_policies_name"),
    )
    op.create_index("ix_key_policies_next_rotation_at", "key_policies", ["next_rotation_at"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("display_prefix", sa.String(16), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", name="fk_api_keys_user_id")),
        sa.Column("policy_id", sa.String(32), sa.ForeignKey("key_policies.id", name="fk_api_keys_policy_id")),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("revoked_at", sa.Float),
        sa.Column("last_used_at", sa.Float),
        sa.Column("allowed_models", sa.JSON),
        *_limit_columns(),
        sa.Column("meta", sa.JSON),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_index("ix_api_keys_policy_id", "api_keys", ["policy_id"])


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("key_policies")
    op.drop_table("users")
