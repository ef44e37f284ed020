"""Gateway settings, read from the environment (prefix ``STREAMTOLL_GATEWAY_``) and validated at
once: every problem is reported together, each naming its setting.

The audit side (the cluster and topic the events go to) is metering's: ``KAFKA_BOOTSTRAP`` and
its security settings, ``TOPIC_PROXY_AUDIT`` — the topic the worker reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.errors import GatewaySettingsError
from gateway.security import ListenerTLS, UpstreamSecurity, parse_security
from metering.settings import parse_duration

__all__ = ["GatewaySettings"]

PREFIX = "STREAMTOLL_"
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_WILDCARD = {"0.0.0.0", "::", "[::]"}


def _hostport(text: str) -> tuple[str, int] | None:
    m = _HOSTPORT.match(text.strip())
    if not m or not 0 < int(m.group(2)) < 65536:
        return None
    return m.group(1).strip("[]"), int(m.group(2))


@dataclass(frozen=True)
class GatewaySettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 19092
    broker_ports: tuple[int, ...] = ()  # empty: the ports after listen_port, by broker order
    advertised_host: str = "127.0.0.1"
    upstream_bootstrap: str | None = None  # None: KAFKA_BOOTSTRAP
    virtual_cluster: str = "default"
    max_request_bytes: int = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes default
    journal_dir: str = ".streamtoll/gateway-journal"
    journal_max_bytes: int = 1 << 30
    journal_full: str = "refuse"  # or "drop"
    journal_fsync: float | None = 1.0  # seconds between background fsyncs; None: before each Produce response
    # TLS on the client listeners, plaintext off loopback, upstream TLS/SASL (gateway.security)
    tls: ListenerTLS | None = None
    allow_plaintext: bool = False
    upstream_security: UpstreamSecurity = field(default_factory=UpstreamSecurity)
    auth: str = "passthrough"  # or "streamtoll": the gateway authenticates clients itself (gateway.authn)
    instance_id: str | None = None  # names this gateway in its episodes (None: <host name>:<listen port>)

    def instance(self) -> str:
        """This gateway's name in the throttle and block episodes it publishes (gateway.episodes)."""
        import socket

        return self.instance_id or f"{socket.gethostname()}:{self.listen_port}"

    def broker_port(self, index: int) -> int | None:
        """The gateway port of the ``index``-th upstream broker (by node id), if there is one."""
        if not self.broker_ports:
            port = self.listen_port + 1 + index
            return port if port < 65536 else None
        return self.broker_ports[index] if index < len(self.broker_ports) else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        problems: list[str] = []
        values: dict[str, object] = {}

        def get(name: str) -> str | None:
            v = env.get(PREFIX + name)
            return v.strip() if v not in (None, "") else None

        listen = get("GATEWAY_LISTEN")
        host = cls.listen_host
        if listen is not None:
            if (hp := _hostport(listen)) is None:
                problems.append(f"{PREFIX}GATEWAY_LISTEN={listen!r} must be HOST:PORT, e.g. 127.0.0.1:19092")
            else:
                host, values["listen_port"] = hp
                values["listen_host"] = host
        if (v := get("GATEWAY_BROKER_PORTS")) is not None:
            parts = [p.strip() for p in v.split(",")]
            if not all(p.isdigit() and 0 < int(p) < 65536 for p in parts):
                problems.append(
                    f"{PREFIX}GATEWAY_BROKER_PORTS={v!r} must be a comma list of TCP ports, e.g. 19093,19094"
                )
            else:
                ports = tuple(int(p) for p in parts)
                if len(set(ports)) != len(ports) or values.get("listen_port", cls.listen_port) in ports:
                    problems.append(
                        f"{PREFIX}GATEWAY_BROKER_PORTS={v!r} must name each port once and not the GATEWAY_LISTEN port"
                    )
                values["broker_ports"] = ports
        advertised = get("GATEWAY_ADVERTISED_HOST")
        if advertised is not None:
            if not re.match(r"^[A-Za-z0-9_.:-]+$", advertised) or advertised in _WILDCARD:
                problems.append(
                    f"{PREFIX}GATEWAY_ADVERTISED_HOST={advertised!r} must be a host name or address clients can reach"
                )
            values["advertised_host"] = advertised
        elif host in _WILDCARD:
            problems.append(
                f"{PREFIX}GATEWAY_ADVERTISED_HOST must be set when {PREFIX}GATEWAY_LISTEN listens on every "
                f"address ({host}): clients need a host name they can reach"
            )
        else:
            values["advertised_host"] = host
        if (v := get("GATEWAY_UPSTREAM_BOOTSTRAP")) is not None:
            if all(_hostport(p) for p in v.split(",")):
                values["upstream_bootstrap"] = v
            else:
                problems.append(
                    f"{PREFIX}GATEWAY_UPSTREAM_BOOTSTRAP={v!r} must be a comma list of HOST:PORT, e.g. kafka-0:9092"
                )
        if (v := get("GATEWAY_VIRTUAL_CLUSTER")) is not None:
            if len(v) <= 255 and v.isprintable():
                values["virtual_cluster"] = v
            else:
                problems.append(f"{PREFIX}GATEWAY_VIRTUAL_CLUSTER must be printable and at most 255 characters")
        if (v := get("GATEWAY_MAX_REQUEST_BYTES")) is not None:
            if v.isdigit() and 1024 <= int(v) < 2**31:
                values["max_request_bytes"] = int(v)
            else:
                problems.append(f"{PREFIX}GATEWAY_MAX_REQUEST_BYTES={v!r} must be an integer from 1024 to 2147483647")
        if (v := get("GATEWAY_JOURNAL_DIR")) is not None:
            values["journal_dir"] = v
        if (v := get("GATEWAY_JOURNAL_MAX_BYTES")) is not None:
            if v.isdigit() and int(v) >= 65536:
                values["journal_max_bytes"] = int(v)
            else:
                problems.append(f"{PREFIX}GATEWAY_JOURNAL_MAX_BYTES={v!r} must be an integer of at least 65536")
        if (v := get("GATEWAY_JOURNAL_FULL")) is not None:
            if v.lower() in ("refuse", "drop"):
                values["journal_full"] = v.lower()
            else:
                problems.append(f"{PREFIX}GATEWAY_JOURNAL_FULL={v!r} must be refuse or drop")
        if (v := get("GATEWAY_JOURNAL_FSYNC")) is not None:
            if v.lower() == "always":
                values["journal_fsync"] = None
            else:
                try:
                    seconds = parse_duration(v)
                except ValueError:
                    seconds = -1.0
                if 0 < seconds <= 3600:
                    values["journal_fsync"] = seconds
                else:
                    problems.append(
                        f"{PREFIX}GATEWAY_JOURNAL_FSYNC={v!r} must be always or a duration from 1ms to 1h, "
                        "e.g. 1s or 200ms"
                    )
        if (v := get("GATEWAY_AUTH")) is not None:
            if v.lower() in ("passthrough", "streamtoll"):
                values["auth"] = v.lower()
            else:
                problems.append(f"{PREFIX}GATEWAY_AUTH={v!r} must be passthrough or streamtoll")
        if (v := get("GATEWAY_INSTANCE_ID")) is not None:
            if len(v) <= 200 and v.isprintable() and "/" not in v:
                values["instance_id"] = v
            else:
                problems.append(
                    f"{PREFIX}GATEWAY_INSTANCE_ID={v!r} must be printable, at most 200 characters and without '/'"
                )
        upstream_set = get("GATEWAY_UPSTREAM_BOOTSTRAP") is not None
        security, security_problems = parse_security(get, host, upstream_set, PREFIX)
        values.update(security)
        problems += security_problems
        if problems:
            raise GatewaySettingsError(problems)
        return cls(**values)  # type: ignore[arg-type]

    def upstream(self, kafka_bootstrap: str | None) -> list[tuple[str, int]]:
        """The upstream bootstrap addresses (``KAFKA_BOOTSTRAP`` when unset)."""
        text = self.upstream_bootstrap or kafka_bootstrap or ""
        return [hp for p in text.split(",") if (hp := _hostport(p))]
