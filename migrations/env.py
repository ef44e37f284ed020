"""Alembic environment: the URL comes from the caller (``streamtoll db upgrade``) or
``STREAMTOLL_DATABASE_URL``; migrations are plain, hand-reviewed DDL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

config = context.config
url = config.get_main_option("sqlalchemy.url") or os.environ.get("STREAMTOLL_DATABASE_URL")
if not url:
    raise SystemExit("STREAMTOLL_DATABASE_URL is not set")

engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
