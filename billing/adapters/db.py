"""Database access: engines, schema migrations and the schema check.

The Alembic scripts live in ``migrations/`` at the project root and install as the package
``billing.migrations`` (see pyproject.toml), so an installed streamtoll migrates without its source
tree. :func:`schema_state` compares the database's Alembic revision with this code's head: a
process refuses to work on an older schema (run ``streamtoll db upgrade``) or a newer one (this
streamtoll is older than the database).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import OperationalError

__all__ = [
    "MIGRATIONS",
    "SchemaState",
    "alembic_config",
    "downgrade",
    "head_revision",
    "make_engine",
    "schema_state",
    "unreachable",
    "upgrade",
]

# SQLSTATEs that mean the server cannot serve this process now: 08 connection exceptions,
# 53300 too_many_connections, 57P01-57P03 admin/crash shutdown and cannot_connect_now (starting up)
_UNREACHABLE = {"53300", "57P01", "57P02", "57P03"}

MIGRATIONS = Path(str(files("billing.migrations")))


def make_engine(url: str) -> Engine:
    return create_engine(url, pool_pre_ping=True, future=True)


def unreachable(exc: OperationalError) -> bool:
    """Whether ``exc`` says the database cannot be reached (retry later), rather than that it
    refused this statement (too many columns, a cancelled query, a lock not available …: psycopg
    raises those as OperationalError too, and retrying the same request would not help).
    A connection that failed or broke has no SQLSTATE from the server, or SQLAlchemy saw it as
    a disconnect."""
    state = getattr(exc.orig, "sqlstate", None)
    return exc.connection_invalidated or state is None or state.startswith("08") or state in _UNREACHABLE


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("postgresql+psycopg://"))


def head_revision() -> str:
    """The newest migration this code ships."""
    head = _scripts().get_current_head()
    assert head is not None, "the migrations have no head"
    return head


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # the database's Alembic revision; None = never migrated
    head: str  # the newest revision this code ships
    known: bool  # the database's revision is one of this code's migrations

    @property
    def is_current(self) -> bool:
        return self.current == self.head

    def problem(self) -> str | None:
        """None when this code can use the database, else one sentence saying what to do."""
        if self.is_current:
            return None
        if self.current is None:
            return "the database has no streamtoll schema yet; run `streamtoll db upgrade` first"
        if self.known:
            return (
                f"the database schema is at revision {self.current} and this streamtoll needs {self.head}; "
                "run `streamtoll db upgrade`"
            )
        return (
            f"the database schema is at revision {self.current}, which this streamtoll does not know "
            f"(its newest is {self.head}): it was migrated by a newer streamtoll; run that version"
        )


def schema_state(engine: Engine) -> SchemaState:
    """The database's migration revision against this code's head (raises OperationalError when
    the database is unreachable)."""
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    scripts = _scripts()
    known = current is not None and current in {s.revision for s in scripts.walk_revisions()}
    return SchemaState(current, head_revision(), known)
