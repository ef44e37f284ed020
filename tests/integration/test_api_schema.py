"""The OpenAPI document holds: schemathesis generates requests from ``/openapi.json`` (valid ones
and invalid ones) and sends them to a running ``streamtoll api`` (real uvicorn, real PostgreSQL,
the sample catalog and November's usage, billed) with each role's key — partner, finance, ops.

Every answer must be one the document names, with its media type and schema, and no answer may
be a server error (5xx). The examples are bounded and derandomized, so every run sends the same
requests; the finance key may run billing, finalize and void: the database is this test's own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from billing.services.billing_run import run_billing
from billing.services.keys import create_key
from metering.engine.topics import ensure_topics
from metering.settings import MeteringSettings

from .harness import api_server
from .seed import DEC1

pytestmark = pytest.mark.integration

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 30  # per operation and role
# values of the parameters that name data, from the seed (three of each, used together)
KNOWN = {
    "period": ["2026-11", "2026-12", "2026-11.pdf"],
    "ref": ["INV-2026-000001", "draft-4", "INV-2026-000002"],
    "account": ["acme", "globex", "initech"],
    "from": ["2026-11-01", "2026-11-03", "2026-10-01"],
    "to": ["2026-12-01", "2026-11-05", "2026-12-31"],
    "group_by": ["source,direction", "principal,topic", "account,client_id,virtual_cluster"],
    "reason": ["duplicate", "wrong rate", " "],
}


@pytest.fixture
def served(
    engine: sa.Engine, migrated: str, env: dict[str, str], settings: MeteringSettings, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """``streamtoll api`` as a child process on this test's database, with the live view on (the
    session's broker, this test's topics); November finalized and December's drafts, as in
    test_api. Ready: /healthz answers 200 (database and broker reachable)."""
    ensure_topics(settings)
    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    run_billing(engine, "2026-12")
    keys = {
        "partner": create_key(engine, "partner", "acme"),
        "finance": create_key(engine, "finance", None),
        "ops": create_key(engine, "ops", None),
    }
    env = {
        **env,
        "STREAMTOLL_DATABASE_URL": migrated,
        "STREAMTOLL_LOG_LEVEL": "WARNING",
        # the per-key limits have their own test (test_api_limits); here a request over them
        # would wait a second for its 429 and the run would reach fewer operations
        **{f"STREAMTOLL_API_LIMITS_{role}": "off" for role in ("PARTNER", "FINANCE", "OPS")},
    }
    with api_server(env, tmp_path / "api.log") as base:
        yield base, keys


class Run:
    """What a schemathesis run saw: the answers' statuses, and each kind of failure's first report."""

    def __init__(self, base: str) -> None:
        self.schema = schemathesis.openapi.from_url(base + "/openapi.json")
        self.session = requests.Session()
        self.statuses: Counter[int] = Counter()
        self.failures: dict[tuple[str, ...], str] = {}  # (role, operation, what failed) → report

    def operation(self, operation: Any, role: str, key: str) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        # the key as given, never a generated one: bad keys are test_api's (they lock the address out)
        positive, negative = (
            operation.as_strategy(generation_mode=mode, headers=headers)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        )
        # and requests that name what the database holds (random strings seldom do), the rest generated
        known = [
            operation.as_strategy(
                generation_mode=GenerationMode.POSITIVE,
                headers=headers,
                path_parameters={p.name: KNOWN[p.name][i] for p in operation.path_parameters if p.name in KNOWN},
                query={p.name: KNOWN[p.name][i] for p in operation.query if p.name in KNOWN},
            )
            for i in range(3)
        ]
        cases = st.one_of(positive, negative, st.one_of(known))

        # a failing request is recorded, not raised (nor shrunk): the report lists every kind
        @hypothesis_settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases)
        def probe(case: Any) -> None:
            try:
                response = case.call_and_validate(session=self.session, checks=CHECKS, timeout=60)
                self.statuses[response.status_code] += 1
            except FailureGroup as group:
                titles = tuple(sorted({f.title for f in group.exceptions}))
                self.failures.setdefault((role, operation.label, *titles), str(group))

        probe()


def test_every_answer_is_documented_for_every_role(served: tuple[str, dict[str, str]]) -> None:
    base, keys = served
    run = Run(base)
    for role, key in keys.items():
        for result in run.schema.get_all_operations():
            run.operation(result.ok(), role, key)
    report = "\n\n".join(f"{' / '.join(k)}\n{v}" for k, v in run.failures.items())
    assert not run.failures, f"{len(run.failures)} kinds of undocumented answers:\n\n{report}"
    assert sum(run.statuses.values()) > 500 and run.statuses[200] > 50, run.statuses  # it did test something
