"""Confluent audit log records (CloudEvents, type ``io.confluent.kafka.server/authorization``).

Format: ``docs/formats.md`` (Confluent audit log), in structured content mode (:func:`decode`) or
binary content mode (``ce_*`` headers, the value is ``data``; :func:`decode_binary`).

Each event is one request with no bytes or records. Produce and consumer fetches count; follower
fetches and other methods are ignored (counted by the caller). A denied request counts in
``denied_requests`` only, never in ``requests``, so it is never billed. Drift tolerated:
specversion 0.3, ``clientId`` vs ``client_id``, method-name case.
"""

from __future__ import annotations

from typing import Any

from metering.decoders.common import Headers, Invalid, Limits, as_identity, as_time_ms, binary_event, load_json
from metering.domain.events import AUDIT_LOG, CONSUME, PRODUCE, UsageEvent, event_key

__all__ = ["decode", "decode_binary"]

AUTHZ_TYPE = "io.confluent.kafka.server/authorization"
_METHODS = {"kafka.produce": PRODUCE, "kafka.fetchconsumer": CONSUME, "kafka.fetch": CONSUME}


def _topic(authz: dict[str, Any], data: dict[str, Any]) -> str:
    if authz.get("resourceType") == "Topic":
        return as_identity(authz, "resourceName", "data.authorizationInfo.", required=True)
    crn = authz.get("resourceName") or data.get("resourceName")
    if type(crn) is str:
        for part in crn.split("/"):
            if part.startswith("topic="):
                return as_identity({"t": part[6:]}, "t", "resourceName topic ", required=True)
    raise Invalid("schema", "no topic in authorizationInfo.resourceName or the resourceName CRN")


def decode(value: bytes, limits: Limits) -> UsageEvent | str:
    """One structured-mode audit log record → a usage event (one request), or the ignored kind."""
    return _decode_doc(load_json(value), limits)


def decode_binary(value: bytes, headers: Headers, limits: Limits) -> UsageEvent | str:
    """One binary-mode audit log record → the same result its structured twin gives."""
    return _decode_doc(binary_event(value, headers), limits)


def _decode_doc(doc: Any, limits: Limits) -> UsageEvent | str:
    if type(doc) is not dict:
        raise Invalid("schema", "the record is not a JSON object")
    if doc.get("specversion") not in ("1.0", "0.3"):
        raise Invalid("schema", f"specversion must be 1.0 or 0.3, not {str(doc.get('specversion'))[:20]!r}")
    ev_id = as_identity(doc, "id", "", required=True)
    source = as_identity(doc, "source", "", required=True)
    occurred = as_time_ms(doc.get("time"), "time")
    typ = doc.get("type")
    if typ != AUTHZ_TYPE:
        if type(typ) is not str:
            raise Invalid("schema", "type is missing" if typ is None else "type must be a string")
        return typ[:80]
    data = doc.get("data")
    if type(data) is not dict:
        raise Invalid("schema", "data is missing" if data is None else "data must be a JSON object")
    method = data.get("methodName")
    if type(method) is not str:
        raise Invalid("schema", "data.methodName is missing or not a string")
    direction = _METHODS.get(method.lower())
    if direction is None:
        return method[:80]
    authn = data.get("authenticationInfo")
    principal = "unknown"
    if type(authn) is dict:
        principal = as_identity(authn, "principal", "data.authenticationInfo.", default="unknown")
    elif authn is not None:
        raise Invalid("schema", "data.authenticationInfo must be a JSON object")
    authz = data.get("authorizationInfo")
    if type(authz) is not dict:
        raise Invalid("schema", "data.authorizationInfo is missing or not a JSON object")
    granted = authz.get("granted")
    if type(granted) is not bool:
        raise Invalid("schema", "data.authorizationInfo.granted must be true or false")
    topic = _topic(authz, data)
    request = data.get("request")
    client_id = ""
    if type(request) is dict:
        key = "client_id" if "client_id" in request else "clientId"
        client_id = as_identity(request, key, "data.request.")
    elif request is not None:
        raise Invalid("schema", "data.request must be a JSON object")
    limits.check_time(occurred)
    return UsageEvent(
        event_key(AUDIT_LOG, source, ev_id),
        AUDIT_LOG,
        occurred,
        principal,
        client_id,
        "",
        topic,
        direction,
        0,
        0,
        1 if granted else 0,
        0 if granted else 1,
    )
