"""An account's own access grants (``access:`` in accounts.yaml), added to its plan's.

- ``accounts.access``: the grants as billing.domain.access stores them (``{"topics": [...],
  "groups": [...]}``), NULL when the account has none.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE accounts ADD COLUMN access jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE accounts DROP COLUMN access")
