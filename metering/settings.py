"""Metering settings, read from the environment (prefix ``STREAMTOLL_``) and validated at once.

Every problem is collected and reported together in one :class:`SettingsError`, each naming the
setting. Kafka security settings pass through: ``STREAMTOLL_KAFKA_SECURITY_PROTOCOL``,
``..._SASL_MECHANISM``, ``..._SASL_USERNAME``, ``..._SASL_PASSWORD``, ``..._SSL_CA_LOCATION``
and, for anything else librdkafka knows, ``STREAMTOLL_KAFKA_X_<NAME>`` (``_`` becomes ``.``).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC

from metering.errors import SettingsError

__all__ = ["MeteringSettings", "parse_duration"]

PREFIX = "STREAMTOLL_"
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_SECURITY = {
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
    "KAFKA_SSL_CERTIFICATE_LOCATION": "ssl.certificate.location",
    "KAFKA_SSL_KEY_LOCATION": "ssl.key.location",
}


def parse_duration(text: str) -> float:
    """``"1h"`` → 3600.0 seconds. Units: ms, s, m, h, d."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h or 35d")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


@dataclass(frozen=True)
class MeteringSettings:
    kafka_bootstrap: str | None = None
    topic_proxy_audit: str = "proxy-audit"
    topic_broker_metrics: str = "broker-metrics"
    topic_broker_audit: str = "confluent-audit-log-events"
    topic_dlq: str = "streamtoll.dlq.v1"
    topic_usage_windows: str = "streamtoll.usage-windows.v1"
    topic_usage_minutes: str = "streamtoll.usage-minutes.v1"
    topic_state: str = "streamtoll.metering-state.v1"
    topic_credentials: str = "streamtoll.credentials"  # credentials streamtoll issued, for the gateways
    topic_entitlements: str = "streamtoll.entitlements"  # each account's access, rates and caps
    topic_enforcement: str = "streamtoll.enforcement"  # the caps fold's decisions, for the gateways
    topic_enforcement_events: str = "streamtoll.enforcement-events"  # throttles and blocks gateways applied
    state_partitions: int = 12
    # the topics streamtoll creates when they are missing (metering.engine.topics)
    topic_partitions: int = 12
    topic_replication_factor: int = -1  # -1: the cluster's default.replication.factor
    topic_min_insync_replicas: int | None = None  # None: the cluster's default
    dlq_retention_s: float = 30 * 86400.0
    usage_minutes_retention_s: float = 86400.0
    usage_windows_retention_s: float | None = None  # None: max_lateness + replay_window
    replay_window_s: float = 30 * 86400.0
    dedup_horizon_s: float = 3600.0
    dedup_max_keys: int = 1_000_000
    max_lateness_s: float = 35 * 86400.0
    max_future_skew_s: float = 300.0
    meter_since_ms: int | None = None
    counter_max_rate: float = 10e9
    max_event_bytes: int = 2**31
    group_id: str = "streamtoll-metering"
    instance_id: str = "0"
    batch_size: int = 100_000
    snapshot_interval_s: float = 600.0
    state_retention_s: float = 7 * 86400.0
    session_timeout_ms: int = 10_000
    static_membership: bool = True
    caps_embedded_broker: bool = False  # tansu quirks the caps fold works around (metering.streams.caps)
    metrics_bind: str | None = None  # HOST:PORT where this process serves /metrics; unset = off
    kafka_extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def usage_windows_retention(self) -> float:
        """Seconds the usage windows topic keeps records: a window changes until ``MAX_LATENESS``
        after its hour, and a re-sink or database restore replays up to ``REPLAY_WINDOW``."""
        if self.usage_windows_retention_s is not None:
            return self.usage_windows_retention_s
        return self.max_lateness_s + self.replay_window_s

    @property
    def state_retention_needed(self) -> float:
        """Seconds of the state topic a restore reads back (``Engine._restore``)."""
        return self.dedup_horizon_s + 3 * self.snapshot_interval_s

    @property
    def input_topics(self) -> dict[str, str]:
        """Input topic → source kind."""
        return {
            self.topic_proxy_audit: "proxy",
            self.topic_broker_metrics: "broker_metrics",
            self.topic_broker_audit: "audit_log",
        }

    def kafka_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings shared by every client (bootstrap + security pass-through)."""
        if not self.kafka_bootstrap:
            raise SettingsError(["STREAMTOLL_KAFKA_BOOTSTRAP is not set (and no embedded broker runs)"])
        return {"bootstrap.servers": self.kafka_bootstrap, **self.kafka_extra}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MeteringSettings:
        env = os.environ if env is None else env
        problems: list[str] = []
        values: dict[str, object] = {}

        def get(name: str) -> str | None:
            v = env.get(PREFIX + name)
            return v if v not in (None, "") else None

        if (v := get("KAFKA_BOOTSTRAP")) is not None:
            values["kafka_bootstrap"] = v
        for name in (
            "TOPIC_PROXY_AUDIT",
            "TOPIC_BROKER_METRICS",
            "TOPIC_BROKER_AUDIT",
            "TOPIC_DLQ",
            "TOPIC_USAGE_WINDOWS",
            "TOPIC_USAGE_MINUTES",
            "TOPIC_STATE",
            "TOPIC_CREDENTIALS",
            "TOPIC_ENTITLEMENTS",
            "TOPIC_ENFORCEMENT",
            "TOPIC_ENFORCEMENT_EVENTS",
        ):
            if (v := get(name)) is not None:
                if _TOPIC.match(v):
                    values[name.lower()] = v
                else:
                    problems.append(f"{PREFIX}{name}={v!r} is not a valid Kafka topic name")
        for name, attr in (
            ("DEDUP_HORIZON", "dedup_horizon_s"),
            ("MAX_LATENESS", "max_lateness_s"),
            ("MAX_FUTURE_SKEW", "max_future_skew_s"),
            ("STATE_SNAPSHOT_INTERVAL", "snapshot_interval_s"),
            ("STATE_RETENTION", "state_retention_s"),
            ("DLQ_RETENTION", "dlq_retention_s"),
            ("USAGE_MINUTES_RETENTION", "usage_minutes_retention_s"),
            ("USAGE_WINDOWS_RETENTION", "usage_windows_retention_s"),
            ("REPLAY_WINDOW", "replay_window_s"),
        ):
            if (v := get(name)) is not None:
                try:
                    values[attr] = parse_duration(v)
                except ValueError as exc:
                    problems.append(f"{PREFIX}{name}: {exc}")
        for name, attr, low in (
            ("DEDUP_MAX_KEYS", "dedup_max_keys", 1000),
            ("BATCH_SIZE", "batch_size", 1),
            ("STATE_PARTITIONS", "state_partitions", 1),
            ("SESSION_TIMEOUT_MS", "session_timeout_ms", 1000),
            ("TOPIC_PARTITIONS", "topic_partitions", 1),
            ("TOPIC_REPLICATION_FACTOR", "topic_replication_factor", 1),
            ("TOPIC_MIN_INSYNC_REPLICAS", "topic_min_insync_replicas", 1),
        ):
            if (v := get(name)) is not None:
                if v.isdigit() and int(v) >= low:
                    values[attr] = int(v)
                else:
                    problems.append(f"{PREFIX}{name}={v!r} must be an integer ≥ {low}")
        if (v := get("COUNTER_MAX_RATE")) is not None:
            try:
                values["counter_max_rate"] = float(v)
                if not values["counter_max_rate"] > 0:  # type: ignore[operator]
                    raise ValueError
            except ValueError:
                problems.append(f"{PREFIX}COUNTER_MAX_RATE={v!r} must be a positive number (bytes/s)")
        if (v := get("METER_SINCE")) is not None:
            from datetime import datetime

            try:
                dt = datetime.fromisoformat(v)
                if dt.tzinfo is None:
                    dt = dt.replace(tzinfo=UTC)
                values["meter_since_ms"] = int(dt.timestamp() * 1000)
            except ValueError:
                problems.append(f"{PREFIX}METER_SINCE={v!r} is not an ISO 8601 date or time")
        if (v := get("METERING_GROUP")) is not None:
            values["group_id"] = v
        if (v := get("INSTANCE_ID")) is not None:
            # "@hostname": the pod or container name, stable per replica in a StatefulSet and
            # unique per replica anywhere (zombie writers are fenced by the group generation too)
            values["instance_id"] = socket.gethostname() if v == "@hostname" else v
        if (v := get("STATIC_MEMBERSHIP")) is not None:
            if v.lower() in ("true", "false"):
                values["static_membership"] = v.lower() == "true"
            else:
                problems.append(f"{PREFIX}STATIC_MEMBERSHIP={v!r} must be true or false")
        if (v := get("CAPS_EMBEDDED_BROKER")) is not None:
            if v.lower() in ("true", "false"):
                values["caps_embedded_broker"] = v.lower() == "true"
            else:
                problems.append(f"{PREFIX}CAPS_EMBEDDED_BROKER={v!r} must be true or false")
        if (v := get("METRICS_BIND")) is not None:
            port = v.rpartition(":")[2]
            if port.isdigit() and int(port) < 65536:
                values["metrics_bind"] = v
            else:
                problems.append(f"{PREFIX}METRICS_BIND={v!r} must be HOST:PORT, e.g. 127.0.0.1:9464")
        extra: dict[str, str] = {}
        for name, key in _SECURITY.items():
            if (v := get(name)) is not None:
                extra[key] = v
        for k, v in env.items():
            if k.startswith(PREFIX + "KAFKA_X_") and v:
                extra[k[len(PREFIX + "KAFKA_X_") :].lower().replace("_", ".")] = v
        values["kafka_extra"] = extra
        topics = [
            values.get(t, getattr(cls, t)) for t in ("topic_proxy_audit", "topic_broker_metrics", "topic_broker_audit")
        ]
        if len(set(topics)) != 3:
            problems.append(
                f"{PREFIX}TOPIC_PROXY_AUDIT, {PREFIX}TOPIC_BROKER_METRICS and {PREFIX}TOPIC_BROKER_AUDIT must differ"
            )
        if not problems:
            problems += cls._retention_problems(values)
        if problems:
            raise SettingsError(problems)
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def _retention_problems(cls, values: Mapping[str, object]) -> list[str]:
        """Settings that are valid alone but together break a guarantee."""
        s = cls(**values)  # type: ignore[arg-type]
        problems = []
        if s.usage_windows_retention < s.max_lateness_s + s.replay_window_s:
            problems.append(
                f"{PREFIX}USAGE_WINDOWS_RETENTION must be at least {PREFIX}MAX_LATENESS + {PREFIX}REPLAY_WINDOW "
                f"({_duration_text(s.max_lateness_s + s.replay_window_s)}): a window changes until MAX_LATENESS "
                "after its hour, and a re-sink or database restore replays REPLAY_WINDOW"
            )
        if s.state_retention_s < s.state_retention_needed:
            problems.append(
                f"{PREFIX}STATE_RETENTION must be at least {PREFIX}DEDUP_HORIZON + 3 × {PREFIX}STATE_SNAPSHOT_INTERVAL "
                f"({_duration_text(s.state_retention_needed)}): a restarted worker rebuilds its state from that span"
            )
        if (
            s.topic_min_insync_replicas is not None
            and s.topic_replication_factor > 0
            and s.topic_min_insync_replicas > s.topic_replication_factor
        ):
            problems.append(
                f"{PREFIX}TOPIC_MIN_INSYNC_REPLICAS ({s.topic_min_insync_replicas}) cannot exceed "
                f"{PREFIX}TOPIC_REPLICATION_FACTOR ({s.topic_replication_factor}): every transaction would fail"
            )
        return problems


def _duration_text(seconds: float) -> str:
    """A duration for messages: ``65d``, ``1h30m`` → as whole units where exact."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
