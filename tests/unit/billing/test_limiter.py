"""The failed-auth limiter: bounded memory, per client address, proxies believed only when trusted."""

from __future__ import annotations

import ipaddress
import tracemalloc

from billing.api.limiter import AuthLimiter, client_address

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_flood_of_distinct_addresses_stays_under_the_cap() -> None:
    # (a cap of 1,000 and ten times as many addresses: the same bound as the default 10,000 and
    # 100,000, at a tenth of the time tracemalloc costs)
    limiter = AuthLimiter(limit=3, max_addresses=1_000)
    tracemalloc.start()
    try:
        for i in range(10_000):
            limiter.failed(str(ipaddress.IPv4Address(0x0B000000 + i)))
            if i == 2_000:
                at_cap, _ = tracemalloc.get_traced_memory()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(limiter) == 1_000
    assert after < at_cap * 1.1  # no growth once full
    # an address that only asks (and succeeds) is never remembered
    for i in range(1000):
        assert limiter.retry_after(f"192.168.{i // 256}.{i % 256}") == 0
    assert len(limiter) == 1_000


def test_the_longest_idle_address_is_forgotten_first() -> None:
    clock = Clock()
    limiter = AuthLimiter(limit=2, max_addresses=3, clock=clock)
    for who in ("1.1.1.1", "2.2.2.2", "3.3.3.3"):
        limiter.failed(who)
    limiter.failed("1.1.1.1")  # 1.1.1.1 failed again: now it is the most recent
    assert limiter.retry_after("1.1.1.1") > 0
    limiter.failed("4.4.4.4")  # over the cap: 2.2.2.2 (idle longest) goes
    assert len(limiter) == 3
    limiter.failed("2.2.2.2")
    assert limiter.retry_after("2.2.2.2") == 0  # counted afresh: one failure
    assert limiter.retry_after("1.1.1.1") > 0


def test_blocked_for_the_window_with_a_retry_after() -> None:
    clock = Clock()
    limiter = AuthLimiter(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("5.5.5.5") == 0
        limiter.failed("5.5.5.5")
        clock.t += 1
    assert limiter.retry_after("5.5.5.5") == 57  # the first failure (3 s ago) expires 60 s after it
    assert limiter.retry_after("6.6.6.6") == 0
    clock.t += 57.5
    assert limiter.retry_after("5.5.5.5") == 0
    assert len(limiter) == 1
    clock.t += 10
    assert limiter.retry_after("5.5.5.5") == 0
    assert len(limiter) == 0  # all expired: forgotten


def test_ipv6_clients_count_per_64() -> None:
    limiter = AuthLimiter(limit=2)
    limiter.failed("2001:db8:1:2::1")
    limiter.failed("2001:db8:1:2:ffff::9")
    assert limiter.retry_after("2001:db8:1:2::77") > 0
    assert limiter.retry_after("2001:db8:1:3::1") == 0


def test_forwarded_for_is_read_only_from_a_trusted_peer() -> None:
    # no trusted proxies (the default): the peer, whatever the header says
    assert client_address("203.0.113.9", ["1.2.3.4"], ()) == "203.0.113.9"
    # an untrusted peer forging the header changes nothing
    assert client_address("203.0.113.9", ["10.0.0.1, 1.2.3.4"], PROXIES) == "203.0.113.9"
    # through the ingress: the right-most address that is not a trusted proxy
    assert client_address("10.1.1.1", ["198.51.100.7"], PROXIES) == "198.51.100.7"
    assert client_address("10.1.1.1", ["6.6.6.6, 198.51.100.7, 10.2.2.2"], PROXIES) == "198.51.100.7"
    # a client forging entries to the left of its own address is still itself
    assert client_address("10.1.1.1", ["10.9.9.9", "198.51.100.7"], PROXIES) == "198.51.100.7"
    # several header lines are one list, in order
    assert client_address("10.1.1.1", ["6.6.6.6", "198.51.100.8, 10.3.3.3"], PROXIES) == "198.51.100.8"
    # nothing forwarded, or only proxies: the furthest one known
    assert client_address("10.1.1.1", [], PROXIES) == "10.1.1.1"
    assert client_address("10.1.1.1", ["10.4.4.4"], PROXIES) == "10.4.4.4"
    # garbage stops the walk at the proxy that passed it on
    assert client_address("10.1.1.1", ["nonsense, 10.5.5.5"], PROXIES) == "10.5.5.5"
    # IPv6, ports, v4-mapped peers
    assert client_address("fd00::1", ["[2001:db8::5]:4711"], PROXIES) == "2001:db8::5"
    assert client_address("::ffff:10.1.1.1", ["198.51.100.9:1234"], PROXIES) == "198.51.100.9"
    assert client_address(None, ["1.2.3.4"], PROXIES) == "?"
