"""Alert thresholds of more than one kind: a rated amount (migration 0014), a meter's usage or
the money left of prepaid grants.

- ``alert_thresholds.kind``: ``amount`` (every existing row: the column's default), ``usage``
  (``meter``, ``quantity`` of ``unit``: ``consume_bytes``, 500, ``GB``) or ``balance`` (the
  ``amount`` of money left at or below which it is reached). ``amount`` is now set for the
  ``amount`` and ``balance`` kinds only. One CHECK per kind says what it needs, and
  ``alert_thresholds_kind`` lists the kinds.
- ``alert_crossings.quantity``: what a usage threshold's period reached, in the meter's base
  units (bytes, records or requests); ``amount`` is now set for amount and balance crossings
  only (the rated amount, or the money left).
- ``episode_events``: the quota events (``quota.throttled``, ``quota.blocked``,
  ``quota.released``) each enforcement episode emitted, one row per episode and type, written by
  the sink in the transaction that stores the episode's record: the primary key is what makes a
  redelivered record emit nothing more. No foreign key to ``enforcement_episodes`` (an episode
  may be deleted, its event stays); the one to ``webhook_events`` is checked at commit (the row
  is claimed before its event is written). The episodes already stored are marked as emitted
  (no events for the past).

Revision ID: 0019
Revises: 0018
"""

from alembic import op

revision = "0019"
down_revision = "0018"
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
            ADD CONSTRAINT alert_thresholds_kind CHECK (kind IN ('amount', 'usage', 'balance')),
            ADD CONSTRAINT alert_thresholds_amount_kind CHECK (kind NOT IN ('amount', 'balance') OR amount IS NOT NULL),
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
    op.execute(
        """
        CREATE TABLE episode_events (
            episode_id text NOT NULL,
            type text NOT NULL CHECK (type IN ('quota.throttled', 'quota.blocked', 'quota.released')),
            event_id text REFERENCES webhook_events (id) DEFERRABLE INITIALLY DEFERRED,
            PRIMARY KEY (episode_id, type)
        )
        """
    )
    op.execute(
        "INSERT INTO episode_events (episode_id, type) "
        "SELECT id, CASE kind WHEN 'throttle' THEN 'quota.throttled' ELSE 'quota.blocked' END "
        "FROM enforcement_episodes "
        "UNION ALL SELECT id, 'quota.released' FROM enforcement_episodes WHERE ended_at IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP TABLE episode_events")
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
