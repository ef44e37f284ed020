"""``streamtoll sink`` that dies right after its N-th database commit, before the Kafka commit
(the narrowest window there is), exiting 137 like a process killed with -9.

Test-only (``test_faults``): ``python tests/integration/failpoint_sink.py N [sink options]``.
The production sink has no failpoint; this installs one through its ``after_db_commit`` hook.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import billing.adapters.sink
from streamtoll.cli import main

_UsageSink = billing.adapters.sink.UsageSink


def dying_after(n: int) -> Callable[[], None]:
    """A hook that exits the process at its ``n``-th call."""
    calls = 0

    def after_db_commit() -> None:
        nonlocal calls
        calls += 1
        if calls >= n:
            logging.getLogger("streamtoll.sink").error(
                "failpoint sink.after_db_commit: exiting before the Kafka commit"
            )
            logging.shutdown()
            os._exit(137)

    return after_db_commit


class FailpointSink(_UsageSink):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs, after_db_commit=dying_after(int(sys.argv[1])))


if __name__ == "__main__":
    billing.adapters.sink.UsageSink = FailpointSink  # type: ignore[misc]
    sys.exit(main(["sink", *sys.argv[2:]]))
