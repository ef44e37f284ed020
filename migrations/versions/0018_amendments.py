"""Amendments: corrections of metered usage with an audit trail (billing.services.amendments).

- ``amendments``: one row per correction — ``kind`` (``import``: corrected rows from a file;
  ``remeter``: the input topics folded again), the range ``[range_from, range_to)``, why
  (``reason``), who (``actor``) and when (``created_at``). Never changed nor deleted (a trigger
  refuses it), like its rows and amounts.
- ``usage_amendment_rows``: what an amendment changes, per usage key and hour, as the
  *difference* it makes (quantities may be negative). What the sink wrote (``usage_shard_rows``)
  is never edited: usage = the shard rows + these rows, added up per key and hour. The trigger
  that keeps ``usage_daily`` exact for the shard rows (0007) and the statement marks (0008) run on
  these rows too, so whole-day reads and stored statements see a correction at once; hourly
  reads add these rows in (``billing.adapters.repositories.usage``).
- ``amendment_amounts``: per account and period the amendment touched, its rated amount (before
  tax) before → after and the usage before → after (JSON: per source and direction).

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE amendments (
            id          bigserial PRIMARY KEY,
            kind        text NOT NULL CHECK (kind IN ('import', 'remeter')),
            range_from  timestamptz NOT NULL,
            range_to    timestamptz NOT NULL CHECK (range_to > range_from),
            reason      text NOT NULL CHECK (btrim(reason) <> ''),
            actor       text NOT NULL CHECK (btrim(actor) <> ''),
            created_at  timestamptz NOT NULL
        )
        """
    )
    op.execute(
        """
        CREATE TABLE usage_amendment_rows (
            amendment_id     bigint      NOT NULL REFERENCES amendments (id),
            source           varchar(32) NOT NULL CHECK (source IN ('proxy', 'broker_metrics', 'audit_log')),
            principal        text        NOT NULL,
            client_id        text        NOT NULL,
            virtual_cluster  text        NOT NULL,
            topic            text        NOT NULL,
            direction        varchar(8)  NOT NULL CHECK (direction IN ('produce', 'consume')),
            hour             timestamptz NOT NULL CHECK (date_trunc('hour', hour) = hour),
            bytes            bigint      NOT NULL,
            records          bigint      NOT NULL,
            requests         bigint      NOT NULL,
            denied_requests  bigint      NOT NULL,
            PRIMARY KEY (source, principal, client_id, virtual_cluster, topic, direction, hour, amendment_id)
        )
        """
    )
    op.execute("CREATE INDEX usage_amendment_rows_hour ON usage_amendment_rows (hour, principal)")
    op.execute("CREATE INDEX usage_amendment_rows_amendment ON usage_amendment_rows (amendment_id)")
    op.execute(
        """
        CREATE TABLE amendment_amounts (
            amendment_id   bigint        NOT NULL REFERENCES amendments (id),
            account_code   text          NOT NULL REFERENCES accounts (code),
            period         varchar(7)    NOT NULL,
            currency       char(3)       NOT NULL,
            amount_before  numeric(20, 6) NOT NULL,
            amount_after   numeric(20, 6) NOT NULL,
            usage          jsonb         NOT NULL,
            PRIMARY KEY (amendment_id, account_code, period)
        )
        """
    )
    # the same row-level trigger as the shard rows' (0007): usage_daily = shard rows + amendment rows
    op.execute(
        "CREATE TRIGGER usage_amendment_rows_daily AFTER INSERT ON usage_amendment_rows "
        "FOR EACH ROW EXECUTE FUNCTION streamtoll_usage_daily()"
    )
    # and the statement marks (0008): a stored statement of a corrected month is out of date
    op.execute(
        "CREATE TRIGGER usage_amendment_rows_mark_insert AFTER INSERT ON usage_amendment_rows "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION streamtoll_usage_mark_insert()"
    )
    op.execute(
        """
        CREATE FUNCTION streamtoll_guard_amendment() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'amendments are an audit trail; % cannot be changed or deleted', TG_TABLE_NAME
                USING ERRCODE = 'check_violation';
        END $$
        """
    )
    for table in ("amendments", "usage_amendment_rows", "amendment_amounts"):
        op.execute(
            f"CREATE TRIGGER {table}_guard BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION streamtoll_guard_amendment()"
        )


def downgrade() -> None:
    for table in ("amendments", "usage_amendment_rows", "amendment_amounts"):
        op.execute(f"DROP TRIGGER {table}_guard ON {table}")
    op.execute("DROP FUNCTION streamtoll_guard_amendment()")
    # the amendments leave usage_daily as the shard rows alone make it
    op.execute(
        """
        INSERT INTO usage_daily AS d
            (source, principal, client_id, virtual_cluster, topic, direction, day,
             bytes, records, requests, denied_requests)
        SELECT source, principal, client_id, virtual_cluster, topic, direction, (hour AT TIME ZONE 'UTC')::date,
               -sum(bytes), -sum(records), -sum(requests), -sum(denied_requests)
        FROM usage_amendment_rows GROUP BY 1, 2, 3, 4, 5, 6, 7
        ON CONFLICT (day, source, principal, client_id, virtual_cluster, topic, direction) DO UPDATE SET
            bytes = d.bytes + excluded.bytes, records = d.records + excluded.records,
            requests = d.requests + excluded.requests, denied_requests = d.denied_requests + excluded.denied_requests
        """
    )
    op.execute("DROP TABLE amendment_amounts")
    op.execute("DROP TABLE usage_amendment_rows")
    op.execute("DROP TABLE amendments")
