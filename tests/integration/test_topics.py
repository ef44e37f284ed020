"""Topics on a real broker: created from the settings; existing ones that break a guarantee stop
the worker with one sentence per problem (and nothing created), others only warn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from metering.engine.topics import ensure_topics
from metering.errors import TopicError
from metering.settings import MeteringSettings

pytestmark = pytest.mark.integration


def _configs(admin: AdminClient, topic: str) -> dict[str, str]:
    [fut] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    return {k: v.value for k, v in fut.result(timeout=10).items()}


def test_missing_topics_are_created_as_the_settings_say(env: dict[str, str]) -> None:
    settings = MeteringSettings.from_env(
        {**env, "STREAMTOLL_TOPIC_PARTITIONS": "3", "STREAMTOLL_DLQ_RETENTION": "2d", "STREAMTOLL_REPLAY_WINDOW": "40d"}
    )
    assert ensure_topics(settings) == []
    admin = AdminClient(settings.kafka_config())
    topics = admin.list_topics(timeout=10).topics
    for name in [
        *settings.input_topics,
        settings.topic_dlq,
        settings.topic_usage_windows,
        settings.topic_usage_minutes,
    ]:
        assert len(topics[name].partitions) == 3, name
    assert len(topics[settings.topic_state].partitions) == settings.state_partitions
    assert _configs(admin, settings.topic_dlq)["retention.ms"] == str(2 * 86_400_000)
    assert _configs(admin, settings.topic_usage_windows)["retention.ms"] == str((35 + 40) * 86_400_000)
    state = _configs(admin, settings.topic_state)
    assert (state["cleanup.policy"], state["retention.ms"]) == ("delete", str(7 * 86_400_000))
    assert ensure_topics(settings) == []  # a second start finds them as it made them


def test_existing_topics_that_break_a_guarantee_stop_the_worker(env: dict[str, str], tmp_path: Path) -> None:
    settings = MeteringSettings.from_env(env)
    admin = AdminClient(settings.kafka_config())
    made = admin.create_topics(
        [
            NewTopic(settings.topic_state, 3, 1, config={"cleanup.policy": "compact", "retention.ms": "60000"}),
            NewTopic(settings.topic_usage_windows, 4, 1, config={"retention.ms": str(7 * 86_400_000)}),
            NewTopic(settings.topic_usage_minutes, 4, 1, config={"retention.ms": "600000"}),
        ]
    )
    for fut in made.values():
        fut.result(timeout=10)
    with pytest.raises(TopicError) as exc:
        ensure_topics(settings)
    assert len(exc.value.problems) == 3  # the minutes topic only warns

    worker = subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", "worker"], env=env, capture_output=True, text=True, timeout=120
    )
    assert worker.returncode == 2, worker.stderr[-2000:]
    assert "Traceback" not in worker.stderr
    err = worker.stderr
    assert f"topic {settings.topic_state} has cleanup.policy=compact; it must be delete" in err
    assert "(STREAMTOLL_STATE_RETENTION)" in err
    assert f"topic {settings.topic_usage_windows} keeps records 604800 s" in err
    assert "STREAMTOLL_MAX_LATENESS + STREAMTOLL_REPLAY_WINDOW" in err
    assert "STREAMTOLL_USAGE_MINUTES_RETENTION" in err  # logged as a warning
    topics = admin.list_topics(timeout=10).topics
    assert settings.topic_dlq not in topics and settings.topic_proxy_audit not in topics  # nothing created
