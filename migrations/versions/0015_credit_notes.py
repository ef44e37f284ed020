"""Credit notes against finalized invoices (billing.services.credit_notes).

- ``credit_notes``: one row per credit note, numbered ``CN-YEAR-NNNN`` without gaps in its own
  sequence (``credit_note_numbers``, a counter row per year incremented in the issuing
  transaction, as ``invoice_numbers`` is for invoices). The invoice it credits is never changed.
  Amounts: ``net + tax = total``, all positive; ``lines`` the chosen lines (position → net amount)
  when the credit note credits lines, else empty. ``snapshot`` is the frozen document the PDF
  renders from. A credit note is never changed nor deleted (a trigger refuses it).
- A credit note settled as ``credit`` is applied by later billing runs as invoice lines of kind
  ``credit_note`` whose ``usage_ref->>'credit_note'`` names it (an index finds them).

Revision ID: 0015
Revises: 0013
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE credit_notes (
            id              bigserial PRIMARY KEY,
            number          text NOT NULL UNIQUE,
            invoice_id      bigint NOT NULL REFERENCES invoices (id),
            account_code    text NOT NULL REFERENCES accounts (code),
            currency        char(3) NOT NULL,
            tax_rate        numeric(9, 6) NOT NULL,
            net             numeric(20, 6) NOT NULL CHECK (net >= 0),
            tax             numeric(20, 6) NOT NULL CHECK (tax >= 0),
            total           numeric(20, 6) NOT NULL CHECK (total > 0 AND total = net + tax),
            reason          text NOT NULL
                            CHECK (reason IN ('duplicate', 'error', 'goodwill', 'order_change', 'other')),
            reason_text     text,
            settlement      text NOT NULL CHECK (settlement IN ('credit', 'refunded')),
            lines           jsonb NOT NULL DEFAULT '{}',
            snapshot        jsonb NOT NULL,
            html            text,
            pdf             bytea,
            issued_on       date NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX credit_notes_invoice ON credit_notes (invoice_id)")
    op.execute("CREATE INDEX credit_notes_account ON credit_notes (account_code, id)")
    op.execute(
        """
        CREATE TABLE credit_note_numbers (
            year    integer PRIMARY KEY,
            last    integer NOT NULL
        )
        """
    )
    op.execute(
        "CREATE INDEX invoice_lines_credit_note ON invoice_lines ((usage_ref->>'credit_note')) "
        "WHERE kind = 'credit_note'"
    )
    op.execute(
        """
        CREATE FUNCTION streamtoll_guard_credit_note() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'credit note % is issued; it cannot be changed or deleted', OLD.number
                USING ERRCODE = 'check_violation';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER credit_notes_guard BEFORE UPDATE OR DELETE ON credit_notes "
        "FOR EACH ROW EXECUTE FUNCTION streamtoll_guard_credit_note()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER credit_notes_guard ON credit_notes")
    op.execute("DROP FUNCTION streamtoll_guard_credit_note()")
    op.execute("DROP INDEX invoice_lines_credit_note")
    op.execute("DROP TABLE credit_note_numbers")
    op.execute("DROP TABLE credit_notes")
