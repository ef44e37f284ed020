"""Topics fit production: what streamtoll creates comes from the settings, and an existing topic
whose settings break a guarantee is named with the setting that decides it."""

from __future__ import annotations

import pytest

from metering.engine.topics import TopicSpec, check_topic, topic_specs
from metering.errors import SettingsError
from metering.settings import MeteringSettings

DAY_MS = 86_400_000


def _specs(**env: str) -> dict[str, TopicSpec]:
    s = MeteringSettings.from_env({f"STREAMTOLL_{k}": v for k, v in env.items()})
    return {sp.name: sp for sp in topic_specs(s)}


def test_created_topics_follow_the_settings() -> None:
    specs = _specs(
        TOPIC_PARTITIONS="24",
        TOPIC_MIN_INSYNC_REPLICAS="2",
        TOPIC_REPLICATION_FACTOR="3",
        DLQ_RETENTION="14d",
        USAGE_MINUTES_RETENTION="6h",
        MAX_LATENESS="35d",
        REPLAY_WINDOW="60d",
        STATE_RETENTION="3d",
        STATE_PARTITIONS="6",
    )
    assert {n: sp.partitions for n, sp in specs.items()} == {
        "proxy-audit": 24,
        "broker-metrics": 24,
        "confluent-audit-log-events": 24,
        "streamtoll.dlq.v1": 24,
        "streamtoll.usage-windows.v1": 24,
        "streamtoll.usage-minutes.v1": 24,
        "streamtoll.metering-state.v1": 6,
    }
    config = {n: dict(sp.config) for n, sp in specs.items()}
    assert all(c["min.insync.replicas"] == "2" for c in config.values())
    assert config["streamtoll.dlq.v1"]["retention.ms"] == str(14 * DAY_MS)
    assert config["streamtoll.usage-minutes.v1"]["retention.ms"] == str(6 * 3_600_000)
    assert config["streamtoll.usage-windows.v1"]["retention.ms"] == str(95 * DAY_MS)  # MAX_LATENESS + REPLAY_WINDOW
    assert config["streamtoll.metering-state.v1"]["retention.ms"] == str(3 * DAY_MS)
    assert config["streamtoll.metering-state.v1"]["cleanup.policy"] == "delete"
    assert "retention.ms" not in config["proxy-audit"]  # the producers' topics keep the cluster's retention


def test_defaults_are_production_defaults() -> None:
    s = MeteringSettings.from_env({})
    assert (s.topic_partitions, s.topic_replication_factor, s.topic_min_insync_replicas) == (12, -1, None)
    assert s.usage_windows_retention == (35 + 30) * 86400
    specs = _specs()
    assert "min.insync.replicas" not in specs["streamtoll.dlq.v1"].config


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"USAGE_WINDOWS_RETENTION": "40d"}, "STREAMTOLL_USAGE_WINDOWS_RETENTION must be at least"),
        ({"MAX_LATENESS": "70d", "USAGE_WINDOWS_RETENTION": "90d"}, "(100d)"),
        ({"STATE_RETENTION": "1h"}, "STREAMTOLL_STATE_RETENTION must be at least"),
        ({"TOPIC_REPLICATION_FACTOR": "2", "TOPIC_MIN_INSYNC_REPLICAS": "3"}, "cannot exceed"),
        ({"TOPIC_PARTITIONS": "0"}, "STREAMTOLL_TOPIC_PARTITIONS='0' must be an integer ≥ 1"),
        ({"DLQ_RETENTION": "a month"}, "STREAMTOLL_DLQ_RETENTION"),
    ],
)
def test_settings_that_break_a_guarantee_are_refused(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError) as exc:
        MeteringSettings.from_env({f"STREAMTOLL_{k}": v for k, v in env.items()})
    assert says in " ".join(exc.value.problems)


def test_an_existing_state_topic_is_judged_on_what_a_restart_needs() -> None:
    state = _specs()["streamtoll.metering-state.v1"]
    assert check_topic(state, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}) == ([], [])
    assert check_topic(state, {"retention.ms": "-1", "retention.bytes": "-1"}) == ([], [])
    assert check_topic(state, {}) == ([], [])  # not reported: not judged
    errors, _ = check_topic(state, {"cleanup.policy": "compact", "retention.ms": "3600000", "retention.bytes": "1000"})
    assert len(errors) == 3
    assert "cleanup.policy=compact; it must be delete" in errors[0]
    assert "retention.bytes=1000; it must be -1" in errors[1]
    assert "needs at least 604800 s (STREAMTOLL_STATE_RETENTION)" in errors[2]


def test_an_existing_usage_windows_topic_must_outlive_lateness_and_replay() -> None:
    windows = _specs()["streamtoll.usage-windows.v1"]
    errors, warnings = check_topic(windows, {"retention.ms": str(7 * DAY_MS)})
    assert warnings == [] and len(errors) == 1
    assert "STREAMTOLL_MAX_LATENESS + STREAMTOLL_REPLAY_WINDOW" in errors[0] and "raise its retention.ms" in errors[0]
    assert check_topic(windows, {"retention.ms": str(65 * DAY_MS)}) == ([], [])
    assert check_topic(windows, {"cleanup.policy": "compact"}) == ([], [])  # full totals compact fine


def test_short_live_view_topics_only_warn() -> None:
    specs = _specs()
    errors, warnings = check_topic(specs["streamtoll.usage-minutes.v1"], {"retention.ms": "600000"})
    assert errors == [] and "STREAMTOLL_USAGE_MINUTES_RETENTION" in warnings[0]
    errors, warnings = check_topic(specs["streamtoll.dlq.v1"], {"retention.ms": "3600000"})
    assert errors == [] and "STREAMTOLL_DLQ_RETENTION" in warnings[0]
