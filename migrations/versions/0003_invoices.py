"""Invoices: drafts, finalized (numbered, frozen, immutable) and void; lines; number sequences.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE invoices (
            id              bigserial PRIMARY KEY,
            account_code    text NOT NULL REFERENCES accounts (code),
            period_start    date NOT NULL,
            period_end      date NOT NULL CHECK (period_end > period_start),
            kind            text NOT NULL DEFAULT 'standard' CHECK (kind IN ('standard', 'correction')),
            status          text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'finalized', 'void')),
            number          text UNIQUE,
            currency        char(3) NOT NULL,
            tax_rate        numeric(9, 6) NOT NULL,
            subtotal        numeric(20, 6) NOT NULL,
            tax             numeric(20, 6) NOT NULL,
            total           numeric(20, 6) NOT NULL,
            plan_code       text,
            plan_version    integer,
            snapshot        jsonb,
            html            text,
            pdf             bytea,
            issued_on       date,
            due_on          date,
            corrects_id     bigint REFERENCES invoices (id),
            void_reason     text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            finalized_at    timestamptz,
            voided_at       timestamptz,
            CHECK ((status = 'draft') = (number IS NULL)),
            CHECK ((status = 'void') = (void_reason IS NOT NULL))
        )
        """
    )
    # one live invoice per account, period and kind; a void one stays beside its correction
    op.execute(
        "CREATE UNIQUE INDEX invoices_one_per_period ON invoices (account_code, period_start, kind) "
        "WHERE status <> 'void'"
    )
    op.execute(
        """
        CREATE TABLE invoice_lines (
            invoice_id        bigint NOT NULL REFERENCES invoices (id),
            position          integer NOT NULL,
            kind              text NOT NULL,
            description       text NOT NULL,
            meter             text,
            source            text,
            topics            jsonb NOT NULL DEFAULT '[]',
            quantity          numeric(30, 9),
            unit              text,
            model             text,
            amount_unrounded  numeric(30, 12) NOT NULL,
            amount            numeric(20, 6) NOT NULL,
            breakdown         jsonb NOT NULL DEFAULT '[]',
            usage_ref         jsonb NOT NULL DEFAULT '{}',
            PRIMARY KEY (invoice_id, position)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE invoice_numbers (
            prefix  text NOT NULL,
            year    integer NOT NULL,
            last    integer NOT NULL,
            PRIMARY KEY (prefix, year)
        )
        """
    )
    # The database itself keeps a finalized invoice as it was: amounts, lines, number, snapshot
    # and documents never change; the only change left is finalized → void (with a reason).
    op.execute(
        """
        CREATE FUNCTION streamtoll_guard_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF OLD.status <> 'draft' THEN
                    RAISE EXCEPTION 'invoice % is %; it cannot be deleted', OLD.number, OLD.status
                        USING ERRCODE = 'check_violation';
                END IF;
                RETURN OLD;
            END IF;
            IF OLD.status = 'draft' THEN
                RETURN NEW;
            END IF;
            IF OLD.status = 'void' OR NEW.status NOT IN ('finalized', 'void')
               OR (NEW.account_code, NEW.period_start, NEW.period_end, NEW.kind, NEW.number, NEW.currency,
                   NEW.tax_rate, NEW.subtotal, NEW.tax, NEW.total, NEW.snapshot, NEW.issued_on, NEW.due_on,
                   NEW.finalized_at, NEW.corrects_id)
                  IS DISTINCT FROM
                  (OLD.account_code, OLD.period_start, OLD.period_end, OLD.kind, OLD.number, OLD.currency,
                   OLD.tax_rate, OLD.subtotal, OLD.tax, OLD.total, OLD.snapshot, OLD.issued_on, OLD.due_on,
                   OLD.finalized_at, OLD.corrects_id)
               OR (OLD.html IS NOT NULL AND NEW.html IS DISTINCT FROM OLD.html)
               OR (OLD.pdf IS NOT NULL AND NEW.pdf IS DISTINCT FROM OLD.pdf) THEN
                RAISE EXCEPTION 'invoice % is %; it cannot be changed (void it and issue a correction)',
                    OLD.number, OLD.status USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER invoices_guard BEFORE UPDATE OR DELETE ON invoices "
        "FOR EACH ROW EXECUTE FUNCTION streamtoll_guard_invoice()"
    )
    op.execute(
        """
        CREATE FUNCTION streamtoll_guard_invoice_line() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            st text;
        BEGIN
            SELECT status INTO st FROM invoices WHERE id = COALESCE(NEW.invoice_id, OLD.invoice_id);
            IF st IS DISTINCT FROM 'draft' THEN
                RAISE EXCEPTION 'the lines of a % invoice cannot be changed', st USING ERRCODE = 'check_violation';
            END IF;
            RETURN COALESCE(NEW, OLD);
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER invoice_lines_guard BEFORE INSERT OR UPDATE OR DELETE ON invoice_lines "
        "FOR EACH ROW EXECUTE FUNCTION streamtoll_guard_invoice_line()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER invoice_lines_guard ON invoice_lines")
    op.execute("DROP FUNCTION streamtoll_guard_invoice_line()")
    op.execute("DROP TRIGGER invoices_guard ON invoices")
    op.execute("DROP FUNCTION streamtoll_guard_invoice()")
    op.execute("DROP TABLE invoice_numbers")
    op.execute("DROP TABLE invoice_lines")
    op.execute("DROP TABLE invoices")
