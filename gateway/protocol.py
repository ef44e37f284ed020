"""What the gateway understands of the Kafka protocol, and the responses it changes.

Protocol types come from ``kio`` (generated from Apache Kafka's own message schemas, every
version). The gateway forwards a request only if its API key and version are in
:data:`SUPPORTED`, which is kio's coverage minus what the gateway cannot yet forward safely:

* APIs whose responses carry broker addresses the gateway does not rewrite, or that move record
  data it does not meter, are left out: ShareFetch / ShareAcknowledge and the rest of share
  groups (KIP-932), and the controller- and broker-internal APIs (Raft, broker registration,
  ``Envelope``…) that no client sends to a broker.
* SaslHandshake starts at version 1: a v0 handshake is followed by raw SASL tokens that are not
  framed as requests (Kafka 4 dropped v0 as well).
* Produce and Fetch stop at version 12: from 13 they name topics by id (KIP-516), which the
  gateway does not map to names yet, and Fetch 16+ carries node endpoints (KIP-951). OffsetCommit
  and OffsetFetch stop at version 9 for the same reason (topic access is checked by name).

ApiVersions responses are capped to :data:`SUPPORTED`, so well-behaved clients never send
anything else; a request outside it closes the connection (:class:`ProtocolViolation`).

Responses that carry broker addresses — Metadata, FindCoordinator (one coordinator, or a batch
from v4), DescribeCluster and Produce's node endpoints (v10+, sent when a leader moved) — are
decoded and written back with the gateway's address for each broker (:func:`rewrite_response`).
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Callable
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.index import api_key_map, schema_name_map
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType
from kio.static.primitive import i16, i32

from gateway.errors import ProtocolViolation
from gateway.wire import skip_tagged_fields

__all__ = [
    "API_VERSIONS",
    "FETCH",
    "PRODUCE",
    "SUPPORTED",
    "AddressMap",
    "answer_frame",
    "api_name",
    "cap_api_versions",
    "decode_request",
    "decode_response",
    "encode",
    "produce_error_answer",
    "refusal",
    "request_body_offset",
    "response_body_offset",
    "rewrite_response",
    "rewrites",
    "unsupported_api_versions",
]

PRODUCE, FETCH, METADATA, FIND_COORDINATOR, API_VERSIONS, DESCRIBE_CLUSTER = 0, 1, 3, 10, 18, 60
SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36
UNSUPPORTED_VERSION = 35

# node id, upstream host, upstream port → the host and port clients are told
AddressMap = Callable[[int, str, int], tuple[str, int]]

_LEFT_OUT = {
    27,  # WriteTxnMarkers: broker to broker
    *range(52, 60),  # Raft votes and quorum epochs, DescribeQuorum (controller addresses), AlterPartition, Envelope…
    *range(62, 65),  # broker registration and heartbeat, UnregisterBroker
    67,  # AllocateProducerIds
    70,  # ControllerRegistration
    73,  # AssignReplicasToDirs
    *range(76, 88),  # share groups (ShareFetch moves records the gateway does not meter yet), Raft voters
    *range(90, 93),  # share group offsets
}
_CAPS = {PRODUCE: 12, FETCH: 12, 8: 9, 9: 9}  # OffsetCommit, OffsetFetch: v10 names topics by id
# SaslHandshake v0 is followed by raw SASL tokens, not framed as requests (Kafka 4 dropped it too)
_FLOORS = {SASL_HANDSHAKE: 1}


def _versions(name: str) -> tuple[int, int] | None:
    have = sorted(
        v
        for v, types in schema_name_map.get(name, {}).items()
        if EntityType.request in types and EntityType.response in types
    )
    return (have[0], have[-1]) if have else None


def _supported() -> dict[int, tuple[int, int]]:
    out = {}
    for key, name in api_key_map.items():
        if key in _LEFT_OUT or (span := _versions(name)) is None:
            continue
        low, high = span
        low, high = max(low, _FLOORS.get(key, low)), min(high, _CAPS.get(key, high))
        if low <= high:
            out[key] = (low, high)
    return out


SUPPORTED: dict[int, tuple[int, int]] = _supported()
"""API key → (lowest, highest) version the gateway forwards."""


def api_name(api_key: int) -> str:
    return api_key_map.get(api_key, f"api_{api_key}")


@functools.cache
def _request_type(api_key: int, version: int) -> Any:
    return load_request_schema(api_key, version)


@functools.cache
def _response_type(api_key: int, version: int) -> Any:
    return load_response_schema(api_key, version)


def request_body_offset(frame: bytes, api_key: int, version: int, header_end: int) -> int:
    """Where the request body starts: after the header's tagged fields if the version is flexible."""
    if _request_type(api_key, version).__flexible__:
        return skip_tagged_fields(frame, header_end)
    return header_end


def response_body_offset(frame: bytes, api_key: int, version: int) -> int:
    """Where a response body starts (after the correlation id and, for flexible versions other
    than ApiVersions, whose response header is always v0, the header's tagged fields)."""
    if api_key != API_VERSIONS and _response_type(api_key, version).__flexible__:
        return skip_tagged_fields(frame, 4)
    return 4


def decode_request(frame: bytes, api_key: int, version: int, offset: int) -> Any:
    try:
        value, _ = entity_reader(_request_type(api_key, version))(frame, offset)
    except Exception as exc:  # kio raises several types for bytes that are not this request
        raise ProtocolViolation(f"{api_name(api_key)} v{version} request body does not decode ({exc})") from None
    return value


def decode_response(frame: bytes, api_key: int, version: int, offset: int) -> Any:
    value, _ = entity_reader(_response_type(api_key, version))(frame, offset)
    return value


def encode(value: Any) -> bytes:
    buf = io.BytesIO()
    entity_writer(type(value))(buf, value)
    return buf.getvalue()


def cap_api_versions(frame: bytes, version: int) -> bytes:
    """An ApiVersions response frame with each API's range cut to :data:`SUPPORTED` (APIs the
    gateway does not forward are removed). A broker that does not support the request's version
    answers in version 0 with error 35 (KIP-511); that body is read as version 0."""
    body = 4
    if len(frame) >= 6 and int.from_bytes(frame[4:6], "big", signed=True) == UNSUPPORTED_VERSION:
        version = 0
    resp = decode_response(frame, API_VERSIONS, version, body)
    keys = []
    for k in resp.api_keys:
        if (span := SUPPORTED.get(k.api_key)) is None:
            continue
        low, high = max(k.min_version, span[0]), min(k.max_version, span[1])
        if low <= high:
            keys.append(dataclasses.replace(k, min_version=i16(low), max_version=i16(high)))
    return frame[:body] + encode(dataclasses.replace(resp, api_keys=tuple(keys)))


def unsupported_api_versions(correlation_id: int) -> bytes:
    """The response frame a broker gives an ApiVersions request of a version it does not know:
    version 0, error 35 (UNSUPPORTED_VERSION), listing the ApiVersions versions it does."""
    from kio.schema.api_versions.v0.response import ApiVersion, ApiVersionsResponse
    from kio.schema.errors import ErrorCode

    low, high = SUPPORTED[API_VERSIONS]
    body = ApiVersionsResponse(
        error_code=ErrorCode.unsupported_version,
        api_keys=(ApiVersion(api_key=i16(API_VERSIONS), min_version=i16(low), max_version=i16(high)),),
    )
    return correlation_id.to_bytes(4, "big", signed=True) + encode(body)


def rewrites(api_key: int) -> bool:
    """Whether responses of this API may carry broker addresses."""
    return api_key in (METADATA, FIND_COORDINATOR, DESCRIBE_CLUSTER)


def _node(item: Any, id_field: str, addresses: AddressMap) -> Any:
    node_id = getattr(item, id_field)
    if node_id < 0 or item.port < 0:  # "no coordinator" answers carry -1 and an empty host
        return item
    host, port = addresses(int(node_id), item.host, int(item.port))
    return dataclasses.replace(item, host=host, port=i32(port))


def rewrite_body(api_key: int, version: int, value: Any, addresses: AddressMap) -> Any:
    """A decoded response with every broker address replaced (``None``: nothing to replace)."""
    if api_key == METADATA:
        return dataclasses.replace(value, brokers=tuple(_node(b, "node_id", addresses) for b in value.brokers))
    if api_key == DESCRIBE_CLUSTER:
        return dataclasses.replace(value, brokers=tuple(_node(b, "broker_id", addresses) for b in value.brokers))
    if api_key == FIND_COORDINATOR:
        if version >= 4:
            return dataclasses.replace(
                value, coordinators=tuple(_node(c, "node_id", addresses) for c in value.coordinators)
            )
        return _node(value, "node_id", addresses)
    if api_key == PRODUCE and getattr(value, "node_endpoints", None):
        return dataclasses.replace(
            value, node_endpoints=tuple(_node(n, "node_id", addresses) for n in value.node_endpoints)
        )
    return None


def rewrite_response(frame: bytes, api_key: int, version: int, addresses: AddressMap) -> bytes:
    """A Metadata, FindCoordinator or DescribeCluster response frame (correlation id first, no
    size prefix) with the broker addresses replaced; the header bytes stay as they were."""
    body = response_body_offset(frame, api_key, version)
    value = rewrite_body(api_key, version, decode_response(frame, api_key, version, body), addresses)
    return frame if value is None else frame[:body] + encode(value)


REFUSE_THROTTLE_MS = 1000
NOT_ENOUGH_REPLICAS = 19


def _build(cls: Any, **values: Any) -> Any:
    """An instance of a kio response class of any version: the values it has fields for, empty
    tuples for the lists it requires."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    args = {k: v for k, v in values.items() if k in names}
    for name, f in names.items():
        if name not in args and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            args[name] = ()
    return cls(**args)


def produce_error_answer(
    version: int, correlation_id: int, request: Any, error_code: int, message: str, throttle_ms: int = 0
) -> bytes:
    """The response frame (correlation id first, no size prefix) answering every partition of a
    (decoded) Produce with ``error_code`` and ``message`` (where the version carries one, v8+):
    nothing was written. The gateway's refusals of Produce all go through here."""
    import datetime
    import sys

    from kio.schema.errors import ErrorCode
    from kio.static.primitive import i32Timedelta, i64

    cls = _response_type(PRODUCE, version)
    mod = sys.modules[cls.__module__]
    topics = tuple(
        _build(
            mod.TopicProduceResponse,
            name=t.name,
            partition_responses=tuple(
                _build(
                    mod.PartitionProduceResponse,
                    index=p.index,
                    error_code=ErrorCode(error_code),
                    base_offset=i64(-1),
                    log_start_offset=i64(-1),
                    error_message=message,
                )
                for p in t.partition_data
            ),
        )
        for t in request.topic_data
    )
    throttle = i32Timedelta.parse(datetime.timedelta(milliseconds=throttle_ms))
    return answer_frame(cls, correlation_id, _build(cls, responses=topics, throttle_time=throttle))


def answer_frame(cls: Any, correlation_id: int, body: Any) -> bytes:
    """A response of type ``cls`` as a frame: correlation id, the flexible header's empty tagged
    fields, the body (no size prefix)."""
    head = correlation_id.to_bytes(4, "big", signed=True) + (b"\x00" if cls.__flexible__ else b"")
    return head + encode(body)


def refusal(api_key: int, version: int, correlation_id: int, request: Any = None) -> bytes:
    """The response frame (correlation id first, no size prefix) a broker under pressure gives a
    Produce or Fetch it does not serve now, throttled by :data:`REFUSE_THROTTLE_MS` (KIP-219:
    clients back off for that long before sending to this broker again).

    * Produce: every partition of the (decoded) request answers ``NOT_ENOUGH_REPLICAS`` — what a
      broker says when it cannot take writes at the required durability; nothing was written,
      the error is retriable, and producers (idempotent ones included) retry the batch.
    * Fetch: an empty response with error 0, as a broker answers a consumer over its fetch
      quota; the consumer fetches again after the throttle time.
    """
    import datetime

    from kio.schema.errors import ErrorCode
    from kio.static.primitive import i32Timedelta

    if api_key == PRODUCE:
        return produce_error_answer(
            version,
            correlation_id,
            request,
            ErrorCode.not_enough_replicas,
            "the gateway's audit journal is full",
            REFUSE_THROTTLE_MS,
        )
    if api_key != FETCH:
        raise ValueError(f"no refusal for {api_name(api_key)}")
    cls = _response_type(api_key, version)
    throttle = i32Timedelta.parse(datetime.timedelta(milliseconds=REFUSE_THROTTLE_MS))
    body = _build(cls, throttle_time=throttle, error_code=ErrorCode.none, session_id=i32(0), responses=())
    return answer_frame(cls, correlation_id, body)
