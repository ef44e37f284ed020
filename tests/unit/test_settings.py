from __future__ import annotations

import pytest

from billing.errors import BillingSettingsError
from metering.errors import SettingsError
from metering.settings import MeteringSettings, parse_duration


def test_defaults_follow_the_spec() -> None:
    s = MeteringSettings.from_env({})
    assert s.input_topics == {
        "proxy-audit": "proxy",
        "broker-metrics": "broker_metrics",
        "confluent-audit-log-events": "audit_log",
    }
    assert (s.topic_dlq, s.topic_usage_windows) == ("streamtoll.dlq.v1", "streamtoll.usage-windows.v1")
    assert (s.dedup_horizon_s, s.max_lateness_s, s.max_future_skew_s) == (3600, 35 * 86400, 300)
    assert s.meter_since_ms is None
    assert s.static_membership is True
    assert MeteringSettings.from_env({"STREAMTOLL_STATIC_MEMBERSHIP": "False"}).static_membership is False


def test_every_problem_is_reported_at_once_with_its_name() -> None:
    with pytest.raises(SettingsError) as exc:
        MeteringSettings.from_env(
            {
                "STREAMTOLL_DEDUP_HORIZON": "an hour",
                "STREAMTOLL_MAX_LATENESS": "35",
                "STREAMTOLL_TOPIC_DLQ": "bad topic!",
                "STREAMTOLL_METER_SINCE": "last tuesday",
                "STREAMTOLL_TOPIC_BROKER_METRICS": "proxy-audit",
                "STREAMTOLL_STATIC_MEMBERSHIP": "yes",
            }
        )
    text = " ".join(exc.value.problems)
    for name in ("DEDUP_HORIZON", "MAX_LATENESS", "TOPIC_DLQ", "METER_SINCE", "TOPIC_BROKER_METRICS"):
        assert f"STREAMTOLL_{name}" in text
    assert "STREAMTOLL_STATIC_MEMBERSHIP='yes' must be true or false" in text
    assert len(exc.value.problems) == 6


def test_values_and_security_pass_through() -> None:
    s = MeteringSettings.from_env(
        {
            "STREAMTOLL_DEDUP_HORIZON": "15m",
            "STREAMTOLL_METER_SINCE": "2026-11-01",
            "STREAMTOLL_KAFKA_BOOTSTRAP": "k:9092",
            "STREAMTOLL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMTOLL_KAFKA_X_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "https",
        }
    )
    assert s.dedup_horizon_s == 900
    assert s.meter_since_ms == 1_793_491_200_000
    assert s.kafka_config() == {
        "bootstrap.servers": "k:9092",
        "security.protocol": "SASL_SSL",
        "ssl.endpoint.identification.algorithm": "https",
    }


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("35d", 3024000), ("250ms", 0.25)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("bytes=kafka", "'kafka' is not a source"),
        ("watts=proxy", "'watts' is not a quantity"),
        ("bytes=proxy;bytes=audit_log", "bytes is named twice"),
        ("bytes=", "bytes needs at least one source"),
        ("bytes", "'bytes' must look like quantity=source,source"),
        ("bytes=proxy,proxy", "bytes names a source twice"),
    ],
)
def test_billing_sources_mistakes_are_one_sentence(text: str, problem: str) -> None:
    from billing.settings import BillingSettings

    with pytest.raises(BillingSettingsError) as exc:
        BillingSettings.from_env({"STREAMTOLL_BILLING_SOURCES": text})
    [only] = exc.value.problems
    assert only.startswith(f"STREAMTOLL_BILLING_SOURCES: {problem}"), only


def test_billing_sources_round_trip() -> None:
    from billing.domain.sources import DEFAULT_SOURCES, format_sources, parse_sources

    assert parse_sources("") == DEFAULT_SOURCES
    order = parse_sources(" requests = proxy ; bytes=broker_metrics,proxy")
    assert order == {**DEFAULT_SOURCES, "requests": ("proxy",), "bytes": ("broker_metrics", "proxy")}
    assert parse_sources(format_sources(order)) == order
