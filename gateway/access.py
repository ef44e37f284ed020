"""Topic and group access from an account's plan, enforced on the wire (``GATEWAY_AUTH=streamtoll``).

A connection whose credential's account has an entitlements record
(:class:`metering.entitlements.Entitlement`) has each request screened here before it is forwarded
(:func:`screen`). The gateway answers as a broker with ACLs does:

* **Produce** — partitions of topics the account may not ``write`` answer
  ``TOPIC_AUTHORIZATION_FAILED`` (29). Only the allowed topics are forwarded and the denied
  partitions are merged back into the broker's answer, in the request's topic order; a request
  with nothing allowed is answered by the gateway without reaching the broker. An ``acks=0``
  produce expects no answer: its denied part is dropped (and counted).
* **Fetch** — the same for ``read`` (error 29, no records, high watermark -1). A Fetch that names
  a denied partition is forwarded as a *sessionless full fetch* (KIP-227 session id 0, epoch -1,
  no forgotten topics) of its allowed partitions and answered with session id 0: the client drops
  its session and sends full fetches until it stops asking for the denied topic, then opens a new
  one. A denied partition therefore never enters a broker fetch session. An incremental fetch of a
  session opened before the grant was withdrawn has its answer screened too: a denied partition
  in it answers 29, without records.
* **Metadata** — listing all topics leaves out those the account may not see (``may_see``: any
  grant on it). A denied topic named in the request is taken out of what is forwarded (so it is
  never auto-created) and answered with error 29, as a broker does.
* **ListOffsets, OffsetForLeaderEpoch** — denied partitions answer 29 (``read``).
* **Groups** — FindCoordinator (group keys), JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
  OffsetCommit, TxnOffsetCommit, OffsetDelete, AddOffsetsToTxn, ConsumerGroupHeartbeat for a group
  the account may not use are answered ``GROUP_AUTHORIZATION_FAILED`` (30) by the gateway.
  OffsetCommit's partitions of topics the account may not read answer 29 (the others are
  forwarded); OffsetFetch answers 30 for a denied group and 29 for a denied topic it names, and
  leaves denied topics out when it asks for all; DescribeGroups and ConsumerGroupDescribe answer
  30 for a denied group;
  ListGroups and DeleteGroups leave out / refuse (30) denied groups.
* **Topic administration** — CreateTopics and DeleteTopics answer 29 for every topic (partners do
  not create or delete topics through the gateway; the operator does); DeleteRecords answers 29
  for every partition (no plan grants deletion).
* **Everything else** an account with restricted access may not use (ACLs, configs, quotas, SCRAM
  credentials, log dirs, reassignments, delegation tokens, DescribeConfigs, transactions'
  listings…: they name the cluster's other topics and principals or change the cluster) closes the
  connection with one log line, as for a request the gateway does not forward.

Not enforced: transactional ids (InitProducerId, AddPartitionsToTxn, EndTxn pass; a transaction's
produces are screened like any other), topic ids (Produce and Fetch stop at v12 and name topics;
Metadata by topic id is screened on the answer), ApiVersions and DescribeCluster.

An account without an entitlements record, or whose record says nothing about topics and groups
(``None``), is not screened at all.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import types
import typing
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from kio.static.primitive import i32Timedelta

from gateway import protocol
from gateway.errors import ProtocolViolation
from metering.entitlements import READ, WRITE, Entitlement

__all__ = ["GROUP_AUTHORIZATION_FAILED", "TOPIC_AUTHORIZATION_FAILED", "AccessRefused", "Denied", "Screened", "screen"]

TOPIC_AUTHORIZATION_FAILED = 29
GROUP_AUTHORIZATION_FAILED = 30
DELETE = "delete"  # no plan grants it: DeleteRecords is denied to every restricted account

(
    PRODUCE,
    FETCH,
    LIST_OFFSETS,
    METADATA,
    OFFSET_COMMIT,
    OFFSET_FETCH,
    FIND_COORDINATOR,
    JOIN_GROUP,
    HEARTBEAT,
    LEAVE_GROUP,
    SYNC_GROUP,
    DESCRIBE_GROUPS,
    LIST_GROUPS,
) = (0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16)
SASL_HANDSHAKE, API_VERSIONS, CREATE_TOPICS, DELETE_TOPICS, DELETE_RECORDS, INIT_PRODUCER_ID = 17, 18, 19, 20, 21, 22
OFFSET_FOR_LEADER_EPOCH, ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN, TXN_OFFSET_COMMIT = 23, 24, 25, 26, 28
SASL_AUTHENTICATE, DELETE_GROUPS, OFFSET_DELETE, DESCRIBE_CLUSTER = 36, 42, 47, 60
CONSUMER_GROUP_HEARTBEAT, CONSUMER_GROUP_DESCRIBE, GET_TELEMETRY_SUBSCRIPTIONS, PUSH_TELEMETRY = 68, 69, 71, 72

# forwarded as they are: nothing in them names a topic or group, or what they touch is screened elsewhere
PASS = frozenset(
    {
        API_VERSIONS,
        SASL_HANDSHAKE,
        SASL_AUTHENTICATE,
        INIT_PRODUCER_ID,
        ADD_PARTITIONS_TO_TXN,
        END_TXN,
        DESCRIBE_CLUSTER,
        GET_TELEMETRY_SUBSCRIPTIONS,
        PUSH_TELEMETRY,
    }
)
# answered GROUP_AUTHORIZATION_FAILED by the gateway when their group_id is denied
GROUP_KEYED = frozenset(
    {
        JOIN_GROUP,
        SYNC_GROUP,
        HEARTBEAT,
        LEAVE_GROUP,
        OFFSET_COMMIT,
        TXN_OFFSET_COMMIT,
        OFFSET_DELETE,
        ADD_OFFSETS_TO_TXN,
        CONSUMER_GROUP_HEARTBEAT,
    }
)


class AccessRefused(ProtocolViolation):
    """An API a restricted account may not use: the connection closes (one log line)."""


class Denied(NamedTuple):
    """One topic (or group) of one request the account may not use, and how many of its
    partitions the request named (1 for a group or a topic without partitions)."""

    name: str
    partitions: int


class Screened(NamedTuple):
    """What to do with a request. ``frame``: forward these bytes (the request, maybe with the
    denied part taken out); None: do not forward — send ``answer`` if there is one (an ``acks=0``
    produce gets none). ``after`` puts the denied part back into the broker's answer (or screens
    it). ``denied`` is what was denied (empty when only the answer is screened)."""

    frame: bytes | None
    answer: bytes | None = None
    after: Callable[[bytes], bytes] | None = None
    denied: tuple[Denied, ...] = ()


# -- building kio values ----------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return _cached_hints(cls)


@functools.cache
def _cached_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _element(cls: type, field: str) -> type:
    """The element type of a tuple field (``tuple[X, ...]`` or ``tuple[X, ...] | None``)."""
    tp = _hints(cls)[field]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    result: type = typing.get_args(tp)[0]
    return result


def _default(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
        return None
    if origin is tuple or tp is tuple:
        return ()
    base = getattr(tp, "__supertype__", tp)
    if base is bool:
        return False
    if base is i32Timedelta:
        return i32Timedelta.parse(datetime.timedelta(0))
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return base(0)
    if base is uuid.UUID:
        return uuid.UUID(int=0)
    if isinstance(base, type) and issubclass(base, bytes):
        return base(b"")
    if isinstance(base, type) and issubclass(base, str):
        return base("")
    if isinstance(base, type) and issubclass(base, int):
        return base(-1)
    if dataclasses.is_dataclass(base):
        return blank(base)  # type: ignore[arg-type]
    raise TypeError(f"no default for {tp!r}")


def blank(cls: type, **values: Any) -> Any:
    """An instance of kio class ``cls`` with ``values`` for the fields it has, and for the other
    required fields: -1 for numbers (an unknown offset, node or epoch), empty strings, lists and
    bytes, null where nullable, error 0, a zero duration."""
    hints = _hints(cls)
    args = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            args[f.name] = _coerce(hints[f.name], values[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            args[f.name] = _default(hints[f.name])
    return cls(**args)


def _coerce(tp: Any, value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool | enum.Enum):
        base = getattr(tp, "__supertype__", tp)
        if isinstance(base, type) and issubclass(base, enum.Enum):
            return base(value)
        if isinstance(base, type) and issubclass(base, int):
            return base(value)
    return value


def _frame(correlation_id: int, key: int, version: int, body: Any) -> bytes:
    cls = protocol._response_type(key, version)
    head = correlation_id.to_bytes(4, "big", signed=True)
    if cls.__flexible__ and key != API_VERSIONS:
        head += b"\x00"
    return head + protocol.encode(body)


def _replace_body(frame: bytes, key: int, version: int, value: Any) -> bytes:
    return frame[: protocol.response_body_offset(frame, key, version)] + protocol.encode(value)


# -- topic-shaped requests ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shape:
    """Where a request and its answer keep their topics and partitions (field names)."""

    op: str
    req_topics: str
    req_name: str
    req_parts: str
    req_index: str | None  # None: the request's partitions are plain indexes
    resp_topics: str
    resp_name: str
    resp_parts: str
    resp_index: str
    error: str = "error_code"
    extra: tuple[tuple[str, Any], ...] = ()  # values of a denied partition's other fields

    def error_partition(self, cls: type, index: int, code: int) -> Any:
        return blank(cls, **{self.resp_index: index, self.error: code, **dict(self.extra)})


_PRODUCE = Shape(
    WRITE, "topic_data", "name", "partition_data", "index", "responses", "name", "partition_responses", "index"
)
_FETCH = Shape(
    READ,
    "topics",
    "topic",
    "partitions",
    "partition",
    "responses",
    "topic",
    "partitions",
    "partition_index",
    extra=(("records", b""), ("aborted_transactions", ())),
)
_LIST_OFFSETS = Shape(
    READ, "topics", "name", "partitions", "partition_index", "topics", "name", "partitions", "partition_index"
)
_EPOCHS = Shape(READ, "topics", "topic", "partitions", "partition", "topics", "topic", "partitions", "partition")
_COMMIT = Shape(
    READ, "topics", "name", "partitions", "partition_index", "topics", "name", "partitions", "partition_index"
)
_DELETE_RECORDS = Shape(
    DELETE, "topics", "name", "partitions", "partition_index", "topics", "name", "partitions", "partition_index"
)
_OFFSET_FETCH = Shape(
    READ, "topics", "name", "partition_indexes", None, "topics", "name", "partitions", "partition_index"
)


def _parts(shape: Shape, topic: Any) -> list[int]:
    parts = getattr(topic, shape.req_parts)
    return [int(p) if shape.req_index is None else int(getattr(p, shape.req_index)) for p in parts]


def split(ent: Entitlement, shape: Shape, request: Any) -> tuple[Any, list[tuple[str, list[int]]]]:
    """(the request with only the topics the account may use, the denied topics with their
    partitions in request order)."""
    allowed, denied = [], []
    for t in getattr(request, shape.req_topics):
        name = str(getattr(t, shape.req_name, ""))
        if not hasattr(t, shape.req_name) or ent.may_topic(name, shape.op):  # by topic id: not screened
            allowed.append(t)
        else:
            denied.append((name, _parts(shape, t)))
    return dataclasses.replace(request, **{shape.req_topics: tuple(allowed)}), denied


def merge(
    shape: Shape,
    response: Any,
    denied: list[tuple[str, list[int]]],
    order: list[str],
    code: int = TOPIC_AUTHORIZATION_FAILED,
) -> Any:
    """``response`` with the denied topics' partitions answered ``code``, topics in request order."""
    resp_cls = type(response)
    topic_cls = _element(resp_cls, shape.resp_topics)
    part_cls = _element(topic_cls, shape.resp_parts)
    entries = [
        blank(
            topic_cls,
            **{shape.resp_name: name, shape.resp_parts: tuple(shape.error_partition(part_cls, i, code) for i in parts)},
        )
        for name, parts in denied
    ]
    rank: dict[str, int] = {}
    for i, name in enumerate(order):
        rank.setdefault(name, i)
    topics = list(getattr(response, shape.resp_topics)) + entries
    topics.sort(key=lambda t: rank.get(str(getattr(t, shape.resp_name, "")), len(order)))
    return dataclasses.replace(response, **{shape.resp_topics: tuple(topics)})


def deny_all(shape: Shape, resp_cls: type, denied: list[tuple[str, list[int]]], code: int, **top: Any) -> Any:
    """A whole answer of ``resp_cls`` for a request none of whose topics is allowed."""
    return merge(shape, blank(resp_cls, **top), denied, [n for n, _ in denied], code)


def screen_answer(ent: Entitlement, shape: Shape, response: Any) -> tuple[Any, list[Denied]]:
    """``response`` with every partition of a topic the account may not use answered 29 (and
    without its data): what the answer says of a denied topic never reaches the client."""
    topic_cls = _element(type(response), shape.resp_topics)
    part_cls = _element(topic_cls, shape.resp_parts)
    out, denied = [], []
    for t in getattr(response, shape.resp_topics):
        name = str(getattr(t, shape.resp_name, ""))
        if not hasattr(t, shape.resp_name) or ent.may_topic(name, shape.op):  # by topic id: not screened
            out.append(t)
            continue
        parts = [int(getattr(p, shape.resp_index)) for p in getattr(t, shape.resp_parts)]
        denied.append(Denied(name, len(parts)))
        out.append(
            dataclasses.replace(
                t,
                **{
                    shape.resp_parts: tuple(
                        shape.error_partition(part_cls, i, TOPIC_AUTHORIZATION_FAILED) for i in parts
                    )
                },
            )
        )
    if not denied:
        return response, []
    return dataclasses.replace(response, **{shape.resp_topics: tuple(out)}), denied


# -- the screen ---------------------------------------------------------------------------------


class Request(NamedTuple):
    frame: bytes
    key: int
    version: int
    body: int  # where the request body starts
    correlation_id: int

    def decode(self) -> Any:
        return protocol.decode_request(self.frame, self.key, self.version, self.body)

    def rebuilt(self, value: Any) -> bytes:
        return self.frame[: self.body] + protocol.encode(value)

    @property
    def response_type(self) -> Any:
        return protocol._response_type(self.key, self.version)

    def answer(self, body: Any) -> bytes:
        return _frame(self.correlation_id, self.key, self.version, body)


def restricted(ent: Entitlement | None) -> bool:
    return ent is not None and (ent.topics is not None or ent.groups is not None)


def screen(
    ent: Entitlement | None, key: int, version: int, frame: bytes, header_end: int, correlation_id: int
) -> Screened | None:
    """What to do with one request of an account with entitlements ``ent`` (None: forward it as
    it is). Raises :class:`AccessRefused` for an API a restricted account may not use."""
    if ent is None or not restricted(ent) or key in PASS:
        return None
    handler = _HANDLERS.get(key)
    if handler is None:
        raise AccessRefused(f"{protocol.api_name(key)} is not available to an account with restricted access")
    req = Request(frame, key, version, protocol.request_body_offset(frame, key, version, header_end), correlation_id)
    return handler(ent, req)


def _topic_split(ent: Entitlement, req: Request, shape: Shape, request: Any = None) -> Screened | None:
    request = req.decode() if request is None else request
    kept, denied = split(ent, shape, request)
    if not denied:
        return None
    order = [str(getattr(t, shape.req_name, "")) for t in getattr(request, shape.req_topics)]
    gone = tuple(Denied(n, max(len(p), 1)) for n, p in denied)
    if not getattr(kept, shape.req_topics):
        body = deny_all(shape, req.response_type, denied, TOPIC_AUTHORIZATION_FAILED)
        return Screened(None, req.answer(body), denied=gone)

    def after(frame: bytes) -> bytes:
        body = protocol.response_body_offset(frame, req.key, req.version)
        response = protocol.decode_response(frame, req.key, req.version, body)
        return frame[:body] + protocol.encode(merge(shape, response, denied, order))

    return Screened(req.rebuilt(kept), after=after, denied=gone)


def _produce(ent: Entitlement, req: Request) -> Screened | None:
    request = req.decode()
    screened = _topic_split(ent, req, _PRODUCE, request)
    if screened is not None and request.acks == 0:
        return screened._replace(answer=None, after=None)  # no answer is expected
    return screened


def _fetch(ent: Entitlement, req: Request) -> Screened | None:
    if ent.topics is None:
        return None
    request = req.decode()
    kept, denied = split(ent, _FETCH, request)
    incremental = int(getattr(request, "session_epoch", -1)) > 0
    if not denied:
        if not incremental:
            return None
        return Screened(req.frame, after=_screen_fetch(ent, req))  # a session opened before a grant ended
    order = [str(t.topic) for t in request.topics]
    gone = tuple(Denied(n, max(len(p), 1)) for n, p in denied)
    if not kept.topics:
        body = deny_all(_FETCH, req.response_type, denied, TOPIC_AUTHORIZATION_FAILED, session_id=0)
        return Screened(None, req.answer(body), denied=gone)
    # a sessionless full fetch (KIP-227: session id 0, epoch -1) of the allowed partitions only
    if hasattr(kept, "session_id"):  # v7+
        kept = dataclasses.replace(
            kept,
            session_id=type(kept.session_id)(0),
            session_epoch=type(kept.session_epoch)(-1),
            forgotten_topics_data=(),
        )

    def after(frame: bytes) -> bytes:
        body = protocol.response_body_offset(frame, req.key, req.version)
        response = protocol.decode_response(frame, req.key, req.version, body)
        merged = merge(_FETCH, response, denied, order)
        if hasattr(merged, "session_id"):
            merged = dataclasses.replace(merged, session_id=type(merged.session_id)(0))
        return frame[:body] + protocol.encode(merged)

    return Screened(req.rebuilt(kept), after=after, denied=gone)


def _screen_fetch(ent: Entitlement, req: Request) -> Callable[[bytes], bytes]:
    def after(frame: bytes) -> bytes:
        body = protocol.response_body_offset(frame, req.key, req.version)
        response = protocol.decode_response(frame, req.key, req.version, body)
        screened, denied = screen_answer(ent, _FETCH, response)
        return frame if not denied else frame[:body] + protocol.encode(screened)

    return after


def _screen_topics(shape: Shape) -> Callable[[Entitlement, Request], Screened | None]:
    """Read-only requests: forwarded as they are, their answers screened."""

    def handler(ent: Entitlement, req: Request) -> Screened | None:
        if ent.topics is None:
            return None

        def after(frame: bytes) -> bytes:
            body = protocol.response_body_offset(frame, req.key, req.version)
            response = protocol.decode_response(frame, req.key, req.version, body)
            screened, denied = screen_answer(ent, shape, response)
            return frame if not denied else frame[:body] + protocol.encode(screened)

        return Screened(req.frame, after=after)

    return handler


def _metadata(ent: Entitlement, req: Request) -> Screened | None:
    if ent.topics is None:
        return None
    request = req.decode()
    named = request.topics is not None and (req.version > 0 or len(request.topics) > 0)
    names = [] if not named else [None if t.name is None else str(t.name) for t in request.topics]
    denied = [n for n in names if n is not None and not ent.may_see(n)]
    frame = req.frame
    if denied:
        kept = tuple(t for t in request.topics if t.name is None or ent.may_see(str(t.name)))
        # (v0: an empty list asks for every topic; the answer keeps only the topics named)
        frame = req.rebuilt(dataclasses.replace(request, topics=kept))

    def after(response_frame: bytes) -> bytes:
        body = protocol.response_body_offset(response_frame, req.key, req.version)
        response = protocol.decode_response(response_frame, req.key, req.version, body)
        if not named:  # every topic: those the account may not see are left out
            out = [t for t in response.topics if t.name is not None and ent.may_see(str(t.name))]
        else:
            topic_cls = _element(type(response), "topics")
            by_name = {str(t.name): t for t in response.topics if t.name is not None}
            out = []
            for name in names:  # in request order
                if name in denied:
                    out.append(blank(topic_cls, error_code=TOPIC_AUTHORIZATION_FAILED, name=name))
                elif name is not None and name in by_name:
                    out.append(by_name.pop(name))
            by_id = None in names  # v10+: topics asked for by id
            for t in response.topics:  # topics the request did not name (by id, or a broker's extra)
                if t.name is not None and str(t.name) in names:
                    continue
                if req.version == 0 and not [n for n in names if n not in denied]:
                    continue  # v0 asked for every topic when nothing was left to ask for
                if t.name is None or ent.may_see(str(t.name)):
                    out.append(t)
                elif by_id:  # a denied topic asked for by id: 29, and its name is not told
                    code = type(t.error_code)(TOPIC_AUTHORIZATION_FAILED)
                    out.append(dataclasses.replace(t, error_code=code, name=None, partitions=()))
        return response_frame[:body] + protocol.encode(dataclasses.replace(response, topics=tuple(out)))

    return Screened(frame, after=after, denied=tuple(Denied(n, 1) for n in denied))


def _group_refusal(req: Request, request: Any) -> Any:
    cls = req.response_type
    fields = {f.name for f in dataclasses.fields(cls)}
    if "error_code" in fields:
        return blank(cls, error_code=GROUP_AUTHORIZATION_FAILED)
    # OffsetCommit, TxnOffsetCommit: no error of their own, every partition says it
    denied = [(str(getattr(t, "name", "")), [int(p.partition_index) for p in t.partitions]) for t in request.topics]
    return deny_all(_COMMIT, cls, denied, GROUP_AUTHORIZATION_FAILED)


def _group_keyed(ent: Entitlement, req: Request) -> Screened | None:
    request = req.decode()
    group = str(request.group_id)
    if not ent.may_group(group):
        return Screened(None, req.answer(_group_refusal(req, request)), denied=(Denied(group, 1),))
    if req.key in (OFFSET_COMMIT, TXN_OFFSET_COMMIT, OFFSET_DELETE) and ent.topics is not None:
        return _topic_split(ent, req, _COMMIT, request)
    return None


def _find_coordinator(ent: Entitlement, req: Request) -> Screened | None:
    if ent.groups is None:
        return None
    request = req.decode()
    if int(getattr(request, "key_type", 0)) != 0:  # transactional ids are not screened
        return None
    cls = req.response_type
    if req.version < 4:
        if ent.may_group(str(request.key)):
            return None
        body = blank(
            cls,
            error_code=GROUP_AUTHORIZATION_FAILED,
            error_message="Group authorization failed.",
            node_id=-1,
            host="",
            port=-1,
        )
        return Screened(None, req.answer(body), denied=(Denied(str(request.key), 1),))
    keys = [str(k) for k in request.coordinator_keys]
    denied = [k for k in keys if not ent.may_group(k)]
    if not denied:
        return None
    coord_cls = _element(cls, "coordinators")

    def refused(k: str) -> Any:
        return blank(
            coord_cls,
            key=k,
            node_id=-1,
            host="",
            port=-1,
            error_code=GROUP_AUTHORIZATION_FAILED,
            error_message="Group authorization failed.",
        )

    gone = tuple(Denied(k, 1) for k in denied)
    kept = tuple(k for k in request.coordinator_keys if str(k) not in denied)
    if not kept:
        return Screened(None, req.answer(blank(cls, coordinators=tuple(refused(k) for k in keys))), denied=gone)

    def after(frame: bytes) -> bytes:
        body = protocol.response_body_offset(frame, req.key, req.version)
        response = protocol.decode_response(frame, req.key, req.version, body)
        found = {str(c.key): c for c in response.coordinators}
        coords = [found.pop(k) if k in found else refused(k) for k in keys if k in found or k in denied]
        coords += found.values()
        return frame[:body] + protocol.encode(dataclasses.replace(response, coordinators=tuple(coords)))

    return Screened(req.rebuilt(dataclasses.replace(request, coordinator_keys=kept)), after=after, denied=gone)


def _offset_fetch(ent: Entitlement, req: Request) -> Screened | None:
    request = req.decode()
    if req.version < 8:
        group = str(request.group_id)
        if not ent.may_group(group):
            cls = req.response_type
            named = [(str(t.name), [int(p) for p in t.partition_indexes]) for t in request.topics or ()]
            top = {"error_code": GROUP_AUTHORIZATION_FAILED}
            body = deny_all(_OFFSET_FETCH, cls, named, GROUP_AUTHORIZATION_FAILED, **top)
            return Screened(None, req.answer(body), denied=(Denied(group, 1),))
        if ent.topics is None:
            return None
        everything = request.topics is None

        def after(frame: bytes) -> bytes:
            body = protocol.response_body_offset(frame, req.key, req.version)
            response = protocol.decode_response(frame, req.key, req.version, body)
            return frame[:body] + protocol.encode(_screen_offsets(ent, response, everything))

        return Screened(req.frame, after=after)
    groups = [str(g.group_id) for g in request.groups]
    everything_of = {str(g.group_id): g.topics is None for g in request.groups}

    def after_groups(frame: bytes) -> bytes:
        body = protocol.response_body_offset(frame, req.key, req.version)
        response = protocol.decode_response(frame, req.key, req.version, body)
        out = []
        for g in response.groups:
            gid = str(g.group_id)
            if not ent.may_group(gid):
                out.append(dataclasses.replace(g, error_code=type(g.error_code)(GROUP_AUTHORIZATION_FAILED), topics=()))
            elif ent.topics is not None:
                out.append(_screen_offsets(ent, g, everything_of.get(gid, False)))
            else:
                out.append(g)
        return frame[:body] + protocol.encode(dataclasses.replace(response, groups=tuple(out)))

    denied = tuple(Denied(g, 1) for g in groups if not ent.may_group(g))
    return Screened(req.frame, after=after_groups, denied=denied)


def _screen_offsets(ent: Entitlement, holder: Any, everything: bool) -> Any:
    """An OffsetFetch answer (or one group of it): topics the account may not read left out when
    it asked for every topic, else answered 29."""
    if everything:
        return dataclasses.replace(holder, topics=tuple(t for t in holder.topics if ent.may_topic(str(t.name), READ)))
    screened, _ = screen_answer(ent, _OFFSET_FETCH_ANSWER, holder)
    return screened


_OFFSET_FETCH_ANSWER = dataclasses.replace(
    _OFFSET_FETCH, extra=(("committed_offset", -1), ("committed_leader_epoch", -1), ("metadata", ""))
)


def _describe_groups(ent: Entitlement, req: Request) -> Screened | None:
    if ent.groups is None:
        return None
    request = req.decode()
    asked = request.groups if req.key == DESCRIBE_GROUPS else request.group_ids
    denied = tuple(Denied(str(g), 1) for g in asked if not ent.may_group(str(g)))

    def after(frame: bytes) -> bytes:
        body = protocol.response_body_offset(frame, req.key, req.version)
        response = protocol.decode_response(frame, req.key, req.version, body)
        group_cls = _element(type(response), "groups")
        out = [
            g
            if ent.may_group(str(g.group_id))
            else blank(group_cls, error_code=GROUP_AUTHORIZATION_FAILED, group_id=g.group_id)
            for g in response.groups
        ]
        return frame[:body] + protocol.encode(dataclasses.replace(response, groups=tuple(out)))

    return Screened(req.frame, after=after, denied=denied)


def _list_groups(ent: Entitlement, req: Request) -> Screened | None:
    if ent.groups is None:
        return None

    def after(frame: bytes) -> bytes:
        body = protocol.response_body_offset(frame, req.key, req.version)
        response = protocol.decode_response(frame, req.key, req.version, body)
        kept = tuple(g for g in response.groups if ent.may_group(str(g.group_id)))
        return frame[:body] + protocol.encode(dataclasses.replace(response, groups=kept))

    return Screened(req.frame, after=after)


def _delete_groups(ent: Entitlement, req: Request) -> Screened | None:
    if ent.groups is None:
        return None
    request = req.decode()
    names = [str(g) for g in request.groups_names]
    denied = [g for g in names if not ent.may_group(g)]
    if not denied:
        return None
    cls = req.response_type
    result_cls = _element(cls, "results")
    gone = tuple(Denied(g, 1) for g in denied)

    def refused(g: str) -> Any:
        return blank(result_cls, group_id=g, error_code=GROUP_AUTHORIZATION_FAILED)

    kept = tuple(g for g in request.groups_names if str(g) not in denied)
    if not kept:
        return Screened(None, req.answer(blank(cls, results=tuple(refused(g) for g in names))), denied=gone)

    def after(frame: bytes) -> bytes:
        body = protocol.response_body_offset(frame, req.key, req.version)
        response = protocol.decode_response(frame, req.key, req.version, body)
        found = {str(r.group_id): r for r in response.results}
        out = [found.pop(g) if g in found else refused(g) for g in names if g in found or g in denied]
        return frame[:body] + protocol.encode(dataclasses.replace(response, results=tuple(out) + tuple(found.values())))

    return Screened(req.rebuilt(dataclasses.replace(request, groups_names=kept)), after=after, denied=gone)


def _topic_admin(ent: Entitlement, req: Request) -> Screened | None:
    """CreateTopics / DeleteTopics: every topic answered 29 for an account with restricted topics."""
    if ent.topics is None:
        return None
    request = req.decode()
    cls = req.response_type
    field = "topics" if req.key == CREATE_TOPICS else "responses"
    result_cls = _element(cls, field)
    if req.key == CREATE_TOPICS:
        names = [str(t.name) for t in request.topics]
    elif hasattr(request, "topic_names"):
        names = [str(n) for n in request.topic_names]
    else:
        names = [str(t.name) for t in request.topics if t.name is not None]
    results = tuple(
        blank(
            result_cls,
            name=n,
            error_code=TOPIC_AUTHORIZATION_FAILED,
            error_message="Authorization failed.",
            num_partitions=-1,
            replication_factor=-1,
        )
        for n in names
    )
    return Screened(None, req.answer(blank(cls, **{field: results})), denied=tuple(Denied(n, 1) for n in names))


def _delete_records(ent: Entitlement, req: Request) -> Screened | None:
    if ent.topics is None:
        return None
    request = req.decode()
    denied = [(str(t.name), [int(p.partition_index) for p in t.partitions]) for t in request.topics]
    body = deny_all(
        dataclasses.replace(_DELETE_RECORDS, extra=(("low_watermark", -1),)),
        req.response_type,
        denied,
        TOPIC_AUTHORIZATION_FAILED,
    )
    return Screened(None, req.answer(body), denied=tuple(Denied(n, max(len(p), 1)) for n, p in denied))


_HANDLERS: dict[int, Callable[[Entitlement, Request], Screened | None]] = {
    PRODUCE: lambda ent, req: None if ent.topics is None else _produce(ent, req),
    FETCH: _fetch,
    METADATA: _metadata,
    LIST_OFFSETS: _screen_topics(dataclasses.replace(_LIST_OFFSETS, extra=(("timestamp", -1), ("offset", -1)))),
    OFFSET_FOR_LEADER_EPOCH: _screen_topics(_EPOCHS),
    FIND_COORDINATOR: _find_coordinator,
    OFFSET_FETCH: _offset_fetch,
    DESCRIBE_GROUPS: _describe_groups,
    CONSUMER_GROUP_DESCRIBE: _describe_groups,
    LIST_GROUPS: _list_groups,
    DELETE_GROUPS: _delete_groups,
    CREATE_TOPICS: _topic_admin,
    DELETE_TOPICS: _topic_admin,
    DELETE_RECORDS: _delete_records,
    **dict.fromkeys(GROUP_KEYED, _group_keyed),
}


def denied_partitions(denied: Iterable[Denied]) -> int:
    return sum(d.partitions for d in denied)
