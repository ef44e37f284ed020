"""API keys for ops: a third role that reads only the live view (``/v1/live``), for wall screens.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check")
    op.execute("ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK (role IN ('partner', 'finance', 'ops'))")


def downgrade() -> None:
    # an ops key cannot exist under the older schema: remove them rather than fail the downgrade
    op.execute("DELETE FROM api_keys WHERE role = 'ops'")
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check")
    op.execute("ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK (role IN ('partner', 'finance'))")
