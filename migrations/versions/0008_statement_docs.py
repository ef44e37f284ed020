"""Stored statements and the change marks that tell when one is out of date.

A statement of an account with 1,000 clients took about a second to compute (reading and
attributing 62k daily rows, five groupings, rating) — far from a page that answers at once. The
API now stores each statement it computes (``statement_docs``) with two marks read *before* it
was computed:

- ``usage_period_marks``: per calendar month, 16 counters (``slot`` = the writing transaction's
  id mod 16, so concurrent sinks rarely wait for each other); a statement-level trigger on
  ``usage_shard_rows`` adds one to the slot of every month a statement touched, in the sink's own
  transaction. The month's mark is the sum of its slots: it grows with every committed change.
- ``catalog_marks``: one counter, grown by statement-level triggers on the catalog tables
  (accounts, client rules, plans, plan versions, subscriptions).

A stored statement is current when both marks still equal the ones it was stored with: a change
committed after the marks were read moves them, so an equal mark means nothing changed since.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CATALOG_TABLES = ("accounts", "client_rules", "plans", "plan_versions", "subscriptions")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE usage_period_marks (
            month  date     NOT NULL,
            slot   smallint NOT NULL,
            mark   bigint   NOT NULL,
            PRIMARY KEY (month, slot)
        )
        """
    )
    op.execute("CREATE TABLE catalog_marks (id smallint PRIMARY KEY CHECK (id = 1), mark bigint NOT NULL)")
    op.execute("INSERT INTO catalog_marks VALUES (1, 0)")
    op.execute(
        """
        CREATE TABLE statement_docs (
            account      text        NOT NULL,
            period       varchar(7)  NOT NULL,
            usage_mark   bigint      NOT NULL,
            catalog_mark bigint      NOT NULL,
            doc_version  integer     NOT NULL,
            sources      text        NOT NULL,
            computed_at  timestamptz NOT NULL,
            body         text        NOT NULL,
            PRIMARY KEY (account, period)
        )
        """
    )
    # one function per transition: a trigger with transition tables serves one event
    for event, table in (("INSERT", "new_rows"), ("UPDATE", "new_rows"), ("DELETE", "old_rows")):
        op.execute(
            f"""
            CREATE FUNCTION streamtoll_usage_mark_{event.lower()}() RETURNS trigger LANGUAGE plpgsql
            -- runs as the owner: the sink's role writes usage rows only
            SECURITY DEFINER SET search_path = public AS $$
            BEGIN
                -- months in ascending order: concurrent writers take the rows' locks in one order
                INSERT INTO usage_period_marks AS m (month, slot, mark)
                SELECT DISTINCT date_trunc('month', hour AT TIME ZONE 'UTC')::date,
                       (txid_current() % 16)::smallint, 1
                FROM {table} ORDER BY 1
                ON CONFLICT (month, slot) DO UPDATE SET mark = m.mark + 1;
                RETURN NULL;
            END $$
            """
        )
        referencing = "NEW TABLE AS new_rows" if table == "new_rows" else "OLD TABLE AS old_rows"
        op.execute(
            f"CREATE TRIGGER usage_shard_rows_mark_{event.lower()} AFTER {event} ON usage_shard_rows "
            f"REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION streamtoll_usage_mark_{event.lower()}()"
        )
    op.execute(
        """
        CREATE FUNCTION streamtoll_catalog_mark() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        BEGIN
            UPDATE catalog_marks SET mark = mark + 1 WHERE id = 1;
            RETURN NULL;
        END $$
        """
    )
    for table in CATALOG_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_catalog_mark AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION streamtoll_catalog_mark()"
        )
    # usage written before this migration: every month that has rows starts with a mark
    op.execute(
        """
        INSERT INTO usage_period_marks
        SELECT DISTINCT date_trunc('month', hour AT TIME ZONE 'UTC')::date, 0, 1 FROM usage_shard_rows
        """
    )


def downgrade() -> None:
    for table in CATALOG_TABLES:
        op.execute(f"DROP TRIGGER {table}_catalog_mark ON {table}")
    op.execute("DROP FUNCTION streamtoll_catalog_mark()")
    for event in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER usage_shard_rows_mark_{event} ON usage_shard_rows")
        op.execute(f"DROP FUNCTION streamtoll_usage_mark_{event}()")
    op.execute("DROP TABLE statement_docs")
    op.execute("DROP TABLE catalog_marks")
    op.execute("DROP TABLE usage_period_marks")
