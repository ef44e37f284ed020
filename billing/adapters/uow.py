"""The unit of work: one connection and one transaction over billing's repositories.

``with UnitOfWork(engine) as uow:`` begins a transaction; every repository — ``uow.usage``,
``uow.catalog``, ``uow.invoices``, ``uow.statements``, ``uow.keys``, ``uow.credentials``,
``uow.idempotency``, ``uow.outbox``, ``uow.episodes``, ``uow.credit_notes``, ``uow.grants``,
``uow.webhooks``, ``uow.products``, ``uow.amendments`` — works on its connection; it commits when
the block ends normally and rolls back on an exception. Services take an engine or any factory
of units of work (:func:`units_of_work`), so unit tests pass in-memory fakes.
"""

from __future__ import annotations

from contextlib import ExitStack
from types import TracebackType

from sqlalchemy import Connection, Engine

from billing.adapters.repositories.amendments import AmendmentRepository
from billing.adapters.repositories.catalog import CatalogRepository
from billing.adapters.repositories.credentials import CredentialRepository
from billing.adapters.repositories.credit_notes import CreditNoteRepository
from billing.adapters.repositories.episodes import EpisodeRepository
from billing.adapters.repositories.grants import GrantRepository
from billing.adapters.repositories.idempotency import IdempotencyRepository
from billing.adapters.repositories.invoices import InvoiceRepository
from billing.adapters.repositories.keys import ApiKeyRepository
from billing.adapters.repositories.outbox import OutboxRepository
from billing.adapters.repositories.products import ProductRepository
from billing.adapters.repositories.statements import StatementRepository
from billing.adapters.repositories.usage import UsageRepository
from billing.adapters.repositories.webhooks import WebhookRepository
from billing.services.ports import UnitsOfWork

__all__ = ["Database", "UnitOfWork", "read_only", "units_of_work"]

Database = Engine | UnitsOfWork
"""What a service works on: an engine, or any factory of units of work (a fake's in unit tests)."""


class UnitOfWork:
    usage: UsageRepository
    catalog: CatalogRepository
    invoices: InvoiceRepository
    statements: StatementRepository
    keys: ApiKeyRepository
    credentials: CredentialRepository
    idempotency: IdempotencyRepository
    outbox: OutboxRepository
    episodes: EpisodeRepository
    credit_notes: CreditNoteRepository
    grants: GrantRepository
    webhooks: WebhookRepository
    products: ProductRepository
    amendments: AmendmentRepository

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._stack = ExitStack()

    def __enter__(self) -> UnitOfWork:
        conn: Connection = self._stack.enter_context(self.engine.begin())
        self.conn = conn
        self.usage = UsageRepository(conn)
        self.catalog = CatalogRepository(conn)
        self.invoices = InvoiceRepository(conn)
        self.statements = StatementRepository(conn)
        self.keys = ApiKeyRepository(conn)
        self.credentials = CredentialRepository(conn)
        self.idempotency = IdempotencyRepository(conn)
        self.outbox = OutboxRepository(conn)
        self.episodes = EpisodeRepository(conn)
        self.credit_notes = CreditNoteRepository(conn)
        self.grants = GrantRepository(conn)
        self.webhooks = WebhookRepository(conn)
        self.products = ProductRepository(conn)
        self.amendments = AmendmentRepository(conn)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return self._stack.__exit__(kind, exc, tb)


def units_of_work(source: Database) -> UnitsOfWork:
    """A factory of units of work: over ``source`` when it is an engine, else ``source`` itself."""
    if isinstance(source, Engine):
        engine = source
        return lambda: UnitOfWork(engine)
    return source


def read_only(source: Database) -> UnitsOfWork:
    """Like :func:`units_of_work`, but on an engine every transaction is ``READ ONLY``: PostgreSQL
    refuses any write (and any row lock) in it. For a service that must write nothing (the shadow run)."""
    if isinstance(source, Engine):
        engine = source.execution_options(postgresql_readonly=True)
        return lambda: UnitOfWork(engine)
    return source
