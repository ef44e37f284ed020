"""A small HTTP server for a process without an API of its own (worker, sink): Prometheus
``/metrics``, a ``/healthz`` readiness and a ``/healthz/live`` liveness answer.

``STREAMTOLL_METRICS_BIND`` (or ``--metrics-bind``) starts it. ``/healthz`` answers 200 with a
JSON body while the process's ``health()`` says it can do its job, 503 with the same body saying
what is wrong otherwise (e.g. the sink while its database is unreachable). ``/healthz/live``
answers 200 while its ``alive()`` says the process's loop turns — whether or not Kafka or the
database answer, since restarting the process cures a stuck loop, not an outage — and 503
otherwise (the orchestrator restarts it). ``/metrics`` also
has the process's own metrics (``process_resident_memory_bytes``, ``process_cpu_seconds_total``,
open file descriptors …), like the API's.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import Collector

__all__ = ["Health", "serve_metrics"]

Health = Callable[[], tuple[bool, dict[str, Any]]]


@contextlib.contextmanager
def serve_metrics(
    collector: Collector, bind: str | None, health: Health | None = None, alive: Health | None = None
) -> Iterator[int | None]:
    """Serve ``/metrics``, ``/healthz`` and ``/healthz/live`` in a thread while the block runs;
    yields the port."""
    if not bind:
        yield None
        return
    host, _, port = bind.rpartition(":")
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path in ("/healthz", "/healthz/live"):
            check, word = (health, "ready") if path == "/healthz" else (alive, "live")
            ok, body = check() if check else (True, {})
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps({word: ok, **body}).encode()]
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(host or "0.0.0.0", int(port), app, ThreadingWSGIServer, handler_class=_SilentHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    try:
        yield int(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
