"""Serving a process's Prometheus collectors at ``http://HOST:PORT/metrics`` (worker, sink).

The API serves its own ``/metrics`` on its port; the worker and the sink have no HTTP server of
their own, so ``STREAMTOLL_METRICS_BIND`` (or ``--metrics-bind``) starts this small one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

__all__ = ["serve_metrics"]


@contextlib.contextmanager
def serve_metrics(collector: Collector, bind: str | None) -> Iterator[int | None]:
    """Serve ``collector`` in a thread while the block runs; yields the bound port (None: off)."""
    if not bind:
        yield None
        return
    host, _, port = bind.rpartition(":")
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_http_server(int(port), host or "0.0.0.0", registry)
    try:
        yield int(server.server_port)
    finally:
        server.shutdown()
        thread.join(5)
