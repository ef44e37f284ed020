"""The process environment, checked before anything starts: no misspelt setting falls back
silently, and no embedded part starts where production said it must not.

* Every ``STREAMTOLL_*`` variable must be a setting of the catalog (``settings_catalog``; the
  ``KAFKA_X_<NAME>`` pass-through included). An unknown one is an error naming the closest
  valid setting: ``STREAMTOLL_KAFKA_BOOTSRAP`` would otherwise leave the bootstrap unset and
  start an embedded dev broker in its place.
* ``STREAMTOLL_EMBEDDED`` decides what an unset ``KAFKA_BOOTSTRAP`` / ``DATABASE_URL`` means:
  ``auto`` (the default: start the embedded dev part, and say so in the log) or ``never`` (set by
  the images and manifests in ``deploy/``: a start-up error).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from streamtoll.settings_catalog import SETTINGS

__all__ = ["EMBEDDED_MODES", "embedded_mode", "unknown_settings"]

PREFIX = "STREAMTOLL_"
PASS_THROUGH = "KAFKA_X_"  # any librdkafka setting
EMBEDDED_MODES = ("auto", "never")
_NAMES = sorted(s.name for s in SETTINGS if not s.name.endswith("<NAME>"))


def unknown_settings(env: Mapping[str, str]) -> list[str]:
    """One sentence per ``STREAMTOLL_*`` variable that is not a setting, naming the closest one."""
    problems = []
    for var in sorted(env):
        if not var.startswith(PREFIX):
            continue
        name = var[len(PREFIX) :]
        if name in _NAMES or (name.startswith(PASS_THROUGH) and len(name) > len(PASS_THROUGH)):
            continue
        close = difflib.get_close_matches(name, _NAMES, n=1, cutoff=0.6)
        hint = f"; did you mean {PREFIX}{close[0]}?" if close else "; see `streamtoll settings` for the list"
        problems.append(f"{var} is not a streamtoll setting{hint}")
    return problems


def embedded_mode(env: Mapping[str, str]) -> str:
    """``auto`` or ``never`` (``ValueError`` naming the setting for anything else)."""
    mode = (env.get(PREFIX + "EMBEDDED") or "auto").strip().lower()
    if mode not in EMBEDDED_MODES:
        raise ValueError(f"{PREFIX}EMBEDDED={env[PREFIX + 'EMBEDDED']!r} must be auto or never")
    return mode
