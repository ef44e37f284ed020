"""Prepaid credits and grants (billing.domain.grants, billing.services.grants).

- ``grants``: money (``currency`` set, ``meter`` and ``unit`` null) or units of one meter
  (``meter`` and ``unit`` set, ``currency`` null) for an account; ``amount`` per period when
  ``recurrence`` is set (``monthly``), with ``rollover_limit`` carried at most. Added by finance
  with who, when and why; a grant is never deleted and never changed, except once: its void
  (``voided_at``, ``voided_by``, ``void_reason`` set together) — a trigger refuses the rest.
- What an invoice burned of a grant is its invoice line of kind ``grant`` whose
  ``usage_ref->>'grant'`` names it (``burned`` and ``left`` beside it, working values: money, or
  raw bytes/counts): a draft's lines are replaced on each run, a finalized invoice's never
  change; an index finds them.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE grants (
            id              bigserial PRIMARY KEY,
            account_code    text NOT NULL REFERENCES accounts (code),
            name            text NOT NULL DEFAULT '',
            amount          numeric(20, 6) NOT NULL CHECK (amount > 0),
            currency        char(3),
            meter           text,
            unit            text,
            priority        integer NOT NULL DEFAULT 10 CHECK (priority BETWEEN 0 AND 1000),
            effective_on    date NOT NULL,
            expires_on      date CHECK (expires_on > effective_on),
            recurrence      text CHECK (recurrence IN ('monthly')),
            rollover_limit  numeric(20, 6)
                            CHECK (rollover_limit IS NULL OR (rollover_limit >= 0 AND recurrence IS NOT NULL)),
            reason          text NOT NULL,
            created_by      text NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            voided_at       timestamptz,
            voided_by       text,
            void_reason     text,
            CHECK ((currency IS NOT NULL AND meter IS NULL AND unit IS NULL)
                   OR (currency IS NULL AND meter IS NOT NULL AND unit IS NOT NULL)),
            CHECK ((voided_at IS NULL) = (voided_by IS NULL) AND (voided_at IS NULL) = (void_reason IS NULL))
        )
        """
    )
    op.execute("CREATE INDEX grants_account ON grants (account_code, id)")
    op.execute("CREATE INDEX invoice_lines_grant ON invoice_lines ((usage_ref->>'grant')) WHERE kind = 'grant'")
    op.execute(
        """
        CREATE FUNCTION streamtoll_guard_grant() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND OLD.voided_at IS NULL AND NEW.voided_at IS NOT NULL
               AND (to_jsonb(NEW) - ARRAY['voided_at', 'voided_by', 'void_reason'])
                 = (to_jsonb(OLD) - ARRAY['voided_at', 'voided_by', 'void_reason']) THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'grant % cannot be changed or deleted (only voided, once)', OLD.id
                USING ERRCODE = 'check_violation';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER grants_guard BEFORE UPDATE OR DELETE ON grants "
        "FOR EACH ROW EXECUTE FUNCTION streamtoll_guard_grant()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER grants_guard ON grants")
    op.execute("DROP FUNCTION streamtoll_guard_grant()")
    op.execute("DROP INDEX invoice_lines_grant")
    op.execute("DROP TABLE grants")
