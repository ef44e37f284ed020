"""Catalog: accounts, client rules, plans with immutable versions, subscriptions.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE accounts (
            code        text PRIMARY KEY,
            name        text NOT NULL,
            email       text NOT NULL,
            currency    char(3) NOT NULL,
            tax_rate    numeric(9, 6) NOT NULL CHECK (tax_rate >= 0 AND tax_rate < 1),
            address     jsonb NOT NULL DEFAULT '[]',
            position    integer NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE client_rules (
            account_code     text NOT NULL REFERENCES accounts (code) ON DELETE CASCADE,
            position         integer NOT NULL,
            principal        text,
            client_id        text,
            virtual_cluster  text,
            valid_from       date,
            valid_until      date,
            PRIMARY KEY (account_code, position),
            CHECK (principal IS NOT NULL OR client_id IS NOT NULL OR virtual_cluster IS NOT NULL),
            CHECK (valid_until IS NULL OR valid_from IS NULL OR valid_until > valid_from)
        )
        """
    )
    op.execute("CREATE TABLE plans (code text PRIMARY KEY, name text NOT NULL)")
    op.execute(
        """
        CREATE TABLE plan_versions (
            plan_code   text NOT NULL REFERENCES plans (code),
            version     integer NOT NULL CHECK (version >= 1),
            currency    char(3) NOT NULL,
            document    jsonb NOT NULL,
            digest      text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (plan_code, version)
        )
        """
    )
    # A published plan version never changes: the database itself refuses it.
    op.execute(
        """
        CREATE FUNCTION streamtoll_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% rows are immutable (%)', TG_TABLE_NAME, TG_OP USING ERRCODE = 'check_violation';
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER plan_versions_immutable BEFORE UPDATE OR DELETE ON plan_versions
        FOR EACH ROW EXECUTE FUNCTION streamtoll_refuse_change()
        """
    )
    op.execute(
        """
        CREATE TABLE subscriptions (
            account_code  text NOT NULL REFERENCES accounts (code) ON DELETE CASCADE,
            starts_on     date NOT NULL,
            ends_on       date CHECK (ends_on IS NULL OR ends_on > starts_on),
            plan_code     text NOT NULL,
            plan_version  integer NOT NULL,
            PRIMARY KEY (account_code, starts_on),
            FOREIGN KEY (plan_code, plan_version) REFERENCES plan_versions (plan_code, version)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE subscriptions")
    op.execute("DROP TRIGGER plan_versions_immutable ON plan_versions")
    op.execute("DROP TABLE plan_versions")
    op.execute("DROP FUNCTION streamtoll_refuse_change()")
    op.execute("DROP TABLE plans")
    op.execute("DROP TABLE client_rules")
    op.execute("DROP TABLE accounts")
