"""A stored statement keeps its PDF, rendered once per stored version.

Rendering a statement's PDF (WeasyPrint) takes about half a second of a worker thread; the API
rendered it again on every request, so one partner downloading in a loop held the threads every
other caller needed. Now ``statement_docs`` keeps the PDF of the body stored with it:

- ``revision`` grows by one each time the body is replaced (a recomputed statement);
- ``pdf`` is the PDF rendered from that revision's body, NULL until the first request for it.
  Replacing the body clears it in the same statement, and the API writes a rendered PDF with
  ``UPDATE … WHERE revision = <the revision it rendered> AND pdf IS NULL``: a PDF of an older
  body can never be stored next to a newer one.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE statement_docs ADD COLUMN revision bigint NOT NULL DEFAULT 1, ADD COLUMN pdf bytea")


def downgrade() -> None:
    op.execute("ALTER TABLE statement_docs DROP COLUMN pdf, DROP COLUMN revision")
