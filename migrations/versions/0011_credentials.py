"""Kafka credentials streamtoll issues (``streamtoll credentials``), bound to an account.

- ``credentials``: one row per credential — its id, account, name and the user name clients log
  in with (``<account>/<name>``, unique), when it was created and revoked.
- ``credential_keys``: the SCRAM salted keys (RFC 5802/7677: salt, iterations, StoredKey,
  ServerKey) per mechanism and password generation; never a password. A rotation adds a
  generation with the same salt and gives the previous one a ``valid_until`` (its overlap).

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE credentials (
            id text PRIMARY KEY,
            account_code text NOT NULL REFERENCES accounts (code),
            name text NOT NULL,
            username text NOT NULL UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX credentials_account ON credentials (account_code)")
    op.execute(
        """
        CREATE TABLE credential_keys (
            credential_id text NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
            mechanism text NOT NULL CHECK (mechanism IN ('SCRAM-SHA-256', 'SCRAM-SHA-512')),
            generation integer NOT NULL,
            salt bytea NOT NULL,
            iterations integer NOT NULL CHECK (iterations >= 4096),
            stored_key bytea NOT NULL,
            server_key bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            valid_until timestamptz,
            PRIMARY KEY (credential_id, mechanism, generation)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE credential_keys")
    op.execute("DROP TABLE credentials")
