"""Idempotency keys of the HTTP API's POSTs: the first answer to each (caller, key), kept 24 h.

One row per API key and ``Idempotency-Key``. ``status`` is NULL while the first request runs
(the API holds the row locked meanwhile, ``FOR UPDATE NOWAIT``: a concurrent retry is told the
key is in use); the answer's status, headers and body are written in that same transaction. A
row without an answer and without a lock is a request that died: the next retry runs it again.
``expires_at`` bounds how long a key is remembered; expired rows are deleted a few at a time by
later requests (the index keeps that cheap). Rows go with their API key should it be deleted
(keys are only revoked today: their rows expire).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE idempotency_keys (
            key_id          text        NOT NULL REFERENCES api_keys (key_id) ON DELETE CASCADE,
            idempotency_key text        NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
            fingerprint     text        NOT NULL,
            status          smallint    CHECK (status BETWEEN 100 AND 599),
            headers         jsonb,
            body            bytea,
            created_at      timestamptz NOT NULL,
            expires_at      timestamptz NOT NULL,
            PRIMARY KEY (key_id, idempotency_key),
            CHECK ((status IS NULL) = (body IS NULL))
        )
        """
    )
    op.execute("CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys")
