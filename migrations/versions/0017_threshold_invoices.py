"""Threshold invoices (progressive billing, billing.services.progressive).

- ``invoices.kind`` may be ``threshold``: an invoice issued mid-period for the usage so far. A
  period may have several, so the one-live-invoice-per (account, period, kind) index now leaves
  them out; they are numbered and frozen in the transaction that creates them (the same gapless
  sequence, the same immutability trigger, unchanged), so at most one is ever a draft (an index
  says so).
- The final invoice deducts each with a line of kind ``threshold`` whose
  ``usage_ref->>'threshold_invoice'`` names it.

Downgrade refuses while threshold invoices exist (the old CHECK would not hold).

Revision ID: 0017
Revises: 0016
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE invoices DROP CONSTRAINT invoices_kind_check")
    op.execute(
        "ALTER TABLE invoices ADD CONSTRAINT invoices_kind_check "
        "CHECK (kind IN ('standard', 'correction', 'threshold'))"
    )
    op.execute("DROP INDEX invoices_one_per_period")
    # one live standard (or correction) invoice per account and period; threshold invoices: many
    op.execute(
        "CREATE UNIQUE INDEX invoices_one_per_period ON invoices (account_code, period_start, kind) "
        "WHERE status <> 'void' AND kind <> 'threshold'"
    )
    op.execute(
        "CREATE UNIQUE INDEX invoices_one_threshold_draft ON invoices (account_code, period_start) "
        "WHERE kind = 'threshold' AND status = 'draft'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX invoices_one_threshold_draft")
    op.execute("DROP INDEX invoices_one_per_period")
    op.execute(
        "CREATE UNIQUE INDEX invoices_one_per_period ON invoices (account_code, period_start, kind) "
        "WHERE status <> 'void'"
    )
    op.execute("ALTER TABLE invoices DROP CONSTRAINT invoices_kind_check")
    op.execute("ALTER TABLE invoices ADD CONSTRAINT invoices_kind_check CHECK (kind IN ('standard', 'correction'))")
