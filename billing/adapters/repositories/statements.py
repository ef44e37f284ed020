"""The statement repository: computed statements stored with the marks they were computed from
(``statement_docs``), the period's usage mark and the catalog mark (migrations 0008, 0010), and
each statement's PDF next to the revision it was rendered from."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Connection, text

from billing.services.ports import StatementMarks

__all__ = ["StatementRepository"]

_READ = (
    "SELECT (SELECT coalesce(sum(mark), 0) FROM usage_period_marks WHERE month = :month) AS usage_mark, "
    "(SELECT mark FROM catalog_marks WHERE id = 1) AS catalog_mark, "
    "d.usage_mark AS stored_usage, d.catalog_mark AS stored_catalog, d.doc_version, d.sources, d.computed_at, "
    "d.body, d.revision, "
)
_OF = "FROM (SELECT 1) AS one LEFT JOIN statement_docs AS d ON d.account = :account AND d.period = :period"
_MARKS = text(_READ + "NULL::bytea AS pdf " + _OF)
_MARKS_PDF = text(_READ + "d.pdf " + _OF)

_STORE = text(
    "INSERT INTO statement_docs AS d (account, period, usage_mark, catalog_mark, doc_version, sources, "
    "computed_at, body) VALUES (:account, :period, :usage_mark, :catalog_mark, :doc_version, :sources, "
    ":computed_at, :body) ON CONFLICT (account, period) DO UPDATE SET usage_mark = excluded.usage_mark, "
    "catalog_mark = excluded.catalog_mark, doc_version = excluded.doc_version, sources = excluded.sources, "
    "computed_at = excluded.computed_at, body = excluded.body, "
    # the PDF was of the body replaced here (migration 0010)
    "revision = d.revision + 1, pdf = NULL "
    # never replace a statement by one computed from older marks (a slow, late refresh)
    "WHERE d.doc_version <> excluded.doc_version OR d.sources <> excluded.sources "
    "OR (d.usage_mark <= excluded.usage_mark "
    "AND d.catalog_mark <= excluded.catalog_mark AND d.computed_at <= excluded.computed_at) "
    "RETURNING revision"
)

_STORED_PDF = text(
    "SELECT pdf FROM statement_docs WHERE account = :account AND period = :period AND revision = :revision"
)

# only next to the body it was rendered from, and never over one stored meanwhile
_KEEP_PDF = text(
    "UPDATE statement_docs SET pdf = :pdf "
    "WHERE account = :account AND period = :period AND revision = :revision AND pdf IS NULL"
)


class StatementRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def marks(self, account: str, period: str, month: date, with_pdf: bool) -> StatementMarks:
        m = self.conn.execute(
            _MARKS_PDF if with_pdf else _MARKS, {"month": month, "account": account, "period": period}
        ).one()
        return StatementMarks(
            usage_mark=m.usage_mark,
            catalog_mark=m.catalog_mark,
            stored_usage=m.stored_usage,
            stored_catalog=m.stored_catalog,
            doc_version=m.doc_version,
            sources=m.sources,
            computed_at=m.computed_at,
            body=m.body,
            revision=m.revision,
            pdf=None if m.pdf is None else bytes(m.pdf),
        )

    def store(
        self,
        account: str,
        period: str,
        usage_mark: int,
        catalog_mark: int | None,
        doc_version: int,
        sources: str,
        computed_at: datetime,
        body: str,
    ) -> int | None:
        return self.conn.execute(
            _STORE,
            {
                "account": account,
                "period": period,
                "usage_mark": usage_mark,
                "catalog_mark": catalog_mark,
                "doc_version": doc_version,
                "sources": sources,
                "computed_at": computed_at,
                "body": body,
            },
        ).scalar()

    def stored_pdf(self, account: str, period: str, revision: int) -> bytes | None:
        stored = self.conn.execute(_STORED_PDF, {"account": account, "period": period, "revision": revision}).scalar()
        return None if stored is None else bytes(stored)

    def keep_pdf(self, account: str, period: str, revision: int, pdf: bytes) -> None:
        self.conn.execute(_KEEP_PDF, {"pdf": pdf, "account": account, "period": period, "revision": revision})
