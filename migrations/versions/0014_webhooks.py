"""Webhooks: endpoints per account, the events (an outbox written with the change that causes
them), one delivery per event and endpoint, and the log of every attempt.

- ``webhook_endpoints``: an account's URL, its signing secret (kept: the sender signs with it)
  and the event types it takes; removed endpoints stay (``active`` false) for the log.
- ``webhook_events``: written in the transaction of the change (an invoice finalized or voided,
  a credential revoked) with the exact JSON body every attempt sends.
- ``webhook_deliveries``: one per event and endpoint (unique), queued with the event; the
  sender claims due rows (``next_attempt_at``) ``FOR UPDATE SKIP LOCKED``.
- ``webhook_attempts``: one row per attempt: status code or error, duration.
- ``alert_thresholds``: an amount per account; ``alert_crossings``: the periods whose rated
  amount reached it (one row per threshold and period: the event is emitted once).

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE webhook_endpoints (
            id text PRIMARY KEY,
            account_code text NOT NULL REFERENCES accounts (code),
            url text NOT NULL,
            secret text NOT NULL,
            event_types text[] NOT NULL,
            active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            removed_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX webhook_endpoints_account ON webhook_endpoints (account_code)")
    op.execute(
        """
        CREATE TABLE webhook_events (
            id text PRIMARY KEY,
            account_code text NOT NULL,
            type text NOT NULL,
            created_at timestamptz NOT NULL,
            body text NOT NULL
        )
        """
    )
    op.execute(
        """
        CREATE TABLE webhook_deliveries (
            id bigserial PRIMARY KEY,
            event_id text NOT NULL REFERENCES webhook_events (id),
            endpoint_id text NOT NULL REFERENCES webhook_endpoints (id),
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sending', 'delivered', 'failed', 'cancelled')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL,
            last_status integer,
            last_error text,
            delivered_at timestamptz,
            UNIQUE (event_id, endpoint_id)
        )
        """
    )
    op.execute(
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) "
        "WHERE status IN ('pending', 'sending')"
    )
    op.execute(
        """
        CREATE TABLE webhook_attempts (
            id bigserial PRIMARY KEY,
            delivery_id bigint NOT NULL REFERENCES webhook_deliveries (id),
            attempt integer NOT NULL,
            attempted_at timestamptz NOT NULL,
            status_code integer,
            error text,
            duration_ms double precision NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id)")
    op.execute(
        """
        CREATE TABLE alert_thresholds (
            id text PRIMARY KEY,
            account_code text NOT NULL REFERENCES accounts (code),
            amount numeric(20, 6) NOT NULL CHECK (amount > 0),
            active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE alert_crossings (
            threshold_id text NOT NULL REFERENCES alert_thresholds (id),
            period text NOT NULL,
            amount numeric(20, 6) NOT NULL,
            crossed_at timestamptz NOT NULL,
            event_id text NOT NULL REFERENCES webhook_events (id),
            PRIMARY KEY (threshold_id, period)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE alert_crossings")
    op.execute("DROP TABLE alert_thresholds")
    op.execute("DROP TABLE webhook_attempts")
    op.execute("DROP TABLE webhook_deliveries")
    op.execute("DROP TABLE webhook_events")
    op.execute("DROP TABLE webhook_endpoints")
