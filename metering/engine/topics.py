"""The topics metering reads and writes: created when missing, checked when they exist.

Created topics take their partitions, replication factor, ``min.insync.replicas`` and retention
from the settings (``TOPIC_PARTITIONS``, ``TOPIC_REPLICATION_FACTOR``,
``TOPIC_MIN_INSYNC_REPLICAS``, ``DLQ_RETENTION``, ``USAGE_MINUTES_RETENTION``,
``USAGE_WINDOWS_RETENTION``, ``STATE_RETENTION``, ``STATE_PARTITIONS``). Topics that already
exist are never altered — they may be an operator's — but their settings are read back and
held against what metering's guarantees need:

* the state topic must delete, never compact (its entries are deltas against the last
  checkpoint) and keep at least ``STATE_RETENTION`` (a restarted worker reads its checkpoint and
  dedup keys back, and cold hours' segments, which the worker rewrites at half of
  ``STATE_RETENTION``), with no size limit that could drop a segment or checkpoint first —
  otherwise a restart loses state and counts wrong: an **error**, the worker does not start;
* the usage windows topic must keep ``MAX_LATENESS + REPLAY_WINDOW`` (a window changes until
  ``MAX_LATENESS`` after its hour; the runbook's re-sink and database restore replay
  ``REPLAY_WINDOW``): an **error**, since the runbook's recovery would silently miss usage;
* the usage minutes topic must keep two hours (the live views read from an hour back) and the
  DLQ one day (the live views count today's rejected records): a **warning**, the views only
  show less.

A topic whose setting the cluster does not report (some brokers describe only what was set
explicitly) is not judged on it. Checks are pure (:func:`check_topic`); :func:`ensure_topics`
talks to the cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from metering.errors import EngineError, TopicError
from metering.settings import PREFIX, MeteringSettings

__all__ = ["TopicSpec", "check_topic", "ensure_topics", "topic_specs"]

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 * 1024 * 1024  # state snapshots and DLQ records (with the original bytes) can be large
_MINUTES_NEEDED_S = 2 * 3600.0
_DLQ_NEEDED_S = 86400.0


@dataclass(frozen=True)
class Need:
    """A retention a topic must have, why, and whether falling short stops the worker."""

    seconds: float
    settings: str  # the settings that decide it, named in the message
    why: str
    fatal: bool


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str]  # set when streamtoll creates the topic
    retention: Need | None = None
    delete_only: bool = False  # compaction would break it
    no_size_limit: bool = False  # retention.bytes would break it
    checked: bool = True  # input topics are the producers' to size: created, not judged


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


def topic_specs(s: MeteringSettings) -> list[TopicSpec]:
    """Every topic metering uses, with what it is created with and what it must keep."""
    common = {} if s.topic_min_insync_replicas is None else {"min.insync.replicas": str(s.topic_min_insync_replicas)}
    big = {"max.message.bytes": str(MAX_MESSAGE)}
    specs = [TopicSpec(t, s.topic_partitions, dict(common), checked=False) for t in s.input_topics]
    specs += [
        TopicSpec(
            s.topic_dlq,
            s.topic_partitions,
            {**common, **big, "retention.ms": _ms(s.dlq_retention_s)},
            Need(_DLQ_NEEDED_S, f"{PREFIX}DLQ_RETENTION", "the live views count today's rejected records", False),
        ),
        TopicSpec(
            s.topic_usage_windows,
            s.topic_partitions,
            {**common, "cleanup.policy": "delete", "retention.ms": _ms(s.usage_windows_retention)},
            Need(
                s.max_lateness_s + s.replay_window_s,
                f"{PREFIX}MAX_LATENESS + {PREFIX}REPLAY_WINDOW",
                "a window changes until MAX_LATENESS after its hour and a re-sink or database restore "
                "replays REPLAY_WINDOW",
                True,
            ),
        ),
        TopicSpec(
            s.topic_usage_minutes,
            s.topic_partitions,
            {**common, "retention.ms": _ms(s.usage_minutes_retention_s)},
            Need(_MINUTES_NEEDED_S, f"{PREFIX}USAGE_MINUTES_RETENTION", "the live views read an hour back", False),
        ),
        TopicSpec(
            s.topic_state,
            s.state_partitions,
            # deltas are not compactable: plain deletion, longer than a restore ever reads back
            {**common, **big, "cleanup.policy": "delete", "retention.ms": _ms(s.state_retention_s)},
            Need(
                s.state_retention_s,
                f"{PREFIX}STATE_RETENTION",
                "a restarted worker reads its checkpoints, dedup keys and cold hours' segments back, and "
                "rewrites segments at half of STATE_RETENTION (set it to what the topic keeps, at least "
                "DEDUP_HORIZON + 3 × STATE_SNAPSHOT_INTERVAL)",
                True,
            ),
            delete_only=True,
            no_size_limit=True,
        ),
    ]
    return specs


def check_topic(spec: TopicSpec, configs: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(errors, warnings) of an existing topic whose cluster settings are ``configs``."""
    errors: list[str] = []
    warnings: list[str] = []
    policy = configs.get("cleanup.policy")
    if spec.delete_only and policy is not None and "compact" in policy:
        errors.append(
            f"topic {spec.name} has cleanup.policy={policy}; it must be delete (compaction drops the "
            "changelog entries a restart replays)"
        )
    size = configs.get("retention.bytes")
    if spec.no_size_limit and size not in (None, "-1"):
        errors.append(
            f"topic {spec.name} has retention.bytes={size}; it must be -1 (a size limit can delete the "
            "snapshot a restart needs)"
        )
    kept = configs.get("retention.ms")
    need = spec.retention
    limited = kept is not None and kept.isdigit()  # -1: kept for ever
    if need is not None and limited and int(str(kept)) < need.seconds * 1000:
        message = (
            f"topic {spec.name} keeps records {int(str(kept)) // 1000} s (retention.ms={kept}) but needs at least "
            f"{int(need.seconds)} s ({need.settings}): {need.why}; raise its retention.ms"
        )
        (errors if need.fatal else warnings).append(message)
    return errors, warnings


def ensure_topics(settings: MeteringSettings, timeout: float = 15.0) -> list[str]:
    """Create the missing topics; check the existing ones. Returns the warnings (also logged);
    raises :class:`TopicError` with every error at once when an existing topic breaks a guarantee
    (the worker stops), :class:`EngineError` when the cluster cannot be reached (it retries)."""
    admin = AdminClient(settings.kafka_config())
    specs = topic_specs(settings)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise EngineError(f"The Kafka cluster at {settings.kafka_bootstrap} is unreachable ({exc}).") from exc
    errors: list[str] = []
    warnings: list[str] = []
    present = [sp for sp in specs if sp.name in existing and sp.checked]
    if present:
        described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, sp.name) for sp in present])
        by_name = {sp.name: sp for sp in present}
        for resource, fut in described.items():
            try:
                entries = fut.result(timeout=timeout)
            except KafkaException as exc:
                log.warning("could not read a topic's settings", extra={"topic": resource.name, "error": str(exc)})
                continue
            configs = {k: v.value for k, v in entries.items() if v.value is not None}
            e, w = check_topic(by_name[resource.name], configs)
            errors += e
            warnings += w
    for message in warnings:
        log.warning(message)
    if errors:
        raise TopicError(errors)
    missing = [
        NewTopic(sp.name, sp.partitions, settings.topic_replication_factor, config=dict(sp.config))
        for sp in specs
        if sp.name not in existing
    ]
    if missing:
        for topic, fut in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                fut.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise EngineError(f"Could not create topic {topic}: {exc}") from exc
            else:
                log.info("created topic", extra={"topic": topic})
    return warnings
