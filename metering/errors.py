"""Errors raised by metering.

Tree::

    MeteringError
    ├── SettingsError        settings are invalid (all problems listed at once)
    ├── TopicError           an existing topic's settings break a guarantee (all listed at once)
    └── EngineError          the hot path cannot go on (broker gone, transaction fenced)
"""

from __future__ import annotations

__all__ = ["EngineError", "MeteringError", "SettingsError", "TopicError"]


class MeteringError(Exception):
    """Base of every error metering raises on purpose."""


class SettingsError(MeteringError):
    """One or more settings are invalid; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid settings: " + "; ".join(problems))


class EngineError(MeteringError):
    """The metering engine cannot go on; the worker restarts it from committed state."""


class TopicError(MeteringError):
    """Existing topics have settings that break what metering guarantees; ``problems`` lists each.
    The worker does not start: an operator must change the topic (or the setting named)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("topic settings break metering's guarantees:\n  " + "\n  ".join(problems))
