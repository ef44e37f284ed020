"""Throttle and block episodes the gateways applied (``TOPIC_ENFORCEMENT_EVENTS``), for partners.

- ``enforcement_episodes``: one row per episode (``metering.entitlements.Episode``), keyed by its
  id; the usage sink upserts each record and keeps the one with the newest ``updated_at``, so a
  replayed or late record changes nothing. No foreign key to ``accounts``: a gateway's record is
  kept even for an account the catalog no longer lists. ``limit_per_second`` is the record's
  ``limit``.
- Statement-level triggers add to ``usage_period_marks`` (migration 0008) for every month an
  episode written touches (from its start to its end or last update), as usage rows do: a
  stored statement of that month is then out of date and recomputed with its "Throttles and
  blocks" section.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE enforcement_episodes (
            id text PRIMARY KEY,
            gateway text NOT NULL,
            account_code text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('throttle', 'block')),
            direction text NOT NULL,
            cause text NOT NULL CHECK (cause IN ('quota', 'cap')),
            reason text NOT NULL,
            started_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            ended_at timestamptz,
            held_seconds double precision NOT NULL DEFAULT 0,
            requests bigint NOT NULL DEFAULT 0,
            limit_per_second bigint,
            meter text
        )
        """
    )
    op.execute("CREATE INDEX enforcement_episodes_account ON enforcement_episodes (account_code, started_at)")
    for event, table in (("INSERT", "new_rows"), ("UPDATE", "new_rows"), ("DELETE", "old_rows")):
        op.execute(
            f"""
            CREATE FUNCTION streamtoll_episode_mark_{event.lower()}() RETURNS trigger LANGUAGE plpgsql
            SECURITY DEFINER SET search_path = public AS $$
            BEGIN
                INSERT INTO usage_period_marks AS m (month, slot, mark)
                SELECT DISTINCT month::date, (txid_current() % 16)::smallint, 1
                FROM {table}, generate_series(
                    date_trunc('month', started_at AT TIME ZONE 'UTC'),
                    date_trunc('month', coalesce(ended_at, updated_at) AT TIME ZONE 'UTC'),
                    interval '1 month'
                ) AS month
                ORDER BY 1
                ON CONFLICT (month, slot) DO UPDATE SET mark = m.mark + 1;
                RETURN NULL;
            END $$
            """
        )
        referencing = "NEW TABLE AS new_rows" if table == "new_rows" else "OLD TABLE AS old_rows"
        op.execute(
            f"CREATE TRIGGER enforcement_episodes_mark_{event.lower()} AFTER {event} ON enforcement_episodes "
            f"REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION streamtoll_episode_mark_{event.lower()}()"
        )


def downgrade() -> None:
    for event in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER enforcement_episodes_mark_{event} ON enforcement_episodes")
        op.execute(f"DROP FUNCTION streamtoll_episode_mark_{event}()")
    op.execute("DROP TABLE enforcement_episodes")
