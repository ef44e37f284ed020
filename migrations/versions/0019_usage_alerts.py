"""Alert thresholds of more than one kind: a rated amount (migration 0014) or a meter's usage.

- ``alert_thresholds.kind``: ``amount`` (every existing row: the column's default) or ``usage``
  (``meter``, ``quantity`` of ``unit``: ``consume_bytes``, 500, ``GB``). ``amount`` is now
  set for the ``amount`` kind only. One CHECK per kind says what it needs, and
  ``alert_thresholds_kind`` lists the kinds: a third kind (a remaining prepaid ``balance``)
  replaces that CHECK and adds its own.
- ``alert_crossings.quantity``: what a usage threshold's period reached, in the meter's base
  units (bytes, records or requests); ``amount`` is now set for amount crossings only.

Revision ID: 0019
Revises: 0015
"""

from alembic import op

revision = "0019"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE alert_thresholds
            ADD COLUMN kind text NOT NULL DEFAULT 'amount',
            ADD COLUMN meter text,
            ADD COLUMN quantity numeric CHECK (quantity > 0),
            ADD COLUMN unit text,
            ALTER COLUMN amount DROP NOT NULL,
            ADD CONSTRAINT alert_thresholds_kind CHECK (kind IN ('amount', 'usage')),
            ADD CONSTRAINT alert_thresholds_amount_kind CHECK (kind <> 'amount' OR amount IS NOT NULL),
            ADD CONSTRAINT alert_thresholds_usage_kind
                CHECK (kind <> 'usage' OR (meter IS NOT NULL AND quantity IS NOT NULL AND unit IS NOT NULL))
        """
    )
    op.execute(
        """
        ALTER TABLE alert_crossings
            ADD COLUMN quantity numeric(38, 0),
            ALTER COLUMN amount DROP NOT NULL,
            ADD CONSTRAINT alert_crossings_measure CHECK (num_nonnulls(amount, quantity) = 1)
        """
    )


def downgrade() -> None:
    op.execute(
        "DELETE FROM alert_crossings WHERE threshold_id IN (SELECT id FROM alert_thresholds WHERE kind <> 'amount')"
    )
    op.execute("DELETE FROM alert_thresholds WHERE kind <> 'amount'")
    op.execute(
        """
        ALTER TABLE alert_crossings
            DROP CONSTRAINT alert_crossings_measure,
            DROP COLUMN quantity,
            ALTER COLUMN amount SET NOT NULL
        """
    )
    op.execute(
        """
        ALTER TABLE alert_thresholds
            DROP CONSTRAINT alert_thresholds_usage_kind,
            DROP CONSTRAINT alert_thresholds_amount_kind,
            DROP CONSTRAINT alert_thresholds_kind,
            DROP COLUMN unit,
            DROP COLUMN quantity,
            DROP COLUMN meter,
            DROP COLUMN kind,
            ALTER COLUMN amount SET NOT NULL
        """
    )
