"""Invoice delivery outbox: one row per finalized invoice to send, and what became of it.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE invoice_deliveries (
            invoice_id   bigint PRIMARY KEY REFERENCES invoices (id),
            to_address   text NOT NULL,
            message_id   text NOT NULL UNIQUE,
            status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
            attempts     integer NOT NULL DEFAULT 0,
            last_error   text,
            queued_at    timestamptz NOT NULL DEFAULT now(),
            sent_at      timestamptz
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE invoice_deliveries")
