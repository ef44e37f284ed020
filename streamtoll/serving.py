"""Run an ASGI app with uvicorn: the options every server takes (``SERVER_OPTIONS``), and in a
background thread on a free local port (``running``: tests, benches)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from streamtoll.embedded import free_port

__all__ = ["SERVER_OPTIONS", "running"]

# How every streamtoll HTTP server runs uvicorn (``streamtoll api`` and ``running``, so the tests
# serve as production does). proxy_headers off: uvicorn would take X-Forwarded-For from any local
# peer (it trusts 127.0.0.1 by default) and rewrite the client address before the app sees it; the
# app reads the header itself, from the proxies STREAMTOLL_API_TRUSTED_PROXIES names only.
SERVER_OPTIONS: dict[str, Any] = {"proxy_headers": False}


@contextlib.contextmanager
def running(app: Any, timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **SERVER_OPTIONS))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the HTTP server did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
