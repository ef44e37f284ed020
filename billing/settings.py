"""Billing settings (prefix ``STREAMTOLL_``), validated at once like metering's.

Kafka client settings are not here: the composition root passes billing a ready client
configuration (billing reads nothing of metering but its contracts).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from billing.domain.sources import DEFAULT_SOURCES, parse_sources
from billing.errors import BillingSettingsError

__all__ = ["DEFAULT_LIMITS", "BillingSettings", "Limit", "SmtpSettings", "parse_limit"]

PREFIX = "STREAMTOLL_"


# --- the per-key limits on the API's expensive endpoints (billing.api.quota) ---


@dataclass(frozen=True)
class Limit:
    """``rate`` requests per second sustained, ``burst`` in a row after a quiet spell, at most
    ``concurrent`` running at once."""

    rate: float
    burst: int
    concurrent: int


# far above what a dashboard, a monthly download script or the live page asks for, far below
# what keeps the API's worker threads busy (a statement PDF renders in ~0.5 s)
DEFAULT_LIMITS: dict[str, Limit] = {
    "partner": Limit(rate=5.0, burst=30, concurrent=4),
    "finance": Limit(rate=20.0, burst=100, concurrent=8),
    "ops": Limit(rate=5.0, burst=30, concurrent=4),
}

_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)/([smh])")
_INT = re.compile(r"[0-9]+")


def parse_limit(text: str, default: Limit) -> Limit | None:
    """``rate=N/s|m|h,burst=N,concurrent=N`` (any of the three, each once; the others keep
    ``default``'s) or ``off`` (None: no limit). Raises ValueError with one sentence."""
    text = text.strip()
    if text.lower() == "off":
        return None
    seen: dict[str, str] = {}
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        name, value = name.strip().lower(), value.strip()
        if not eq or name not in ("rate", "burst", "concurrent"):
            raise ValueError(f"{part.strip()!r} is not rate=N/s, burst=N or concurrent=N (or the whole value off)")
        if name in seen:
            raise ValueError(f"{name} is given twice")
        seen[name] = value
    limit = default
    if "rate" in seen:
        m = _RATE.fullmatch(seen["rate"])
        rate = float(m.group(1)) / _PER[m.group(2)] if m else 0.0
        if rate <= 0:
            raise ValueError(f"rate={seen['rate']!r} must be a positive number per s, m or h (e.g. rate=5/s)")
        limit = replace(limit, rate=rate)
    for name in ("burst", "concurrent"):
        if name in seen:
            value = seen[name]
            if not _INT.fullmatch(value) or not 1 <= int(value) <= 100_000:
                raise ValueError(f"{name}={value!r} must be a whole number from 1 to 100000")
            limit = replace(limit, **{name: int(value)})
    return limit


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    tls: str = "none"  # none | starttls | ssl
    username: str | None = None
    password: str | None = None
    sender: str = "billing@streamtoll.invalid"
    sender_name: str = "streamtoll billing"

    @classmethod
    def from_env(cls, env: Mapping[str, str], problems: list[str]) -> SmtpSettings:
        values: dict[str, object] = {}
        for name in ("HOST", "USERNAME", "PASSWORD", "SENDER", "SENDER_NAME"):
            if value := env.get(f"{PREFIX}SMTP_{name}"):
                values[name.lower()] = value
        if port := env.get(PREFIX + "SMTP_PORT"):
            if port.isdigit() and 0 < int(port) < 65536:
                values["port"] = int(port)
            else:
                problems.append(f"{PREFIX}SMTP_PORT={port!r} is not a port number")
        if tls := env.get(PREFIX + "SMTP_TLS"):
            if tls in ("none", "starttls", "ssl"):
                values["tls"] = tls
            else:
                problems.append(f"{PREFIX}SMTP_TLS must be none, starttls or ssl")
        return cls(**values)  # type: ignore[arg-type]


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_BOOTSTRAP = re.compile(r"[A-Za-z0-9._\[\]:-]+:[0-9]{1,5}(,[A-Za-z0-9._\[\]:-]+:[0-9]{1,5})*")


def _portal_from_env(env: Mapping[str, str], values: dict[str, object], problems: list[str]) -> None:
    """The ``PORTAL_*`` settings, each checked (a problem is one sentence in ``problems``)."""
    if secret := env.get(PREFIX + "PORTAL_SECRET"):
        if len(secret) < 32:
            problems.append(f"{PREFIX}PORTAL_SECRET must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        values["portal_secret"] = secret.encode()
    if https := env.get(PREFIX + "PORTAL_HTTPS"):
        if https.lower() not in ("true", "false"):
            problems.append(f"{PREFIX}PORTAL_HTTPS={https!r} must be true or false")
        values["portal_https"] = https.lower() == "true"
    if hours := env.get(PREFIX + "PORTAL_SESSION_HOURS"):
        try:
            length = float(hours)
        except ValueError:
            length = -1.0
        if 0.05 <= length <= 168:
            values["portal_session_hours"] = length
        else:
            problems.append(f"{PREFIX}PORTAL_SESSION_HOURS={hours!r} must be a number of hours from 0.05 to 168")
    bootstrap = env.get(PREFIX + "PORTAL_GATEWAY_BOOTSTRAP", "").strip()
    if bootstrap:
        if _BOOTSTRAP.fullmatch(bootstrap):
            values["portal_gateway_bootstrap"] = bootstrap
        else:
            problems.append(f"{PREFIX}PORTAL_GATEWAY_BOOTSTRAP={bootstrap!r} must be host:port[,host:port…]")
    protocol = env.get(PREFIX + "PORTAL_GATEWAY_SECURITY_PROTOCOL", "").strip().upper()
    if protocol:
        if protocol in ("SASL_SSL", "SASL_PLAINTEXT"):
            values["portal_gateway_security_protocol"] = protocol
        else:
            problems.append(f"{PREFIX}PORTAL_GATEWAY_SECURITY_PROTOCOL={protocol!r} must be SASL_SSL or SASL_PLAINTEXT")


@dataclass(frozen=True)
class BillingSettings:
    database_url: str | None = None
    invoice_number_prefix: str = "INV"
    sink_group: str = "streamtoll-sink"
    issuer_name: str = "streamtoll"
    issuer_address: tuple[str, ...] = ("Set STREAMTOLL_ISSUER_ADDRESS", "(lines separated by |)")
    issuer_email: str = "billing@streamtoll.invalid"
    issuer_vat_id: str = ""
    issuer_bank: str = ""
    statement_max_staleness: float = 60.0
    # quantity → sources in order of preference (billing.domain.sources)
    source_order: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    smtp: SmtpSettings = SmtpSettings()
    # proxies whose X-Forwarded-For the API believes (billing.api.limiter); empty: none
    api_trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # role → the per-key limit on the API's expensive endpoints (billing.api.quota); None: off
    api_limits: Mapping[str, Limit | None] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    # the partner portal (billing.api.routes.portal): the key its session cookies are signed with
    # (None: a random one per process, so sessions end when the API restarts and several
    # replicas need a shared one), whether it is served over https (Secure cookies), how long a
    # session lasts, and the gateway address and security protocol its client configs name
    portal_secret: bytes | None = field(default=None, repr=False)
    portal_https: bool = False
    portal_session_hours: float = 8.0
    portal_gateway_bootstrap: str = ""
    portal_gateway_security_protocol: str | None = None  # None: SASL_PLAINTEXT on loopback, else SASL_SSL

    @property
    def portal_security_protocol(self) -> str:
        """What the portal's client configs say: as set, else SASL_PLAINTEXT toward a loopback
        gateway (the only place it allows plaintext by default) and SASL_SSL anywhere else."""
        if self.portal_gateway_security_protocol:
            return self.portal_gateway_security_protocol
        hosts = [part.rsplit(":", 1)[0] for part in self.portal_gateway_bootstrap.split(",") if part]
        return "SASL_PLAINTEXT" if hosts and all(h in _LOOPBACK_HOSTS for h in hosts) else "SASL_SSL"

    @property
    def issuer(self) -> dict[str, object]:
        """The issuer block printed on every invoice."""
        return {
            "name": self.issuer_name,
            "address": list(self.issuer_address),
            "email": self.issuer_email,
            "vat_id": self.issuer_vat_id,
            "bank": self.issuer_bank,
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BillingSettings:
        env = os.environ if env is None else env
        problems: list[str] = []
        values: dict[str, object] = {}
        if url := env.get(PREFIX + "DATABASE_URL"):
            if not url.startswith(("postgresql://", "postgresql+psycopg://")):
                problems.append(f"{PREFIX}DATABASE_URL must be a postgresql+psycopg:// SQLAlchemy URL")
            values["database_url"] = url.replace("postgresql://", "postgresql+psycopg://", 1)
        if prefix := env.get(PREFIX + "INVOICE_NUMBER_PREFIX"):
            if re.fullmatch(r"[A-Z0-9][A-Z0-9-]{0,15}", prefix):
                values["invoice_number_prefix"] = prefix
            else:
                problems.append(f"{PREFIX}INVOICE_NUMBER_PREFIX={prefix!r} must be 1-16 of A-Z, 0-9 and -")
        if group := env.get(PREFIX + "SINK_GROUP"):
            values["sink_group"] = group
        for name in ("NAME", "EMAIL", "VAT_ID", "BANK"):
            if value := env.get(f"{PREFIX}ISSUER_{name}"):
                values[f"issuer_{name.lower()}"] = value
        if address := env.get(PREFIX + "ISSUER_ADDRESS"):
            values["issuer_address"] = tuple(part.strip() for part in address.split("|") if part.strip())
        if staleness := env.get(PREFIX + "STATEMENT_MAX_STALENESS"):
            try:
                seconds = float(staleness)
            except ValueError:
                seconds = -1.0
            if seconds >= 0:
                values["statement_max_staleness"] = seconds
            else:
                problems.append(
                    f"{PREFIX}STATEMENT_MAX_STALENESS={staleness!r} must be a number of seconds (0 or more)"
                )
        if sources := env.get(PREFIX + "BILLING_SOURCES"):
            try:
                values["source_order"] = parse_sources(sources)
            except ValueError as exc:
                problems.append(f"{PREFIX}BILLING_SOURCES: {exc}")
        if proxies := env.get(PREFIX + "API_TRUSTED_PROXIES"):
            networks = []
            for part in (p.strip() for p in proxies.split(",")):
                try:
                    if part:
                        networks.append(ipaddress.ip_network(part, strict=False))
                except ValueError:
                    problems.append(f"{PREFIX}API_TRUSTED_PROXIES: {part!r} is not an IP address or CIDR block")
            values["api_trusted_proxies"] = tuple(networks)
        limits: dict[str, Limit | None] = dict(DEFAULT_LIMITS)
        for role in ("partner", "finance", "ops"):
            name = f"{PREFIX}API_LIMITS_{role.upper()}"
            if given := env.get(name):
                try:
                    limits[role] = parse_limit(given, DEFAULT_LIMITS[role])
                except ValueError as exc:
                    problems.append(f"{name}: {exc}")
        values["api_limits"] = limits
        _portal_from_env(env, values, problems)
        values["smtp"] = SmtpSettings.from_env(env, problems)
        if problems:
            raise BillingSettingsError(problems)
        return cls(**values)  # type: ignore[arg-type]
