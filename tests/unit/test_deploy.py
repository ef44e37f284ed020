"""The deployment files, checked with what runs here (no Docker, no cluster): the Kubernetes
manifests against the Kubernetes API schemas (kubernetes-validate, bundled, strict), the compose
file against the Compose specification's schema, and both against streamtoll itself — every
command a container runs is a real ``streamtoll`` command, every ``STREAMTOLL_*`` name a real
setting. ``env.example`` must be exactly what the settings catalog generates."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from metering.settings import MeteringSettings
from streamtoll.cli import build_parser
from streamtoll.settings_catalog import SETTINGS, env_example

DEPLOY = Path(__file__).parents[2] / "deploy"
K8S_VERSION = "1.30.0"
NAMES = {f"STREAMTOLL_{s.name}" for s in SETTINGS}


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _is_setting(name: str) -> bool:
    return name in NAMES or name.startswith("STREAMTOLL_KAFKA_X_")


def _check_command(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`streamtoll {shlex.join(argv)}` is not a valid command") from exc


def test_env_example_is_generated_from_the_settings_catalog() -> None:
    assert (DEPLOY / "env.example").read_text() == env_example(), "run: python -m streamtoll.settings_catalog"


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.example], ids=lambda s: s.name)
def test_every_catalogued_setting_is_read(setting: Any) -> None:
    """Each name with an example is read and its example accepted: by metering's settings, or by
    billing's, or by the command line."""
    from billing.settings import BillingSettings

    env = {f"STREAMTOLL_{setting.name}": setting.example}
    m, b = MeteringSettings.from_env(env), BillingSettings.from_env(env)
    changed = m != MeteringSettings() or b != BillingSettings()
    cli = Path(__file__).parents[2] / "streamtoll"
    read_by_cli = any(
        f"STREAMTOLL_{setting.name}" in p.read_text() for p in cli.glob("*.py") if p.name != "settings_catalog.py"
    )
    same_as_default = setting.example == setting.default
    assert changed or read_by_cli or same_as_default, f"STREAMTOLL_{setting.name} is read by nothing"


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    docs = _k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in docs}
    assert {
        ("Deployment", "streamtoll-worker"),
        ("Deployment", "streamtoll-sink"),
        ("Deployment", "streamtoll-api"),
        ("Job", "streamtoll-migrate"),
        ("ConfigMap", "streamtoll"),
        ("Secret", "streamtoll"),
        ("HorizontalPodAutoscaler", "streamtoll-worker"),
        ("Service", "streamtoll-api"),
    } <= kinds
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{name} {doc['kind']}: {exc.message} at {list(exc.path)}") from exc
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_kubernetes_pods_run_real_commands_with_real_settings() -> None:
    docs = dict(((d["kind"], d["metadata"]["name"]), d) for _, d in _k8s_docs())
    config = docs[("ConfigMap", "streamtoll")]["data"]
    secret = docs[("Secret", "streamtoll")]["stringData"]
    for key in [*config, *secret]:
        assert _is_setting(key), f"{key} is not a streamtoll setting"
    assert "STREAMTOLL_DATABASE_URL" in secret and "STREAMTOLL_KAFKA_SASL_PASSWORD" in secret  # secrets stay secret
    roles = {}
    for (kind, _name), doc in docs.items():
        if kind not in ("Deployment", "Job"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            _check_command(c["args"])
            roles[c["args"][0]] = c
            for e in c.get("env", []):
                assert _is_setting(e["name"]), f"{e['name']} is not a streamtoll setting"
            refs = {next(iter(r.values()))["name"] for r in c["envFrom"]}
            assert refs == {"streamtoll"}
    assert {"worker", "sink", "api", "db"} <= set(roles)
    assert roles["api"]["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert roles["api"]["livenessProbe"]["httpGet"]["path"] == "/healthz/live"
    # workers: a unique instance id per pod; never more replicas than input partitions
    worker_env = {e["name"]: e["value"] for e in roles["worker"]["env"]}
    assert worker_env["STREAMTOLL_INSTANCE_ID"] == "@hostname"
    hpa = docs[("HorizontalPodAutoscaler", "streamtoll-worker")]["spec"]
    assert docs[("Deployment", "streamtoll-worker")]["spec"]["replicas"] <= hpa["maxReplicas"] <= 12


def _compose_schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("check_jsonschema")  # located, not imported (its CLI needs a newer click)
    assert spec and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def test_compose_file_matches_the_compose_spec_and_streamtoll() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    errors = sorted(jsonschema.Draft7Validator(_compose_schema()).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    services = doc["services"]
    assert {"kafka", "postgres", "migrate", "worker-0", "worker-1", "sink", "api"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    instance_ids = set()
    for name, svc in services.items():
        if svc.get("image", "").startswith("streamtoll"):
            _check_command(svc["command"])
            for key in svc.get("environment", {}):
                assert _is_setting(key), f"{name}: {key} is not a streamtoll setting"
            if svc["command"][0] == "worker":
                instance_ids.add(svc["environment"]["STREAMTOLL_INSTANCE_ID"])
    assert len(instance_ids) == 2  # one per worker
    for line in (DEPLOY / "streamtoll.env").read_text().splitlines():
        if line and not line.startswith("#"):
            assert _is_setting(line.split("=", 1)[0])


def test_grafana_dashboard_is_valid_json_with_queries() -> None:
    doc = json.loads((DEPLOY / "grafana" / "streamtoll.json").read_text())
    assert doc["uid"] == "streamtoll" and all(p["targets"] for p in doc["panels"])


def test_runbook_commands_are_real_and_it_covers_the_operations() -> None:
    text = (DEPLOY / "runbook.md").read_text()
    blocks = text.split("```")[1::2]
    commands = [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith("streamtoll ")]
    assert len(commands) >= 5
    for line in commands:
        _check_command(shlex.split(line)[1:])
    headings = [line[3:].lower() for line in text.splitlines() if line.startswith("## ")]
    for topic in ("scaling", "backfill and replay", "month close", "backup and restore"):
        assert topic in headings, topic


def test_readme_settings_table_is_generated_from_the_catalog() -> None:
    from streamtoll.settings_catalog import settings_table

    readme = (DEPLOY.parent / "README.md").read_text()
    assert settings_table() in readme, "paste streamtoll.settings_catalog.settings_table() into the README"
