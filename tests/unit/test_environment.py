"""The environment is checked before anything starts: a misspelt setting never falls back."""

from __future__ import annotations

import pytest

from streamtoll.environment import embedded_mode, unknown_settings
from streamtoll.settings_catalog import SETTINGS


def test_every_catalogued_setting_and_the_pass_through_are_known() -> None:
    env = {f"STREAMTOLL_{s.name}": "x" for s in SETTINGS if not s.name.endswith("<NAME>")}
    env["STREAMTOLL_KAFKA_X_CLIENT_RACK"] = "eu-1a"
    env["PATH"] = "/usr/bin"  # not ours: never judged
    assert unknown_settings(env) == []


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("KAFKA_BOOTSRAP", "KAFKA_BOOTSTRAP"),
        ("DATABASE_URI", "DATABASE_URL"),
        ("MAX_LATENES", "MAX_LATENESS"),
        ("TOPIC_PARTITION", "TOPIC_PARTITIONS"),
        ("EMBEDED", "EMBEDDED"),
    ],
)
def test_a_misspelt_setting_names_the_closest_one(name: str, closest: str) -> None:
    assert unknown_settings({f"STREAMTOLL_{name}": "x"}) == [
        f"STREAMTOLL_{name} is not a streamtoll setting; did you mean STREAMTOLL_{closest}?"
    ]


def test_every_unknown_setting_is_reported_at_once() -> None:
    env = {"STREAMTOLL_NOTHING_LIKE_IT": "1", "STREAMTOLL_KAFKA_X_": "1", "STREAMTOLL_SINK_GRUP": "g"}
    problems = unknown_settings(env)
    assert len(problems) == 3
    assert "STREAMTOLL_NOTHING_LIKE_IT is not a streamtoll setting; see `streamtoll settings`" in problems[1]
    assert problems[2].endswith("did you mean STREAMTOLL_SINK_GROUP?")


def test_embedded_mode() -> None:
    assert embedded_mode({}) == "auto"
    assert embedded_mode({"STREAMTOLL_EMBEDDED": "NEVER"}) == "never"
    with pytest.raises(ValueError, match="STREAMTOLL_EMBEDDED='sometimes' must be auto or never"):
        embedded_mode({"STREAMTOLL_EMBEDDED": "sometimes"})
