"""Worker autoscaling (deploy/k8s/keda.yaml): KEDA scales the worker Deployment on the metering
group's consumer lag, never beyond the input partitions, with stabilization windows so that a
rebalance does not set off another. kubernetes-validate knows no KEDA CRDs: the ScaledObject and
TriggerAuthentication are checked against a schema written from KEDA's documented fields
(ScaledObject specification, TriggerAuthentication, the Apache Kafka scaler), and the HPA
``behavior`` they pass on against the Kubernetes autoscaling/v2 schema kubernetes-validate ships."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

from metering.settings import MeteringSettings
from streamtoll.settings_catalog import SETTINGS

from .test_deploy import DEPLOY, K8S_VERSION, _applied_docs, _k8s_docs

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_STRING_INT = {"type": "string", "pattern": r"^[0-9]+$"}

# the kafka trigger's metadata, as KEDA's Apache Kafka scaler documents it (values are strings)
KAFKA_METADATA = {
    "type": "object",
    "required": ["bootstrapServers", "consumerGroup"],
    "properties": {
        "bootstrapServers": {"type": "string", "pattern": r"^[^,\s]+:[0-9]+(,[^,\s]+:[0-9]+)*$"},
        "consumerGroup": {"type": "string", "minLength": 1},
        "topic": {"type": "string", "minLength": 1},
        "lagThreshold": _STRING_INT,
        "activationLagThreshold": _STRING_INT,
        "offsetResetPolicy": {"enum": ["latest", "earliest"]},
        "allowIdleConsumers": {"enum": ["true", "false"]},
        "scaleToZeroOnInvalidOffset": {"enum": ["true", "false"]},
        "excludePersistentLag": {"enum": ["true", "false"]},
        "limitToPartitionsWithLag": {"enum": ["true", "false"]},
        "version": {"type": "string"},
        "partitionLimitation": {"type": "string"},
        "sasl": {"enum": ["plaintext", "scram_sha256", "scram_sha512", "gssapi", "oauthbearer", "none"]},
        "saslTokenProvider": {"enum": ["bearer", "aws_msk_iam"]},
        "tls": {"enum": ["enable", "disable"]},
        "unsafeSsl": {"enum": ["true", "false"]},
        "awsRegion": {"type": "string"},
    },
    "additionalProperties": False,
}

SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": _NAME,
                        "envSourceContainerName": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 0},
                        "behavior": {"enum": ["static", "currentReplicas", "currentReplicasIfHigher"]},
                    },
                    "additionalProperties": False,
                },
                "advanced": {
                    "type": "object",
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "properties": {"name": _NAME, "behavior": {"type": "object"}},
                            "additionalProperties": False,
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                    "additionalProperties": False,
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": _NAME,
                                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                },
                                "additionalProperties": False,
                            },
                        },
                        "additionalProperties": False,
                        "if": {"properties": {"type": {"const": "kafka"}}},
                        "then": {"properties": {"metadata": KAFKA_METADATA}},
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

# the authentication parameters of the Apache Kafka scaler
KAFKA_AUTH_PARAMETERS = [
    *("sasl", "saslTokenProvider", "username", "password", "keytab", "realm", "kerberosConfig"),
    *("kerberosServiceName", "oauthTokenEndpointUri", "scopes", "oauthExtensions"),
    *("tls", "ca", "cert", "key", "keyPassword", "awsAccessKeyID", "awsSecretAccessKey", "awsRoleArn"),
]
TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "minProperties": 1,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "properties": {
                            "parameter": {"enum": KAFKA_AUTH_PARAMETERS},
                            "name": _NAME,
                            "key": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                },
                "env": {"type": "array"},
                "configMapTargetRef": {"type": "array"},
                "podIdentity": {"type": "object"},
                "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


def _docs(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in _applied_docs() if d["kind"] == kind]


def _scaled_object() -> dict[str, Any]:
    (doc,) = _docs("ScaledObject")
    return doc


def _trigger_authentication() -> dict[str, Any]:
    (doc,) = _docs("TriggerAuthentication")
    return doc


def _configmap() -> dict[str, str]:
    (doc,) = _docs("ConfigMap")
    data: dict[str, str] = doc["data"]
    return data


def test_the_keda_objects_have_only_documented_fields() -> None:
    for doc, schema in ((_scaled_object(), SCALED_OBJECT), (_trigger_authentication(), TRIGGER_AUTHENTICATION)):
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
        assert not errors, [f"{doc['kind']} {list(e.path)}: {e.message}" for e in errors]
    # the schema itself holds: a misspelt field or an unknown trigger parameter is caught
    bad = json.loads(json.dumps(_scaled_object()))
    bad["spec"]["maxReplicas"] = 12
    bad["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "10"
    assert len(list(jsonschema.Draft202012Validator(SCALED_OBJECT).iter_errors(bad))) == 2


def test_the_hpa_behavior_matches_the_kubernetes_schema_and_damps_rebalances() -> None:
    behavior = _scaled_object()["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    base = kubernetes_validate.__path__[0] + f"/kubernetes-json-schema/v{K8S_VERSION}-local-strict/"
    with open(base + "horizontalpodautoscalerbehavior-autoscaling-v2.json") as f:
        schema = json.load(f)
    with open(base + "_definitions.json") as f:
        definitions = json.load(f)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())  # type: ignore[var-annotated]
    errors = list(jsonschema.Draft202012Validator(schema, registry=registry).iter_errors(behavior))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    # a rebalance pauses metering and raises the lag for a while: scaling up needs lag that
    # outlasts a few minutes, scaling down a longer calm, and both go a few workers at a time
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] >= 120
    assert down["stabilizationWindowSeconds"] >= up["stabilizationWindowSeconds"]
    assert all(p["type"] == "Pods" and p["value"] <= 2 for p in up["policies"] + down["policies"])


# librdkafka's sasl.mechanism -> KEDA's sasl
SASL = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
    "OAUTHBEARER": "oauthbearer",
}


def test_workers_scale_on_the_metering_groups_lag_up_to_the_input_partitions() -> None:
    spec = _scaled_object()["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "streamtoll-worker"}
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta, config, settings = trigger["metadata"], _configmap(), MeteringSettings.from_env({})
    assert meta["consumerGroup"] == config["STREAMTOLL_METERING_GROUP"] == settings.group_id
    assert meta["bootstrapServers"] == config["STREAMTOLL_KAFKA_BOOTSTRAP"]
    # no topic: every topic the group commits, the input topics; or one of them
    assert meta.get("topic", "proxy-audit") in settings.input_topics
    assert int(meta["lagThreshold"]) > 0
    assert meta["offsetResetPolicy"] == "earliest"  # as the workers' consumer
    assert "earliest" in (DEPLOY.parent / "metering" / "engine" / "loop.py").read_text()
    # never more workers than input partitions: the default TOPIC_PARTITIONS, said in a comment
    partitions = next(s for s in SETTINGS if s.name == "TOPIC_PARTITIONS").default
    assert spec["maxReplicaCount"] == int(partitions) == settings.topic_partitions
    assert "STREAMTOLL_TOPIC_PARTITIONS" in (DEPLOY / "k8s" / "keda.yaml").read_text()
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]  # never 0: a group needs a member
    assert "idleReplicaCount" not in spec
    # KEDA connects as the workers do
    protocol = config["STREAMTOLL_KAFKA_SECURITY_PROTOCOL"]
    assert meta["tls"] == ("enable" if protocol.endswith("SSL") else "disable")
    assert meta["sasl"] == (SASL[config["STREAMTOLL_KAFKA_SASL_MECHANISM"]] if protocol.startswith("SASL") else "none")
    auth = _trigger_authentication()
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "username": ("streamtoll-kafka", "STREAMTOLL_KAFKA_SASL_USERNAME"),
        "password": ("streamtoll-kafka", "STREAMTOLL_KAFKA_SASL_PASSWORD"),
        "ca": ("kafka-ca", "ca.crt"),
    }


def test_no_cpu_autoscaler_drives_the_workers() -> None:
    for name, doc in _k8s_docs():
        assert doc["kind"] != "HorizontalPodAutoscaler", f"{name}: KEDA owns the workers' HPA"
    for trigger in _scaled_object()["spec"]["triggers"]:
        assert trigger["type"] not in ("cpu", "memory")
    # re-applying the Deployment must not reset KEDA's replica count (a rebalance each time)
    (worker,) = [d for d in _docs("Deployment") if d["metadata"]["name"] == "streamtoll-worker"]
    assert "replicas" not in worker["spec"]
    text = yaml.safe_dump_all([d for _, d in _k8s_docs()])
    assert not re.search(r"averageUtilization", text)
