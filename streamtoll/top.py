"""``streamtoll top``: the live view in a terminal, refreshing (reads the API's ``/v1/live``).

It reads the API rather than Kafka so that it shows exactly what the web page shows, needs
only a URL and a key on an ops laptop, and opens no connection to the brokers.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["ApiUnreachable", "KeyRefused", "enforcement_table", "render", "run_top"]

_BARS = " ▁▂▃▄▅▆▇█"


def _bytes(n: float) -> str:
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while abs(n) >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{n:.0f} {units[i]}" if i == 0 else f"{n:.2f} {units[i]}"


def _spark(values: list[int]) -> str:
    top = max(values, default=0) or 1
    return "".join(_BARS[round(v / top * (len(_BARS) - 1))] for v in values[-30:])


def _total(x: dict[str, Any], period: str) -> int:
    return int(x[period]["produce"]["bytes"] + x[period]["consume"]["bytes"])


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{seconds:.1f} s"


def _held_to(e: dict[str, Any]) -> str:
    if e["limit"] is None:
        return "—"
    return f"{e['limit']}/s" if e["direction"] == "requests" else _bytes(e["limit"]) + "/s"


def enforcement_table(doc: dict[str, Any]) -> Table:
    """The accounts throttled or blocked now: since when, for how long, why."""
    t = Table(title="throttled and blocked now", expand=True)
    for col in ("account", "kind", "cause", "meter / direction", "since (UTC)", "for", "held to", "requests", "why"):
        t.add_column(col, justify="right" if col in ("for", "held to", "requests") else "left")
    rows = doc.get("enforcement", {}).get("in_force", [])
    for e in rows:
        t.add_row(
            e["account"],
            e["kind"],
            e["cause"],
            e["meter"] or e["direction"],
            e["since"][:19].replace("T", " "),
            _duration(e["seconds"]),
            _held_to(e),
            str(e["requests"]),
            e["reason"],
            style="red" if e["kind"] == "block" else "yellow",
        )
    if not rows:
        t.add_row("no account is throttled or blocked", *[""] * 8, style="dim")
    return t


def render(doc: dict[str, Any]) -> Group:
    """The tables of one ``/v1/live`` document."""
    parts: list[Any] = []
    head = Text(f"streamtoll live · {doc['generated_at']} · last minute {doc['minute']['start'][11:16]} UTC")
    parts.append(head)
    for w in doc["warnings"]:
        parts.append(Text("⚠ " + w, style="bold red"))
    parts.append(enforcement_table(doc))
    ended = doc.get("enforcement", {}).get("ended_last_hour", [])
    if ended:
        parts.append(
            Text(
                f"{len(ended)} throttle(s) or block(s) ended in the last hour; the last: "
                + ", ".join(f"{e['account']} {e['kind']} {_duration(e['seconds'])}" for e in ended[:3]),
                style="dim",
            )
        )
    t = Table(title="accounts", expand=True)
    for col in ("account", "produce B/s", "produce msg/s", "consume B/s", "consume msg/s", "hour", "today", "month"):
        t.add_column(col, justify="left" if col == "account" else "right")
    t.add_column("rated so far", justify="right")
    t.add_column("last 30 min")
    rows = doc["accounts"] + ([doc["unassigned"]] if doc["unassigned"] else [])
    for a in sorted(rows, key=lambda a: -_total(a, "hour_to_date")):
        rated = a["rated_so_far"]
        t.add_row(
            a["account"],
            _bytes(a["rate"]["produce"]["bytes_per_s"]) + "/s",
            f"{a['rate']['produce']['messages_per_s']:.1f}",
            _bytes(a["rate"]["consume"]["bytes_per_s"]) + "/s",
            f"{a['rate']['consume']['messages_per_s']:.1f}",
            _bytes(_total(a, "hour_to_date")),
            _bytes(_total(a, "day_to_date")),
            _bytes(_total(a, "month_to_date")),
            f"{rated['currency']} {rated['total']}" if rated else "—",
            _spark(a["sparkline_bytes_per_minute"]),
            style="yellow" if a["account"] == "unassigned" else None,
        )
    parts.append(t)
    lag = Table(title="metering lag", expand=False)
    for col in ("partition", "records behind", "seconds behind"):
        lag.add_column(col, justify="right")
    for p in doc["lag"]:
        secs = p["seconds_behind"]
        style = "red" if p["records_behind"] and (secs or 0) >= 60 else None
        lag.add_row(
            f"{p['topic']}/{p['partition']}",
            str(p["records_behind"]),
            "?" if secs is None else f"{secs:.0f}",
            style=style,
        )
    dlq = Table(title="DLQ", expand=False)
    for col in ("reason", "last hour", "today"):
        dlq.add_column(col, justify="right")
    for reason in sorted(set(doc["dlq"]["today"]) | set(doc["dlq"]["last_hour"])):
        hour = doc["dlq"]["last_hour"].get(reason, 0)
        dlq.add_row(reason, str(hour), str(doc["dlq"]["today"].get(reason, 0)), style="red" if hour else None)
    parts += [lag, dlq]
    return Group(*parts)


class KeyRefused(Exception):
    """The API refused the key (401/403)."""


class ApiUnreachable(Exception):
    """The API could not be read."""


def _fetch(client: httpx.Client, url: str, key: str) -> dict[str, Any]:
    r = client.get(url.rstrip("/") + "/v1/live", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    if r.status_code in (401, 403):
        raise KeyRefused(f"the API refused the key ({r.status_code}); use an ops or finance key")
    r.raise_for_status()
    doc: dict[str, Any] = r.json()
    return doc


def run_top(url: str, key: str, every: float = 3.0, once: bool = False, fmt: str = "table") -> int:
    """Refresh the tables every ``every`` seconds until interrupted, or print them (or the JSON
    of ``/v1/live`` with ``fmt="json"``) once. Raises :class:`KeyRefused` or :class:`ApiUnreachable`."""
    console = Console()
    with httpx.Client() as client:
        try:
            doc = _fetch(client, url, key)
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"cannot read {url}/v1/live ({exc}); is `streamtoll api` running?") from exc
        if fmt == "json":
            print(json.dumps(doc, indent=1))
            return 0
        if once:
            console.print(render(doc))
            return 0
        with Live(render(doc), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(every)
                try:
                    live.update(render(_fetch(client, url, key)))
                except httpx.HTTPError as exc:
                    live.update(Group(render(doc), Text(f"not updating: {exc}", style="bold red")))
