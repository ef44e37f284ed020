"""Streaming API products (billing.services.products, billing.domain.products).

- ``products``: one row per product code (kept when a later catalog file leaves it out: it may
  have subscriptions); ``product_versions``: each published version's contract (``document``),
  its schemas' text (``schemas``: topic pattern → text), the digest that decides whether a load
  is a new version, and ``deprecated_until`` (the last UTC day the version works; not part of
  the contract, so it may be set on a published version).
- ``product_subscriptions``: an account's subscription to a product version, from request to
  cancellation: ``status`` requested | active | rejected | cancelled, who asked and when, who
  decided (approved or rejected) and when, the reason of a rejection, who cancelled and when.
  At most one live (requested or active) subscription per account and product.

Revision ID: 0020
Revises: 0019
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE products (
            code        text PRIMARY KEY,
            position    integer NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE product_versions (
            product_code     text NOT NULL REFERENCES products (code),
            version          integer NOT NULL CHECK (version > 0),
            name             text NOT NULL,
            document         jsonb NOT NULL,
            schemas          jsonb NOT NULL DEFAULT '{}',
            digest           text NOT NULL,
            deprecated_until date,
            created_at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (product_code, version)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE product_subscriptions (
            id              bigserial PRIMARY KEY,
            account_code    text NOT NULL REFERENCES accounts (code),
            product_code    text NOT NULL,
            product_version integer NOT NULL,
            status          text NOT NULL CHECK (status IN ('requested', 'active', 'rejected', 'cancelled')),
            requested_by    text NOT NULL,
            requested_at    timestamptz NOT NULL,
            decided_by      text,
            decided_at      timestamptz,
            reason          text,
            cancelled_by    text,
            cancelled_at    timestamptz,
            FOREIGN KEY (product_code, product_version) REFERENCES product_versions (product_code, version),
            CHECK (status <> 'rejected' OR reason IS NOT NULL),
            CHECK (status <> 'cancelled' OR cancelled_at IS NOT NULL)
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX product_subscriptions_live ON product_subscriptions (account_code, product_code) "
        "WHERE status IN ('requested', 'active')"
    )
    op.execute("CREATE INDEX product_subscriptions_status ON product_subscriptions (status, id)")


def downgrade() -> None:
    op.execute("DROP TABLE product_subscriptions")
    op.execute("DROP TABLE product_versions")
    op.execute("DROP TABLE products")
