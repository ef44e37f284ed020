"""The deployment files, checked with what runs here (no Docker, no cluster): the Kubernetes
manifests against the Kubernetes API schemas (kubernetes-validate, bundled, strict), the compose
file against the Compose specification's schema, and both against streamtoll itself — every
command a container runs is a real ``streamtoll`` command, every ``STREAMTOLL_*`` name a real
setting. ``env.example`` must be exactly what the settings catalog generates."""

from __future__ import annotations

import importlib.util
import json
import posixpath
import re
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
    """Every document of the top-level manifests, the examples kept out of the kustomization
    included (as the files the test reads, before kustomize)."""
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    return doc


def _applied_docs() -> list[tuple[str, dict[str, Any]]]:
    """The documents `kubectl apply -k deploy/k8s` sends (its resources), before kustomize."""
    resources = set(_kustomization()["resources"])
    return [(name, doc) for name, doc in _k8s_docs() if name in resources]


def _pod_specs() -> dict[str, dict[str, Any]]:
    """The pod spec of each Deployment, StatefulSet and Job the kustomization applies, by workload
    name."""
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for _, doc in _applied_docs()
        if doc["kind"] in ("Deployment", "StatefulSet", "Job")
    }


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


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
    billing's, or by the gateway's, or by the command line."""
    from billing.settings import BillingSettings
    from gateway.settings import GatewaySettings

    env = {f"STREAMTOLL_{setting.name}": setting.example}
    if setting.name == "GATEWAY_LISTEN":  # a wildcard listen address needs the host clients use
        env["STREAMTOLL_GATEWAY_ADVERTISED_HOST"] = "gw.example.com"
        env["STREAMTOLL_GATEWAY_ALLOW_PLAINTEXT"] = "true"  # and TLS, or plaintext said to be meant
    m, b = MeteringSettings.from_env(env), BillingSettings.from_env(env)
    # the gateway takes KAFKA_SECURITY_PROTOCOL upstream too, where SASL_SSL alone lacks a user
    upstream_alone = setting.name == "KAFKA_SECURITY_PROTOCOL"
    g = GatewaySettings() if upstream_alone else GatewaySettings.from_env(env)
    changed = m != MeteringSettings() or b != BillingSettings() or g != GatewaySettings()
    cli = Path(__file__).parents[2] / "streamtoll"
    read_by_cli = any(
        f"STREAMTOLL_{setting.name}" in p.read_text() for p in cli.glob("*.py") if p.name != "settings_catalog.py"
    )
    same_as_default = setting.example == setting.default
    assert changed or read_by_cli or same_as_default, f"STREAMTOLL_{setting.name} is read by nothing"


KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}  # CRDs: checked in test_deploy_keda.py


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    docs = _k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in docs}
    assert {
        ("Deployment", "streamtoll-worker"),
        ("Deployment", "streamtoll-sink"),
        ("Deployment", "streamtoll-api"),
        ("Job", "streamtoll-migrate-release"),
        ("ConfigMap", "streamtoll"),
        ("Secret", "streamtoll-kafka"),
        ("Secret", "streamtoll-database"),
        ("ScaledObject", "streamtoll-worker"),
        ("TriggerAuthentication", "streamtoll-kafka"),
        ("Service", "streamtoll-api"),
        ("StatefulSet", "streamtoll-gateway"),
        ("Service", "streamtoll-gateway"),
    } <= kinds
    for name, doc in docs:
        if doc["kind"] in KEDA_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{name} {doc['kind']}: {exc.message} at {list(exc.path)}") from exc
    # every manifest is applied, but the examples (secret.example.yaml: never overwrite real ones)
    assert sorted(_kustomization()["resources"]) == sorted(
        p.name
        for p in (DEPLOY / "k8s").glob("*.yaml")
        if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml")
    )


def test_kubernetes_pods_run_real_commands_with_real_settings() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in _k8s_docs()}
    config = docs[("ConfigMap", "streamtoll")]["data"]
    kafka_secret = docs[("Secret", "streamtoll-kafka")]["stringData"]
    for key in [*config, *kafka_secret]:
        assert _is_setting(key), f"{key} is not a streamtoll setting"
    secret_names = {f"STREAMTOLL_{s.name}" for s in SETTINGS if s.secret}
    assert not secret_names & set(config), "secrets stay out of the ConfigMap"
    assert "STREAMTOLL_KAFKA_SASL_PASSWORD" in kafka_secret
    roles = {}
    for spec in _pod_specs().values():
        for c in _containers(spec):
            _check_command(c["args"])
            roles.setdefault(c["args"][0], c)
            for e in c.get("env", []):
                assert _is_setting(e["name"]), f"{e['name']} is not a streamtoll setting"
            refs = {(kind, ref["name"]) for r in c["envFrom"] for kind, ref in r.items()}
            assert refs <= {("configMapRef", "streamtoll"), ("secretRef", "streamtoll-kafka")}, refs
            assert ("configMapRef", "streamtoll") in refs
    assert {"worker", "caps", "sink", "api", "db", "gateway"} <= set(roles)
    assert roles["api"]["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert roles["api"]["livenessProbe"]["httpGet"]["path"] == "/healthz/live"
    # workers: a unique instance id per pod (the replica bounds: test_deploy_keda.py)
    worker_env = {e["name"]: e["value"] for e in roles["worker"]["env"]}
    assert worker_env["STREAMTOLL_INSTANCE_ID"] == "@hostname"


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
    assert {"kafka", "postgres", "migrate", "worker-0", "worker-1", "caps", "sink", "api", "gateway"} <= set(services)
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


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def _compose_env(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment as the container sees it: its env files, then `environment`."""
    env = {}
    for name in svc.get("env_file", []):
        for line in (DEPLOY / name).read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
    env.update({k: str(v) for k, v in svc.get("environment", {}).items()})
    return env


def _streamtoll_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _compose()["services"].items() if s.get("image", "").startswith("streamtoll")}


def test_compose_kafka_keeps_its_data_in_its_volume_and_runs_transactions_on_one_broker() -> None:
    doc = _compose()
    kafka = doc["services"]["kafka"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    # the image writes to /tmp/kraft-combined-logs unless told otherwise: the volume stayed empty
    volumes = dict(v.split(":")[:2][::-1] for v in kafka["volumes"])  # container path -> volume
    assert env["KAFKA_LOG_DIRS"] in volumes, "KAFKA_LOG_DIRS must be the mounted volume's path"
    assert volumes[env["KAFKA_LOG_DIRS"]] in doc["volumes"]  # a named volume, kept across restarts
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])  # fixed: the volume is formatted for it
    # KRaft, one node as broker and its own controller
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
    assert list(voters) == [env["KAFKA_NODE_ID"]]
    listeners = dict(entry.split("://") for entry in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(entry.split("://") for entry in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(entry.split(":") for entry in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(listeners) <= set(protocols) and controller in listeners and controller not in advertised
    assert voters[env["KAFKA_NODE_ID"]] == f"kafka:{listeners[controller].rsplit(':', 1)[1]}"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    for name, address in advertised.items():
        assert listeners[name].rsplit(":", 1)[1] == address.rsplit(":", 1)[1], name
    # streamtoll and the host reach it at advertised addresses
    bootstrap = {_compose_env(s)["STREAMTOLL_KAFKA_BOOTSTRAP"] for s in _streamtoll_services().values()}
    assert bootstrap <= set(advertised.values())
    published = {p.split(":")[0] for p in kafka["ports"]}
    assert published == {a.rsplit(":", 1)[1] for a in advertised.values() if a.startswith("localhost:")}
    # internal topics (group offsets, transaction state) and streamtoll's topics fit one broker:
    # with the defaults (3, 2) group commits and transactions would fail
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_DEFAULT_REPLICATION_FACTOR",
        "KAFKA_MIN_INSYNC_REPLICAS",
    ):
        assert env[key] == "1", key


def _url_user(url: str) -> str:
    match = re.match(r"postgresql\+psycopg://([^:@/]+)[:@]", url)
    assert match, url
    return match.group(1)


def test_compose_services_never_embed_and_connect_as_their_database_roles() -> None:
    doc = _compose()
    services = doc["services"]
    owner = services["postgres"]["environment"]["POSTGRES_USER"]
    roles_sql = (DEPLOY / "postgres" / "roles.sql").read_text()
    logins_sql = (DEPLOY / "postgres" / "logins.sql").read_text()
    assert {"streamtoll_sink", "streamtoll_api"} <= set(re.findall(r"CREATE ROLE (\w+) NOLOGIN", roles_sql))
    role_of = dict(re.findall(r"CREATE ROLE (\w+) LOGIN IN ROLE (\w+)", logins_sql))
    expected = {"migrate": owner, "sink": "streamtoll_sink", "api": "streamtoll_api"}
    for name, svc in _streamtoll_services().items():
        env = _compose_env(svc)
        assert env["STREAMTOLL_EMBEDDED"] == "never", name
        command = svc["command"][0]
        url = env.get("STREAMTOLL_DATABASE_URL")
        if command in ("worker", "gateway", "caps"):
            assert url is None, f"{name}: workers, the caps fold and the gateway use no database"
            assert "migrate" not in svc.get("depends_on", {})
            continue
        assert url is not None, name
        user = _url_user(url)
        role = user if command == "db" else role_of.get(user)
        assert role == expected[name], f"{name} connects as {user} (role {role})"
        if command in ("sink", "api"):
            assert svc["depends_on"]["db-roles"] == {"condition": "service_completed_successfully"}
    # the roles and logins are made after the migration (roles.sql grants on existing tables),
    # with the passwords the sink's and the API's URLs carry
    roles = services["db-roles"]
    assert roles["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    mount, _, _ = next(v for v in roles["volumes"] if v.startswith("./postgres:")).partition(":ro")
    target = mount.split(":")[1]
    files = [a.split("=", 1)[1] for a in roles["command"] if a.startswith("--file=")]
    assert files == [f"{target}/roles.sql", f"{target}/logins.sql"]
    assert (DEPLOY / "postgres" / "roles.sql").exists() and (DEPLOY / "postgres" / "logins.sql").exists()
    psql_vars = dict(a.split("=", 2)[1:] for a in roles["command"] if a.startswith("--set="))
    assert psql_vars.pop("ON_ERROR_STOP") == "1"
    assert set(psql_vars) == set(re.findall(r":'(\w+)'", logins_sql))
    for var, service in (("sink_password", "sink"), ("api_password", "api")):
        url = _compose_env(services[service])["STREAMTOLL_DATABASE_URL"]
        assert f":{psql_vars[var]}@" in url, f"{service}'s URL and {var} differ"


def _interpolated(value: str) -> str:
    """A compose value with ``${NAME:-default}`` as compose makes it when NAME is unset."""
    return re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", value)


def test_compose_gateway_fronts_the_broker_on_the_ports_it_publishes() -> None:
    """Clients on the host bootstrap at the gateway and are sent to its broker ports: every port
    the gateway listens on is published as itself, the advertised host is one the host reaches,
    and the upstream is the broker's listener inside the network."""
    from gateway.settings import GatewaySettings

    services = _compose()["services"]
    gw = services["gateway"]
    env = {k: _interpolated(v) for k, v in _compose_env(gw).items()}
    settings = GatewaySettings.from_env(env)  # raises on any invalid gateway setting
    ports = {settings.listen_port, *settings.broker_ports}
    assert len(settings.broker_ports) >= 1  # one broker in this file
    published = {tuple(p.split(":")) for p in gw["ports"]}
    assert published == {(str(p), str(p)) for p in ports}  # the port clients are told is the one published
    assert settings.advertised_host == "localhost" and settings.listen_host == "0.0.0.0"
    kafka_env = services["kafka"]["environment"]
    advertised = dict(e.split("://") for e in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert settings.upstream_bootstrap == advertised[kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert gw["depends_on"]["kafka"] == {"condition": "service_healthy"}
    # SIGTERM drains (in-flight requests answered for up to 30 s, then the audit flush)
    assert int(gw["stop_grace_period"].rstrip("s")) >= 45


def test_compose_healthchecks_ask_the_health_endpoints() -> None:
    for name, svc in _streamtoll_services().items():
        command = svc["command"]
        if command[0] in ("worker", "sink", "gateway"):
            port = _compose_env(svc)["STREAMTOLL_METRICS_BIND"].rsplit(":", 1)[1]
        elif command[0] == "api":
            port = command[command.index("--bind") + 1].rsplit(":", 1)[1]
        else:
            continue
        test = " ".join(svc["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz'" in test, f"{name}: {test}"
        assert "urlopen" in test  # raises on a 503: unhealthy


def test_dockerfile_installs_the_wheel_with_the_lock_file_from_files_that_exist() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [
        line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")
    ]
    made: dict[str, set[str]] = {}  # build stage -> the paths it made (copied in, or the wheel dir)
    stage, workdir = "", "/"
    for ins in instructions:
        op, _, rest = ins.partition(" ")
        words = rest.split()
        if op == "FROM":
            stage, workdir = (words[2] if len(words) > 2 else ""), "/"
            made[stage] = set()
        elif op == "WORKDIR":
            workdir = posixpath.join(workdir, words[0])
        elif op == "COPY":
            source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            *sources, dest = [w for w in words if not w.startswith("--")]
            for src in sources:
                if source_stage is None:  # the build context: the repository root
                    assert (DEPLOY.parent / src).exists(), f"COPY {src}: not in the build context"
                else:
                    assert any(src == m or src.startswith(m + "/") for m in made[source_stage]), (
                        f"COPY --from={source_stage} {src}: that stage did not make it"
                    )
            target = posixpath.normpath(posixpath.join(workdir, dest))
            if dest.endswith("/") or len(sources) > 1:
                made[stage] |= {posixpath.join(target, posixpath.basename(src)) for src in sources}
            else:
                made[stage].add(target)
        elif op == "RUN":
            made[stage] |= set(re.findall(r"--wheel-dir[= ](\S+)", rest))
    installs = [i for i in instructions if re.search(r"\bpip install\b", i)]
    assert installs, "the image installs streamtoll with pip"
    for ins in installs:
        assert not re.search(r"\s(-e|--editable)\s", ins), "an editable install needs the source tree"
    wheel = [i for i in installs if ".whl" in i]
    assert wheel and all(re.search(r"\s-c\s+\S*constraints\.txt\s", i) for i in wheel), "pin with the lock file"
    assert re.search(r"^ENV .*STREAMTOLL_EMBEDDED=never", text.replace("\\\n", " "), re.M)
    assert instructions[-2:] == ['ENTRYPOINT ["streamtoll"]', 'CMD ["--help"]']
    # the context is the repository root: its virtualenv and git history stay out of it
    ignored = set((DEPLOY / "Dockerfile.dockerignore").read_text().split())
    assert {".venv", ".git"} <= ignored


def test_grafana_dashboard_is_valid_json_with_queries() -> None:
    doc = json.loads((DEPLOY / "grafana" / "streamtoll.json").read_text())
    assert doc["uid"] == "streamtoll" and all(p["targets"] for p in doc["panels"])


def test_runbook_commands_are_real_and_it_covers_the_operations() -> None:
    text = (DEPLOY / "runbook.md").read_text()
    blocks = text.split("```")[1::2]
    commands = [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith("streamtoll ")]
    assert len(commands) >= 5
    for line in commands:
        # split as the shell does: an unquoted `#` starts a comment (`invoices show #42` lost its
        # argument); drafts are draft-42
        _check_command(shlex.split(line, comments=True)[1:])
    headings = [line[3:].lower() for line in text.splitlines() if line.startswith("## ")]
    for topic in ("scaling", "backfill and replay", "month close", "backup and restore", "upgrade", "secrets"):
        assert topic in headings, topic
    assert "database roles" in headings
    # the upgrade: the release's migration Job first, then the Deployments
    upgrade = text[text.index("## Upgrade") :].split("\n## ")[0]
    kubectl = [line.strip() for b in upgrade.split("```")[1::2] for line in b.splitlines() if "kubectl" in line]
    migrate = next(i for i, line in enumerate(kubectl) if "component=migrate" in line)
    wait = next(i for i, line in enumerate(kubectl) if "wait --for=condition=complete" in line)
    rollout = next(i for i, line in enumerate(kubectl) if line == "kubectl apply -k deploy/k8s")
    assert migrate < wait < rollout
    assert "job/streamtoll-migrate-" in kubectl[wait]


def test_readme_settings_table_is_generated_from_the_catalog() -> None:
    from streamtoll.settings_catalog import settings_table

    readme = (DEPLOY.parent / "README.md").read_text()
    assert settings_table() in readme, "paste streamtoll.settings_catalog.settings_table() into the README"
