"""`streamtoll up` on embedded defaults: comes up with its URLs, shows live traffic (real clients
through the gateway, which meters them), restarts a child that dies, and Ctrl-C leaves no
process behind (no orphan broker, database, gateway, caps fold, jobs or worker)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from streamtoll.embedded import free_port

pytestmark = pytest.mark.integration


def _processes_in(root: Path) -> dict[int, str]:
    """Processes whose working directory is under ``root`` (children inherit it; the database
    server works in its data directory), with their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == str(root) or cwd.startswith(str(root) + "/"):
            found[int(entry.name)] = cmd
    return found


def test_up_runs_everything_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    bind = f"127.0.0.1:{free_port()}"
    err = open(tmp_path / "up.err", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtoll.cli", "up", "--bind", bind],
        env={**env, "STREAMTOLL_SESSION_TIMEOUT_MS": "3000"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 180
        while not lines or lines[-1] != "Ctrl-C stops everything.":
            line = proc.stdout.readline()
            assert line or proc.poll() is None, (tmp_path / "up.err").read_text()[-3000:]
            lines.append(line.rstrip("\n"))
            assert time.monotonic() < deadline, "streamtoll up did not come up in 180 s"
        out = "\n".join(lines)
        key = re.search(r"/live#key=(stk_\S+)", out)
        assert key, out
        base = f"http://{bind}"
        assert httpx.get(base + "/healthz", timeout=10).json()["ready"] is True
        page = httpx.get(base + "/live", timeout=10)
        assert page.status_code == 200 and "streamtoll" in page.text
        auth = {"Authorization": f"Bearer {key.group(1)}"}
        # the partner portal, with the printed demo partner key (sent once, in a form)
        portal = re.search(r"^  portal +(\S+)", out, re.M)
        partner = re.search(r"demo partner key \(acme\): (stk_\S+)", out)
        assert portal and partner, out
        with httpx.Client(timeout=10) as browser:
            form = browser.get(portal.group(1) + "/sign-in")
            nonce = re.findall(r'name="csrf" value="([^"]+)"', form.text)[0]
            signed = browser.post(portal.group(1) + "/sign-in", data={"key": partner.group(1), "csrf": nonce})
            assert signed.status_code == 303 and signed.headers["location"] == "/portal"
            creds = browser.get(portal.group(1) + "/credentials")
            # its client configs name the gateway up started
            assert creds.status_code == 200 and "PORTAL_GATEWAY_BOOTSTRAP" not in creds.text

        def acme_bytes() -> int:
            doc = httpx.get(base + "/v1/live", headers=auth, timeout=10).json()
            acme = [a for a in doc["accounts"] if a["account"] == "acme"]
            return sum(acme[0]["hour_to_date"][d]["bytes"] for d in ("produce", "consume")) if acme else 0

        deadline = time.monotonic() + 60
        while acme_bytes() == 0:
            assert time.monotonic() < deadline, "no live traffic shown within 60 s"
            time.sleep(1)

        # the traffic is real clients through the gateway: it meters their produces and fetches
        gateway = re.search(r"^  gateway +(\S+)", out, re.M)
        assert gateway, out
        gateway_metrics = re.search(r"^  metrics .* (http://\S+/metrics)$", out, re.M)
        assert gateway_metrics, out

        def metered(direction: str) -> float:
            text = httpx.get(gateway_metrics.group(1), timeout=10).text
            line = f'streamtoll_gateway_metered_records_total{{direction="{direction}"}} '
            return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))

        deadline = time.monotonic() + 60
        while metered("produce") == 0 or metered("fetch") == 0:
            assert time.monotonic() < deadline, "the gateway metered no produce and fetch within 60 s"
            time.sleep(1)
        # and a client of our own reaches the broker through the printed address
        delivered: list[object] = []
        producer = Producer({"bootstrap.servers": gateway.group(1), "client.id": "acme-probe"})
        producer.produce("demo.orders", b"probe", on_delivery=lambda err, msg: delivered.append(err))
        producer.flush(15)
        assert delivered == [None]

        # a child that dies is restarted by the supervisor, and metering goes on
        worker = [pid for pid, cmd in _processes_in(tmp_path).items() if "streamtoll.cli worker" in cmd]
        assert len(worker) == 1
        os.kill(worker[0], signal.SIGKILL)
        before = acme_bytes()
        deadline = time.monotonic() + 90
        while acme_bytes() <= before:
            assert time.monotonic() < deadline, "metering did not resume after the worker was killed"
            time.sleep(1)
        # the supervisor notices the death on its next watch round: the bytes of a transaction the
        # worker committed just before the kill can reach the live view first
        deadline = time.monotonic() + 30
        while "worker exited with code -9; restarting" not in (tmp_path / "up.err").read_text():
            assert time.monotonic() < deadline, "the supervisor never reported the worker's restart"
            time.sleep(0.5)

        # the monthly caps fold runs beside them (and has not been restarting)
        assert re.search(r"^  caps +streamtoll caps", out, re.M), out
        caps = [pid for pid, cmd in _processes_in(tmp_path).items() if "streamtoll.cli caps" in cmd]
        assert len(caps) == 1, _processes_in(tmp_path)
        assert "caps exited" not in (tmp_path / "up.err").read_text()
        # and the periodic billing jobs (thresholds check, alerts check, webhooks send) in a child of their own
        assert re.search(
            r"^  jobs +streamtoll jobs every 30 s: thresholds check, alerts check, webhooks send", out, re.M
        ), out
        jobs = [pid for pid, cmd in _processes_in(tmp_path).items() if "streamtoll.cli jobs" in cmd]
        assert len(jobs) == 1, _processes_in(tmp_path)
        jobs_log = tmp_path / ".streamtoll" / "logs" / "jobs.log"
        assert "running thresholds check, alerts check, webhooks send every 30 s" in jobs_log.read_text()
        assert "jobs exited" not in (tmp_path / "up.err").read_text()
        assert _processes_in(tmp_path), "the children should be running now"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, (tmp_path / "up.err").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    deadline = time.monotonic() + 10
    while (left := _processes_in(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"left running after Ctrl-C: {left}"
