"""Run an ASGI app with uvicorn in a background thread on a free local port (tests, benches)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from streamtoll.embedded import free_port

__all__ = ["running"]


@contextlib.contextmanager
def running(app: Any, timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yields the base URL."""
    port = free_port()
    # the app reads X-Forwarded-For itself, from the proxies STREAMTOLL_API_TRUSTED_PROXIES names
    # only: uvicorn must not rewrite the client address first (it trusts 127.0.0.1 by default)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=False)
    server = uvicorn.Server(config)
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
