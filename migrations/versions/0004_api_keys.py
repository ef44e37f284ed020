"""API keys: stored as a SHA-256 of their secret part, never in clear; revocable.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api_keys (
            key_id        text PRIMARY KEY,
            secret_sha256 text NOT NULL,
            role          text NOT NULL CHECK (role IN ('partner', 'finance')),
            account_code  text REFERENCES accounts (code),
            created_at    timestamptz NOT NULL DEFAULT now(),
            revoked_at    timestamptz,
            CHECK ((role = 'partner') = (account_code IS NOT NULL))
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE api_keys")
