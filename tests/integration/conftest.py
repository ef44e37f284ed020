"""Integration fixtures: one real broker (tansu child process) per test session, free port."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from metering.settings import MeteringSettings
from streamtoll.embedded import EmbeddedBroker, EmbeddedPostgres


class _ExternalBroker:
    """A broker the tests do not start: STREAMTOLL_TEST_KAFKA_BOOTSTRAP (e.g. Apache Kafka)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The session's broker: an embedded tansu, or the cluster STREAMTOLL_TEST_KAFKA_BOOTSTRAP
    names (every test uses its own topics and groups, so a shared cluster is fine)."""
    external = os.environ.get("STREAMTOLL_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield _ExternalBroker(external)  # type: ignore[misc]
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


def isolated_env(bootstrap: str) -> dict[str, str]:
    """An environment with its own topics and groups on the given broker (and no STREAMTOLL_*
    setting of the caller's): processes started with it see nothing of other tests."""
    tag = uuid.uuid4().hex[:8]
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    return {
        **base,
        "STREAMTOLL_KAFKA_BOOTSTRAP": bootstrap,
        "STREAMTOLL_TOPIC_PROXY_AUDIT": f"t{tag}.proxy-audit",
        "STREAMTOLL_TOPIC_BROKER_METRICS": f"t{tag}.broker-metrics",
        "STREAMTOLL_TOPIC_BROKER_AUDIT": f"t{tag}.audit-log",
        "STREAMTOLL_TOPIC_DLQ": f"t{tag}.dlq",
        "STREAMTOLL_TOPIC_USAGE_WINDOWS": f"t{tag}.usage-windows",
        "STREAMTOLL_TOPIC_USAGE_MINUTES": f"t{tag}.usage-minutes",
        "STREAMTOLL_TOPIC_STATE": f"t{tag}.state",
        "STREAMTOLL_TOPIC_ENTITLEMENTS": f"t{tag}.entitlements",
        "STREAMTOLL_TOPIC_CREDENTIALS": f"t{tag}.credentials",
        "STREAMTOLL_TOPIC_ENFORCEMENT_EVENTS": f"t{tag}.enforcement-events",
        "STREAMTOLL_STATE_PARTITIONS": "3",
        "STREAMTOLL_TOPIC_PARTITIONS": "4",
        "STREAMTOLL_METERING_GROUP": f"g{tag}",
        "STREAMTOLL_SINK_GROUP": f"s{tag}",
        "STREAMTOLL_INSTANCE_ID": "w1",
        "STREAMTOLL_SESSION_TIMEOUT_MS": "3000",
        # tansu does not expel a static member that died and stays away (a worker killed for
        # good would keep its partitions); against a real cluster, the production default
        "STREAMTOLL_STATIC_MEMBERSHIP": "true" if os.environ.get("STREAMTOLL_TEST_KAFKA_BOOTSTRAP") else "false",
        "STREAMTOLL_STATE_SNAPSHOT_INTERVAL": "3s",
        "STREAMTOLL_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def env(broker: EmbeddedBroker) -> dict[str, str]:
    """Environment for a worker of this test: its own topics and group, the session's broker."""
    return isolated_env(broker.bootstrap)


@pytest.fixture
def settings(env: dict[str, str]) -> MeteringSettings:
    return MeteringSettings.from_env(env)


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server URL: STREAMTOLL_TEST_DATABASE_URL (e.g. the machine's own server) or
    an embedded one started for this test session."""
    url = os.environ.get("STREAMTOLL_TEST_DATABASE_URL")
    if url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)
        return
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data").start()
    try:
        assert pg.url
        yield pg.url
    finally:
        pg.stop()


@contextlib.contextmanager
def fresh_database(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server (dropped afterwards)."""
    with fresh_database(pg_server) as url:
        yield url


@pytest.fixture(scope="module")
def module_database(pg_server: str) -> Iterator[str]:
    """A migrated database of the module's own, for module-scoped fixtures (dropped after it)."""
    from billing.adapters.db import upgrade

    with fresh_database(pg_server) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="module")
def module_catalog(module_database: str) -> Iterator[tuple[str, sa.Engine]]:
    """``module_database`` with the sample plans and accounts loaded, and an engine on it."""
    from billing.services.catalog import load_accounts, load_plans

    engine = sa.create_engine(module_database)
    samples = Path(__file__).parents[2] / "streamtoll" / "samples"
    load_plans(engine, samples / "plans.yaml")
    load_accounts(engine, samples / "accounts.yaml")
    try:
        yield module_database, engine
    finally:
        engine.dispose()


@pytest.fixture
def migrated(database: str) -> str:
    from billing.adapters.db import upgrade

    upgrade(database)
    return database


@pytest.fixture
def engine(migrated: str) -> Iterator[sa.Engine]:
    """A migrated database with the sample plans and accounts and November 2026's usage."""
    from billing.adapters.sink import upsert_windows
    from billing.services.catalog import load_accounts, load_plans

    from .seed import NOVEMBER

    samples = Path(__file__).parents[2] / "streamtoll" / "samples"
    engine = sa.create_engine(migrated)
    load_plans(engine, samples / "plans.yaml")
    load_accounts(engine, samples / "accounts.yaml")
    upsert_windows(engine, NOVEMBER)
    yield engine
    engine.dispose()
