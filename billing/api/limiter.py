"""Who is asking (the client address, through trusted proxies only) and how often they failed.

Failed authentications are limited per client address. Behind an ingress or load balancer every
request arrives from the proxy's address, so all partners would share one budget: with
``STREAMTOLL_API_TRUSTED_PROXIES`` set, ``X-Forwarded-For`` is read — but only when the TCP peer
is one of those proxies, and then the right-most address that is not itself a trusted proxy is
the client (anything to its left was written by the client and may be forged). From any other
peer the header changes nothing.

The limiter keeps at most ``max_addresses`` addresses, dropping the one idle longest when a new
one comes (a flood of distinct addresses cannot grow memory; the cost is that such a flood can
make the limiter forget an address early). IPv6 clients are counted per /64, the block one
host usually holds.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence

__all__ = ["AuthLimiter", "Network", "client_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Sequence[Network]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in trusted)


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The address to count a request against: ``peer`` (the TCP peer), unless it is a trusted
    proxy — then the right-most ``X-Forwarded-For`` entry (all header lines, in order) that is not
    a trusted proxy, or the left-most one if all are. An entry that is not an address ends the
    walk at the proxy that passed it on."""
    if peer is None:
        return "?"
    found = _parse(peer)
    if found is None or not trusted or not _trusted(found, trusted):
        return peer
    client = found
    for line in reversed(list(forwarded_for)):
        for entry in reversed(line.split(",")):
            addr = _parse(entry)
            if addr is None:
                return str(client)
            client = addr
            if not _trusted(addr, trusted):
                return str(client)
    return str(client)


def _bucket(address: str) -> str:
    """IPv6 addresses count per /64; anything else as it is."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else addr)


class AuthLimiter:
    """At most ``limit`` failed authentications per client address per ``window`` seconds,
    remembering at most ``max_addresses`` addresses (the longest idle one is forgotten first).
    Thread-safe: the API's dependencies run in a thread pool."""

    def __init__(
        self,
        limit: int = 20,
        window: float = 60.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self.max_addresses = limit, window, max_addresses
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, who: str) -> int:
        """0 when ``who`` may try; else whole seconds until its oldest counted failure expires."""
        key = _bucket(who)
        now = self.clock()
        with self._lock:
            q = self._failures.get(key)
            if q is None:
                return 0
            while q and now - q[0] > self.window:
                q.popleft()
            if not q:
                del self._failures[key]
                return 0
            if len(q) < self.limit:
                return 0
            return max(1, math.ceil(self.window - (now - q[0])))

    def failed(self, who: str) -> None:
        key = _bucket(who)
        now = self.clock()
        with self._lock:
            q = self._failures.get(key)
            if q is None:
                q = self._failures[key] = deque(maxlen=self.limit)
                while len(self._failures) > self.max_addresses:
                    self._failures.popitem(last=False)
            else:
                self._failures.move_to_end(key)
            q.append(now)
