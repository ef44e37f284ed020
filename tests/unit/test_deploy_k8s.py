"""The Kubernetes manifests hold together as the cluster would read them: no Secret is applied
(each one a pod or KEDA reads is created by hand and documented, with its keys), each component
connects to the database as its own role, probes ask the endpoints the processes serve, the CA
is mounted where the settings look, every container refuses embedded parts, and the migration
Job is a new one per release. Where ``kubectl`` is installed, ``kubectl kustomize`` builds the
kustomization (and its no-TLS variant) and the result is checked too."""

from __future__ import annotations

import posixpath
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamtoll.cli import build_parser
from tests.tls import make_ca

from .test_deploy import (
    DEPLOY,
    K8S_VERSION,
    KEDA_KINDS,
    _applied_docs,
    _containers,
    _k8s_docs,
    _kustomization,
    _pod_specs,
)

K8S = DEPLOY / "k8s"
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def _documented() -> dict[str, tuple[str, set[str]]]:
    """The table of deploy/k8s/README.md, "Created by hand": name -> (kind, keys)."""
    text = (K8S / "README.md").read_text()
    section = text[text.index("## Created by hand") :].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`[^`]+`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1], set(re.findall(r"`([^`]+)`", cells[2])))
    assert rows, "README.md: no table of Secrets created by hand"
    return rows


def _configmap() -> dict[str, str]:
    doc = next(d for _, d in _applied_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "streamtoll")
    data: dict[str, str] = doc["data"]
    return data


def _env(container: dict[str, Any]) -> dict[str, Any]:
    """What a container's environment holds: a value, or where it comes from."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source and source["configMapRef"]["name"] == "streamtoll":
            env.update(_configmap())
        else:
            kind, ref = next(iter(source.items()))
            for key in _documented()[ref["name"]][1]:
                env[key] = {"from": (kind, ref["name"], key)}
    for e in container.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else {"valueFrom": e["valueFrom"]}
    return env


def _references() -> set[tuple[str, str, str | None]]:
    """Every (kind, name, key) a pod or KEDA reads; key None for the whole object."""
    refs: set[tuple[str, str, str | None]] = set()
    for spec in _pod_specs().values():
        for c in _containers(spec):
            for source in c.get("envFrom", []):
                kind, ref = next(iter(source.items()))
                refs.add(("ConfigMap" if kind == "configMapRef" else "Secret", ref["name"], None))
            for e in c.get("env", []):
                for kind, ref in e.get("valueFrom", {}).items():
                    if kind in ("secretKeyRef", "configMapKeyRef"):
                        refs.add(("Secret" if kind == "secretKeyRef" else "ConfigMap", ref["name"], ref["key"]))
        for volume in spec.get("volumes", []):
            for kind in ("secret", "configMap"):
                if kind in volume:
                    ref = volume[kind]
                    name = ref.get("secretName") or ref.get("name")
                    k = "Secret" if kind == "secret" else "ConfigMap"
                    refs.add((k, name, None))
                    refs |= {(k, name, item["key"]) for item in ref.get("items", [])}
    for _, doc in _applied_docs():
        if doc["kind"] == "TriggerAuthentication":
            refs |= {("Secret", r["name"], r["key"]) for r in doc["spec"].get("secretTargetRef", [])}
    return refs


def test_no_applied_resource_holds_a_secret() -> None:
    """`kubectl apply -k` must never overwrite the real Secrets with placeholders."""
    kustomization = _kustomization()
    assert "secretGenerator" not in kustomization
    for name, doc in _applied_docs():
        assert doc["kind"] != "Secret", f"{name}: a Secret in the kustomization overwrites the real one"
        text = yaml.safe_dump(doc)
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"{name}: a URL with a password"
        assert "change-me" not in text, name
    example = [d for _, d in _k8s_docs() if d["kind"] == "Secret"]
    assert example and all(name.endswith(".example.yaml") for name, d in _k8s_docs() if d["kind"] == "Secret")


def test_every_secret_and_configmap_read_is_applied_or_documented() -> None:
    applied = {(d["kind"], d["metadata"]["name"]): d for _, d in _applied_docs()}
    documented = _documented()
    for kind, name, key in sorted(_references(), key=str):
        if (kind, name) in applied:
            data = applied[(kind, name)].get("data", {})
            assert key is None or key in data, f"{kind} {name} has no key {key}"
            continue
        assert name in documented, f"{kind} {name} is read but neither applied nor documented"
        assert documented[name][0] == kind, name
        assert key is None or key in documented[name][1], f"README.md: {name} lacks key {key}"
    # the example shows the documented Secrets as they are documented (and holds no real value)
    for _, doc in _k8s_docs():
        if doc["kind"] == "Secret":
            name = doc["metadata"]["name"]
            assert set(doc["stringData"]) == documented[name][1], name
            for key, value in doc["stringData"].items():
                password = value if "PASSWORD" in key else re.sub(r"^[^:]+://[^:@]+:([^@]*)@.*", r"\1", value)
                assert password == "change-me" or ("PASSWORD" not in key and "://" not in value), (name, key)
    # and nothing documented is unused
    used = {name for _, name, _ in _references()}
    assert set(documented) <= used


ROLE_KEYS = {"db": "owner-url", "sink": "sink-url", "api": "api-url"}


def test_each_component_connects_to_the_database_as_its_own_role() -> None:
    seen = {}
    for workload, spec in _pod_specs().items():
        for c in _containers(spec):
            command = c["args"][0]
            url = _env(c).get("STREAMTOLL_DATABASE_URL")
            if command in ("worker", "gateway", "caps"):
                assert url is None, f"{workload}: workers, the caps fold and the gateway use no database"
                continue
            assert isinstance(url, dict) and "valueFrom" in url, f"{workload}/{c['name']}: the URL is a secret"
            ref = url["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == ("streamtoll-database", ROLE_KEYS[command]), workload
            seen[command] = ref["key"]
    assert seen == ROLE_KEYS  # the owner's URL in the migration Job only
    assert "STREAMTOLL_DATABASE_URL" not in _documented()["streamtoll-kafka"][1]
    # the example logins are the roles' (deploy/postgres/roles.sql), the owner's is not
    example = next(d for _, d in _k8s_docs() if d["metadata"]["name"] == "streamtoll-database")["stringData"]
    users = {key: re.match(r"[^:]+://([^:@]+)", url).group(1) for key, url in example.items()}  # type: ignore[union-attr]
    assert len(set(users.values())) == 3
    roles_sql = (DEPLOY / "postgres" / "roles.sql").read_text()
    for key, role in (("sink-url", "streamtoll_sink"), ("api-url", "streamtoll_api")):
        assert users[key].startswith(role) and f"CREATE ROLE {role} NOLOGIN" in roles_sql


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p.get("name") == port))


def test_worker_sink_and_gateway_probes_ask_their_metrics_server() -> None:
    """Worker, sink and gateway serve /metrics, /healthz and /healthz/live on METRICS_BIND
    (streamtoll/metrics.py); /healthz answers 503 while Kafka or the database is away, so it is
    readiness only; /healthz/live says whether the loop turns."""
    for spec in _pod_specs().values():
        for c in _containers(spec):
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert "tcpSocket" not in c.get(probe, {}), f"{c['name']}: {probe} only sees the port open"
            command = c["args"][0]
            if command not in ("worker", "sink", "gateway"):
                continue
            args = build_parser().parse_args(c["args"])
            bind = args.metrics_bind or _env(c)["STREAMTOLL_METRICS_BIND"]
            port = int(bind.rsplit(":", 1)[1])
            ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
            assert ready["path"] == "/healthz"
            assert live["path"] == "/healthz/live"
            assert _port(c, ready["port"]) == _port(c, live["port"]) == port, command
    metrics = (DEPLOY.parent / "streamtoll" / "metrics.py").read_text()
    assert '"/healthz"' in metrics and '"/healthz/live"' in metrics


def _gateway() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The gateway's StatefulSet, its container and its Service."""
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in _applied_docs()}
    deployment = docs[("StatefulSet", "streamtoll-gateway")]
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["args"][0] == "gateway")
    return deployment, container, docs[("Service", "streamtoll-gateway")]


def test_the_gateway_service_has_a_port_per_gateway_port(tmp_path: Path) -> None:
    """Clients bootstrap at the Service and are sent to ``GATEWAY_ADVERTISED_HOST`` and a broker's
    gateway port: the Service names the pods, resolves under the advertised host, and carries the
    bootstrap port and every broker port to the same port of whichever replica takes it."""
    from gateway.settings import GatewaySettings

    deployment, container, service = _gateway()
    env = {k: v for k, v in _env(container).items() if isinstance(v, str)}
    # TLS on the client ports from the mounted streamtoll-gateway-tls Secret: a real pair here
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["STREAMTOLL_GATEWAY_TLS_CERT"] == mounts["gateway-tls"] + "/tls.crt"
    assert env["STREAMTOLL_GATEWAY_TLS_KEY"] == mounts["gateway-tls"] + "/tls.key"
    assert "STREAMTOLL_GATEWAY_ALLOW_PLAINTEXT" not in env
    ca = make_ca(tmp_path)
    env |= {"STREAMTOLL_GATEWAY_TLS_CERT": str(ca.server_cert), "STREAMTOLL_GATEWAY_TLS_KEY": str(ca.server_key)}
    settings = GatewaySettings.from_env(env)  # raises on any invalid gateway setting
    assert settings.tls is not None
    # each replica's audit journal on a volume of its own
    claims = {c["metadata"]["name"] for c in deployment["spec"]["volumeClaimTemplates"]}
    assert env["STREAMTOLL_GATEWAY_JOURNAL_DIR"] == mounts["journal"] and "journal" in claims
    gateway_ports = {settings.listen_port, *settings.broker_ports}
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    metrics = int(env["STREAMTOLL_METRICS_BIND"].rsplit(":", 1)[1])
    assert set(named.values()) == gateway_ports | {metrics}
    assert metrics not in gateway_ports
    served = {
        p["port"]: named[p["targetPort"]] if isinstance(p["targetPort"], str) else p["targetPort"]
        for p in service["spec"]["ports"]
    }
    assert served == {p: p for p in gateway_ports}, "each gateway port is the Service port of the same number"
    # the Service selects the gateway's pods, and clients resolve the advertised host to it
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    namespace = _kustomization()["namespace"]
    assert settings.advertised_host.startswith(f"{service['metadata']['name']}.{namespace}.svc")
    # a port for every broker of the upstream cluster, and spares for brokers it gains
    upstream = settings.upstream(_configmap()["STREAMTOLL_KAFKA_BOOTSTRAP"])
    assert len(settings.broker_ports) > len(upstream) >= 1
    # the drain (requests in flight answered for up to 30 s, then the audit flush) fits the grace
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 45


def test_the_kafka_ca_is_mounted_where_the_settings_look() -> None:
    ca = _configmap()["STREAMTOLL_KAFKA_SSL_CA_LOCATION"]
    directory, filename = posixpath.split(ca)
    for workload, spec in _pod_specs().items():
        containers = [c for c in _containers(spec) if c["args"][0] != "db"]
        if not containers:
            continue
        volume = next(v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "kafka-ca")
        assert {"key": "ca.crt", "path": filename} in volume["secret"]["items"], workload
        for c in containers:
            mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
            assert mount["mountPath"] == directory and mount.get("readOnly"), workload
    assert _configmap()["STREAMTOLL_KAFKA_SECURITY_PROTOCOL"].endswith("SSL")


def test_every_streamtoll_container_refuses_embedded_parts() -> None:
    for workload, spec in _pod_specs().items():
        for c in _containers(spec):
            assert c["image"] == "streamtoll", f"{workload}: the image is set in kustomization.yaml only"
            assert _env(c).get("STREAMTOLL_EMBEDDED") == "never", f"{workload}/{c['name']}"
    images = _kustomization()["images"]
    assert [i["name"] for i in images] == ["streamtoll"] and images[0]["newTag"]


def _release_job_name(image: str, kustomization: dict[str, Any]) -> str:
    """What the kustomization's replacement makes of the Job's name for an image reference."""
    job = next(d for _, d in _applied_docs() if d["kind"] == "Job")
    replacement = next(r for r in kustomization["replacements"] if r["source"]["kind"] == "Job")
    source, target = replacement["source"], replacement["targets"][0]
    value = image.split(source["options"]["delimiter"])[source["options"]["index"]]
    parts = job["metadata"]["name"].split(target["options"]["delimiter"])
    parts[target["options"]["index"]] = value
    return str(target["options"]["delimiter"].join(parts))


def test_rollouts_keep_the_old_pods_until_the_new_ones_are_ready() -> None:
    """The upgrade (runbook) may roll before the migration ends: new pods refuse a schema that is
    not theirs, and the old ones keep serving meanwhile."""
    for _, doc in _applied_docs():
        if doc["kind"] == "Deployment":
            strategy = doc["spec"]["strategy"]
            assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_the_migration_job_is_a_new_job_per_release_and_checks_the_schema() -> None:
    job = next(d for _, d in _applied_docs() if d["kind"] == "Job")
    spec = job["spec"]["template"]["spec"]
    # db upgrade, then db current (exit 1 unless at the head): the Job completes only then
    assert [c["args"] for c in spec["initContainers"]] == [["db", "upgrade"]]
    assert [c["args"] for c in spec["containers"]] == [["db", "current"]]
    assert spec["restartPolicy"] == "Never"  # a retry starts over with the upgrade
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # finished Jobs do not pile up
    # its name follows the image tag: a new tag is a new Job (a Job's template is immutable)
    kustomization = _kustomization()
    replacement = next(r for r in kustomization["replacements"] if r["source"]["kind"] == "Job")
    assert replacement["source"]["name"] == job["metadata"]["name"]
    assert replacement["source"]["fieldPath"] == "spec.template.spec.containers.[name=current].image"
    assert replacement["targets"][0]["select"] == {"kind": "Job", "name": job["metadata"]["name"]}
    assert replacement["targets"][0]["fieldPaths"] == ["metadata.name"]
    image = kustomization["images"][0]
    assert ":" not in image["newName"]  # a registry port would come before the tag
    names = {
        tag: _release_job_name(f"{image['newName']}:{tag}", kustomization) for tag in (image["newTag"], "0.2.0-rc1")
    }
    assert names == {
        image["newTag"]: f"streamtoll-migrate-{image['newTag']}",
        "0.2.0-rc1": "streamtoll-migrate-0.2.0-rc1",
    }
    for name in names.values():
        assert DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 63  # the job-name label takes it
    # the runbook and README wait for the Job under that name
    for doc in (DEPLOY / "runbook.md", K8S / "README.md"):
        for name in re.findall(r"job/(streamtoll-migrate-[\w.-]+)", doc.read_text()):
            assert name.startswith("streamtoll-migrate-") and DNS_SUBDOMAIN.fullmatch(name), name


# --- the kustomization as kubectl builds it ----------------------------------------------------


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # kubectl is in no package registry `make test` can use (Debian's kubernetes-client is
        # 1.20, whose kustomize predates `replacements`); the manifests are still validated
        # file by file above, only the built overlay is not
        pytest.skip("kubectl is not installed: the kustomize build is not checked here")
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] not in KEDA_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomize_builds_the_release() -> None:
    docs = _kustomize(K8S)
    _validate(docs)
    image = _kustomization()["images"][0]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert ("Job", f"streamtoll-migrate-{image['newTag']}") in by_kind
    assert all(d["metadata"].get("namespace") == "streamtoll" for d in docs if d["kind"] != "Namespace")
    assert not any(d["kind"] == "Secret" for d in docs)
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            for c in _containers(d["spec"]["template"]["spec"]):
                assert c["image"] == f"{image['newName']}:{image['newTag']}"
    assert {("StatefulSet", "streamtoll-gateway"), ("Service", "streamtoll-gateway")} <= set(by_kind)
    config = by_kind[("ConfigMap", "streamtoll")]["data"]
    trigger = by_kind[("ScaledObject", "streamtoll-worker")]["spec"]["triggers"][0]["metadata"]
    assert trigger["bootstrapServers"] == config["STREAMTOLL_KAFKA_BOOTSTRAP"]
    assert trigger["consumerGroup"] == config["STREAMTOLL_METERING_GROUP"]


def test_kustomize_builds_the_no_tls_variant(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    with (copy / "kustomization.yaml").open("a") as f:
        f.write("components:\n  - no-tls\n")
    docs = _kustomize(copy)
    _validate(docs)
    text = yaml.safe_dump_all(docs)
    assert "kafka-ca" not in text and "SSL_CA_LOCATION" not in text
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert by_kind[("ConfigMap", "streamtoll")]["data"]["STREAMTOLL_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert by_kind[("ScaledObject", "streamtoll-worker")]["spec"]["triggers"][0]["metadata"]["tls"] == "disable"
