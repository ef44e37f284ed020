"""Database access: engines and schema migrations (Alembic, ``migrations/`` at the project root)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, inspect

__all__ = ["MIGRATIONS", "alembic_config", "downgrade", "make_engine", "schema_is_current", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def make_engine(url: str) -> Engine:
    return create_engine(url, pool_pre_ping=True, future=True)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def schema_is_current(engine: Engine) -> bool:
    """True when the database has the tables this code needs (migrations ran)."""
    return inspect(engine).has_table("usage_shard_rows")
