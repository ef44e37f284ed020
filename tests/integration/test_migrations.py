"""Migrations on a real PostgreSQL: upgrade → downgrade → upgrade, and the models match them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from billing.adapters.db import downgrade, upgrade
from billing.adapters.models import Base

pytestmark = pytest.mark.integration


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        insp = sa.inspect(engine)
        return set(insp.get_table_names()) | set(insp.get_view_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(database: str) -> None:
    upgrade(database)
    first = _tables(database)
    assert {"usage_shard_rows", "usage_hourly"} <= first
    downgrade(database, "base")
    assert _tables(database) <= {"alembic_version"}
    upgrade(database)
    assert _tables(database) == first


def test_models_match_the_migrated_schema(migrated: str) -> None:
    engine = sa.create_engine(migrated)
    try:
        insp = sa.inspect(engine)
        for table in Base.metadata.sorted_tables:
            db_cols = {c["name"] for c in insp.get_columns(table.name)}
            assert db_cols == {c.name for c in table.columns}, table.name
            pk = insp.get_pk_constraint(table.name)["constrained_columns"]
            assert set(pk) == {c.name for c in table.primary_key.columns}, table.name
    finally:
        engine.dispose()
