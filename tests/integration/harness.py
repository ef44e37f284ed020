"""Test helpers: ``streamtoll worker`` as a real child process (traffic lives in streamtoll.traffic)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from streamtoll.traffic import Traffic, committed, produce, read_all, wait_caught_up, window_totals

__all__ = ["Traffic", "Worker", "committed", "produce", "read_all", "wait_caught_up", "window_totals"]


class Worker:
    """``streamtoll worker`` as a real child process."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamtoll.cli", "worker"],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode
