"""The gateway's exceptions.

::

    GatewayError                  anything the gateway raises on purpose
    ├── GatewaySettingsError      settings that cannot work (every problem at once)
    ├── UpstreamError             the cluster behind the gateway cannot be reached
    └── ProtocolViolation         a client sent bytes that are not a request the gateway can
                                  forward: its connection is closed (never the gateway)
"""

from __future__ import annotations

__all__ = ["GatewayError", "GatewaySettingsError", "ProtocolViolation", "UpstreamError"]


class GatewayError(Exception):
    """Base of everything the gateway raises on purpose."""


class GatewaySettingsError(GatewayError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class UpstreamError(GatewayError):
    """The upstream cluster cannot be reached; the message says which address."""


class ProtocolViolation(GatewayError):
    """A client's bytes are not a request the gateway forwards; the message says what was wrong."""
