"""A minimal W3C WebDriver client for the real headless Chromium (``chromedriver``), over HTTP.

Six calls are all the page tests need; speaking the protocol directly avoids a browser-driver
package that would try to download drivers on a machine with no internet.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx

from streamtoll.embedded import free_port

__all__ = ["Browser", "chromium"]

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(timeout=60)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self.http.request(method, self.base + path, json=body)
        doc = r.json()
        if r.status_code != 200:
            raise RuntimeError(f"WebDriver {method} {path}: {doc.get('value', doc)}")
        return doc.get("value")

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait(self, script: str, timeout: float = 60.0, what: str = "") -> Any:
        """Run ``script`` until it returns something truthy; that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.js(script)
            if got:
                return got
            time.sleep(0.25)
        raise AssertionError(f"the page never showed {what or script!r} in {timeout:.0f} s")

    def resize(self, width: int, height: int) -> None:
        self._call("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", "/screenshot"))


@contextlib.contextmanager
def chromium(width: int = 1600, height: int = 1000) -> Iterator[Browser]:
    """A headless Chromium session; fails clearly if the browser is not installed."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        raise AssertionError("chromium and chromedriver are needed: `make test` installs them (apt)")
    port = free_port()
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(root + "/status", timeout=1).json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("chromedriver did not start")
            time.sleep(0.1)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": binary, "args": [*ARGS, f"--window-size={width},{height}"]},
                }
            }
        }
        r = httpx.post(root + "/session", json=caps, timeout=60)
        session = r.json()["value"].get("sessionId")
        if not session:
            raise AssertionError(f"could not start Chromium: {r.json()['value']}")
        browser = Browser(f"{root}/session/{session}")
        try:
            yield browser
        finally:
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(f"{root}/session/{session}", timeout=30)
            browser.http.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
