"""Topic and group access (gateway.access) over encoded requests and answers of every version the
gateway forwards: what is forwarded, what the gateway answers itself, and the broker's answer
with the denied part merged back in request order."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from kio.schema.request_header.v1.header import RequestHeader as HeaderV1
from kio.schema.request_header.v2.header import RequestHeader as HeaderV2
from kio.serial import entity_writer
from kio.static.primitive import i16, i32

from gateway import access, protocol
from gateway.access import AccessRefused, Denied, blank, screen
from gateway.metering import CONSUME_TYPE, PRODUCE_TYPE, RequestContext, denied_events
from gateway.wire import parse_request_header
from metering.decoders import proxy as proxy_decoder
from metering.decoders.common import Limits
from metering.entitlements import Entitlement, Grant

ENT = Entitlement(
    "acme",
    topics=(Grant("orders-", "prefix", frozenset({"read", "write"})), Grant("feed", "literal", frozenset({"read"}))),
    groups=(Grant("orders-", "prefix"),),
)


def versions(key: int) -> range:
    low, high = protocol.SUPPORTED[key]
    return range(low, high + 1)


def request_frame(key: int, version: int, body: Any, correlation_id: int = 7) -> tuple[bytes, int]:
    """(frame without the size, where its header ends)."""
    flexible = protocol._request_type(key, version).__flexible__
    header_cls = HeaderV2 if flexible else HeaderV1
    header = header_cls(
        request_api_key=i16(key), request_api_version=i16(version), correlation_id=i32(correlation_id), client_id="t"
    )
    buf = io.BytesIO()
    entity_writer(header_cls)(buf, header)
    entity_writer(type(body))(buf, body)
    frame = buf.getvalue()
    return frame, parse_request_header(frame).end


def run(ent: Entitlement, key: int, version: int, body: Any) -> tuple[access.Screened | None, int]:
    frame, end = request_frame(key, version, body)
    return screen(ent, key, version, frame, end, 7), end


def decode_request(key: int, version: int, frame: bytes) -> Any:
    end = parse_request_header(frame).end
    return protocol.decode_request(frame, key, version, protocol.request_body_offset(frame, key, version, end))


def decode_answer(key: int, version: int, frame: bytes) -> Any:
    assert int.from_bytes(frame[:4], "big") == 7
    return protocol.decode_response(frame, key, version, protocol.response_body_offset(frame, key, version))


def answer_frame(key: int, version: int, body: Any) -> bytes:
    return access._frame(7, key, version, body)


def element(cls: type, field: str) -> type:
    return access._element(cls, field)


# -- Produce ----------------------------------------------------------------------------------


def produce_request(version: int, topics: list[tuple[str, list[int]]], acks: int = -1) -> Any:
    cls = protocol._request_type(protocol.PRODUCE, version)
    t_cls = element(cls, "topic_data")
    p_cls = element(t_cls, "partition_data")
    return blank(
        cls,
        acks=acks,
        timeout=access._default(access._hints(cls)["timeout"]),
        topic_data=tuple(
            blank(t_cls, name=n, partition_data=tuple(blank(p_cls, index=i) for i in ps)) for n, ps in topics
        ),
    )


def produce_answer(version: int, topics: list[tuple[str, list[int]]]) -> Any:
    cls = protocol._response_type(protocol.PRODUCE, version)
    t_cls = element(cls, "responses")
    p_cls = element(t_cls, "partition_responses")
    return blank(
        cls,
        responses=tuple(
            blank(
                t_cls, name=n, partition_responses=tuple(blank(p_cls, index=i, error_code=0, base_offset=5) for i in ps)
            )
            for n, ps in topics
        ),
    )


@pytest.mark.parametrize("version", versions(protocol.PRODUCE))
def test_a_produce_forwards_the_allowed_topics_and_merges_the_denied_back_in_request_order(version: int) -> None:
    request = produce_request(version, [("orders-a", [0, 1]), ("secret", [0, 2]), ("orders-b", [3]), ("feed", [0])])
    screened, _ = run(ENT, protocol.PRODUCE, version, request)
    assert screened is not None and screened.frame is not None and screened.answer is None
    assert screened.denied == (Denied("secret", 2), Denied("feed", 1))  # feed: read only
    forwarded = decode_request(protocol.PRODUCE, version, screened.frame)
    assert [t.name for t in forwarded.topic_data] == ["orders-a", "orders-b"]
    assert forwarded.topic_data == tuple(t for t in request.topic_data if t.name.startswith("orders-"))
    broker = answer_frame(protocol.PRODUCE, version, produce_answer(version, [("orders-b", [3]), ("orders-a", [0, 1])]))
    assert screened.after is not None
    merged = decode_answer(protocol.PRODUCE, version, screened.after(broker))
    got = [(t.name, [(int(p.index), int(p.error_code)) for p in t.partition_responses]) for t in merged.responses]
    assert got == [
        ("orders-a", [(0, 0), (1, 0)]),
        ("secret", [(0, 29), (2, 29)]),
        ("orders-b", [(3, 0)]),
        ("feed", [(0, 29)]),
    ]
    assert all(p.base_offset == -1 for t in merged.responses if t.name == "secret" for p in t.partition_responses)


@pytest.mark.parametrize("version", versions(protocol.PRODUCE))
def test_a_produce_of_only_denied_topics_is_answered_by_the_gateway(version: int) -> None:
    screened, _ = run(ENT, protocol.PRODUCE, version, produce_request(version, [("secret", [0]), ("other", [1, 2])]))
    assert screened is not None and screened.frame is None and screened.answer is not None
    answer = decode_answer(protocol.PRODUCE, version, screened.answer)
    assert [(t.name, [(int(p.index), int(p.error_code)) for p in t.partition_responses]) for t in answer.responses] == [
        ("secret", [(0, 29)]),
        ("other", [(1, 29), (2, 29)]),
    ]


def test_an_acks_0_produce_has_its_denied_part_dropped_without_an_answer() -> None:
    screened, _ = run(ENT, protocol.PRODUCE, 9, produce_request(9, [("secret", [0])], acks=0))
    assert screened is not None and screened.frame is None and screened.answer is None
    assert screened.denied == (Denied("secret", 1),)
    screened, _ = run(ENT, protocol.PRODUCE, 9, produce_request(9, [("secret", [0]), ("orders-a", [0])], acks=0))
    assert screened is not None and screened.frame is not None and screened.after is None and screened.answer is None
    assert [t.name for t in decode_request(protocol.PRODUCE, 9, screened.frame).topic_data] == ["orders-a"]


def test_nothing_is_screened_for_an_allowed_request_or_an_unrestricted_account() -> None:
    request = produce_request(9, [("orders-a", [0])])
    assert run(ENT, protocol.PRODUCE, 9, request)[0] is None
    assert run(Entitlement("acme"), protocol.PRODUCE, 9, produce_request(9, [("secret", [0])]))[0] is None
    frame, end = request_frame(protocol.PRODUCE, 9, produce_request(9, [("secret", [0])]))
    assert screen(None, protocol.PRODUCE, 9, frame, end, 7) is None


# -- Fetch ------------------------------------------------------------------------------------


def fetch_request(version: int, topics: list[tuple[str, list[int]]], session: tuple[int, int] = (0, -1)) -> Any:
    cls = protocol._request_type(protocol.FETCH, version)
    t_cls = element(cls, "topics")
    p_cls = element(t_cls, "partitions")
    return blank(
        cls,
        replica_id=-1,
        max_wait=access._default(access._hints(cls)["max_wait"]),
        min_bytes=1,
        max_bytes=1 << 20,
        isolation_level=0,
        session_id=session[0],
        session_epoch=session[1],
        topics=tuple(
            blank(t_cls, topic=n, partitions=tuple(blank(p_cls, partition=i, fetch_offset=0) for i in ps))
            for n, ps in topics
        ),
    )


def fetch_answer(version: int, topics: list[tuple[str, list[int]]], session_id: int = 0) -> Any:
    cls = protocol._response_type(protocol.FETCH, version)
    t_cls = element(cls, "responses")
    p_cls = element(t_cls, "partitions")
    return blank(
        cls,
        error_code=0,
        session_id=session_id,
        responses=tuple(
            blank(
                t_cls,
                topic=n,
                partitions=tuple(
                    blank(
                        p_cls, partition_index=i, error_code=0, high_watermark=10, records=b"", aborted_transactions=()
                    )
                    for i in ps
                ),
            )
            for n, ps in topics
        ),
    )


@pytest.mark.parametrize("version", versions(protocol.FETCH))
def test_a_fetch_forwards_a_sessionless_fetch_of_the_allowed_partitions(version: int) -> None:
    session = (0, 0) if version >= 7 else (0, -1)  # a client asking for a new session (KIP-227)
    screened, _ = run(
        ENT, protocol.FETCH, version, fetch_request(version, [("secret", [0]), ("feed", [0, 1])], session)
    )
    assert screened is not None and screened.frame is not None and screened.denied == (Denied("secret", 1),)
    forwarded = decode_request(protocol.FETCH, version, screened.frame)
    assert [t.topic for t in forwarded.topics] == ["feed"]
    if version >= 7:
        assert (forwarded.session_id, forwarded.session_epoch, forwarded.forgotten_topics_data) == (0, -1, ())
    broker = answer_frame(protocol.FETCH, version, fetch_answer(version, [("feed", [0, 1])], session_id=0))
    assert screened.after is not None
    merged = decode_answer(protocol.FETCH, version, screened.after(broker))
    got = [
        (t.topic, [(int(p.partition_index), int(p.error_code), int(p.high_watermark)) for p in t.partitions])
        for t in merged.responses
    ]
    assert got == [("secret", [(0, 29, -1)]), ("feed", [(0, 0, 10), (1, 0, 10)])]
    assert not merged.responses[0].partitions[0].records
    if version >= 7:
        assert merged.session_id == 0


@pytest.mark.parametrize("version", versions(protocol.FETCH))
def test_a_fetch_of_only_denied_topics_is_answered_by_the_gateway(version: int) -> None:
    screened, _ = run(ENT, protocol.FETCH, version, fetch_request(version, [("secret", [0, 1])]))
    assert screened is not None and screened.frame is None and screened.answer is not None
    answer = decode_answer(protocol.FETCH, version, screened.answer)
    assert [(t.topic, [int(p.error_code) for p in t.partitions]) for t in answer.responses] == [("secret", [29, 29])]


def test_an_incremental_fetch_of_an_older_session_has_denied_data_screened_out_of_its_answer() -> None:
    version = 12
    screened, _ = run(ENT, protocol.FETCH, version, fetch_request(version, [("feed", [0])], session=(42, 3)))
    assert screened is not None and screened.frame is not None and screened.after is not None
    broker = fetch_answer(version, [("feed", [0]), ("secret", [0])], session_id=42)
    secret_records = b"\x00" * 70
    parts = broker.responses[1].partitions
    broker = access.dataclasses.replace(
        broker,
        responses=(
            broker.responses[0],
            access.dataclasses.replace(
                broker.responses[1], partitions=(access.dataclasses.replace(parts[0], records=secret_records),)
            ),
        ),
    )
    merged = decode_answer(protocol.FETCH, version, screened.after(answer_frame(protocol.FETCH, version, broker)))
    assert merged.session_id == 42
    secret = merged.responses[1].partitions[0]
    assert (merged.responses[1].topic, int(secret.error_code), secret.records) == ("secret", 29, b"")


# -- Metadata ---------------------------------------------------------------------------------


def metadata_request(version: int, names: list[str] | None) -> Any:
    cls = protocol._request_type(protocol.METADATA, version)
    t_cls = element(cls, "topics")
    topics = None if names is None else tuple(blank(t_cls, name=n) for n in names)
    if version == 0 and topics is None:
        topics = ()
    return blank(cls, topics=topics, allow_auto_topic_creation=True, include_topic_authorized_operations=False)


def metadata_answer(version: int, names: list[str]) -> Any:
    cls = protocol._response_type(protocol.METADATA, version)
    t_cls = element(cls, "topics")
    p_cls = element(t_cls, "partitions")
    topics = tuple(
        blank(t_cls, error_code=0, name=n, partitions=(blank(p_cls, error_code=0, partition_index=0, leader_id=1),))
        for n in names
    )
    return blank(cls, topics=topics, brokers=(), controller_id=1, cluster_id="c")


@pytest.mark.parametrize("version", versions(protocol.METADATA))
def test_metadata_of_every_topic_leaves_out_those_the_account_may_not_see(version: int) -> None:
    screened, _ = run(ENT, protocol.METADATA, version, metadata_request(version, None))
    assert screened is not None and screened.frame is not None and screened.denied == ()
    broker = answer_frame(protocol.METADATA, version, metadata_answer(version, ["secret", "orders-a", "feed", "x"]))
    assert screened.after is not None
    got = decode_answer(protocol.METADATA, version, screened.after(broker))
    assert [t.name for t in got.topics] == ["orders-a", "feed"]


@pytest.mark.parametrize("version", versions(protocol.METADATA))
def test_metadata_naming_a_denied_topic_answers_29_and_never_asks_the_broker_for_it(version: int) -> None:
    screened, _ = run(ENT, protocol.METADATA, version, metadata_request(version, ["secret", "orders-a"]))
    assert screened is not None and screened.frame is not None and screened.denied == (Denied("secret", 1),)
    forwarded = decode_request(protocol.METADATA, version, screened.frame)
    assert [t.name for t in forwarded.topics] == ["orders-a"]  # never auto-created
    broker = answer_frame(protocol.METADATA, version, metadata_answer(version, ["orders-a"]))
    assert screened.after is not None
    got = decode_answer(protocol.METADATA, version, screened.after(broker))
    assert [(t.name, int(t.error_code), len(t.partitions)) for t in got.topics] == [
        ("secret", 29, 0),
        ("orders-a", 0, 1),
    ]


# -- ListOffsets, OffsetForLeaderEpoch: the answer is screened -----------------------------------


@pytest.mark.parametrize("version", versions(access.LIST_OFFSETS))
def test_list_offsets_of_a_denied_topic_answers_29(version: int) -> None:
    cls = protocol._request_type(2, version)
    t_cls = element(cls, "topics")
    request = blank(cls, replica_id=-1, isolation_level=0, topics=(blank(t_cls, name="secret", partitions=()),))
    screened, _ = run(ENT, 2, version, request)
    assert screened is not None and screened.after is not None
    resp_cls = protocol._response_type(2, version)
    rt = element(resp_cls, "topics")
    rp = element(rt, "partitions")
    broker = blank(
        resp_cls,
        topics=tuple(
            blank(rt, name=n, partitions=(blank(rp, partition_index=0, error_code=0, offset=99),))
            for n in ("secret", "orders-a")
        ),
    )
    got = decode_answer(2, version, screened.after(answer_frame(2, version, broker)))
    assert [
        (t.name, [(int(p.error_code), int(getattr(p, "offset", -1))) for p in t.partitions]) for t in got.topics
    ] == [
        ("secret", [(29, -1)]),
        ("orders-a", [(0, 99 if version >= 1 else -1)]),
    ]


# -- Groups -----------------------------------------------------------------------------------

GROUP_APIS = [protocol.api_name(k) and k for k in sorted(access.GROUP_KEYED) if k in protocol.SUPPORTED]


@pytest.mark.parametrize(("key", "version"), [(k, v) for k in GROUP_APIS for v in versions(k)], ids=lambda x: str(x))
def test_a_denied_group_is_answered_30_by_the_gateway(key: int, version: int) -> None:
    cls = protocol._request_type(key, version)
    values: dict[str, Any] = {"group_id": "other-group"}
    if "topics" in {f.name for f in access.dataclasses.fields(cls)}:
        t_cls = element(cls, "topics")
        p_cls = element(t_cls, "partitions")
        values["topics"] = (blank(t_cls, name="orders-a", partitions=(blank(p_cls, partition_index=1),)),)
    screened, _ = run(ENT, key, version, blank(cls, **values))
    assert screened is not None and screened.frame is None and screened.answer is not None
    assert screened.denied == (Denied("other-group", 1),)
    answer = decode_answer(key, version, screened.answer)
    if hasattr(answer, "error_code"):
        assert answer.error_code == 30
    else:  # OffsetCommit, TxnOffsetCommit: per partition
        assert [int(p.error_code) for t in answer.topics for p in t.partitions] == [30]


@pytest.mark.parametrize("version", versions(protocol.FIND_COORDINATOR))
def test_find_coordinator_of_a_denied_group_answers_30(version: int) -> None:
    cls = protocol._request_type(protocol.FIND_COORDINATOR, version)
    if version < 4:
        request = blank(cls, key="other", key_type=0)
    else:
        request = blank(cls, key_type=0, coordinator_keys=("other",))
    screened, _ = run(ENT, protocol.FIND_COORDINATOR, version, request)
    assert screened is not None and screened.answer is not None
    answer = decode_answer(protocol.FIND_COORDINATOR, version, screened.answer)
    codes = [answer.error_code] if version < 4 else [c.error_code for c in answer.coordinators]
    assert codes == [30]
    allowed = (
        blank(cls, key="orders-g", key_type=0)
        if version < 4
        else blank(cls, key_type=0, coordinator_keys=("orders-g",))
    )
    assert run(ENT, protocol.FIND_COORDINATOR, version, allowed)[0] is None


@pytest.mark.parametrize("version", versions(access.OFFSET_FETCH))
def test_offset_fetch_screens_denied_groups_and_topics(version: int) -> None:
    cls = protocol._request_type(access.OFFSET_FETCH, version)
    if version < 8:
        t_cls = element(cls, "topics")
        request = blank(cls, group_id="other", topics=(blank(t_cls, name="orders-a", partition_indexes=(0,)),))
        screened, _ = run(ENT, access.OFFSET_FETCH, version, request)
        assert screened is not None and screened.answer is not None
        answer = decode_answer(access.OFFSET_FETCH, version, screened.answer)
        assert [int(p.error_code) for t in answer.topics for p in t.partitions] == [30]
        request = blank(cls, group_id="orders-g", topics=None if version >= 2 else ())
        screened, _ = run(ENT, access.OFFSET_FETCH, version, request)
        assert screened is not None and screened.after is not None
        resp_cls = protocol._response_type(access.OFFSET_FETCH, version)
        rt = element(resp_cls, "topics")
        rp = element(rt, "partitions")
        broker = blank(
            resp_cls,
            error_code=0,
            topics=tuple(
                blank(rt, name=n, partitions=(blank(rp, partition_index=0, committed_offset=5, error_code=0),))
                for n in ("secret", "orders-a")
            ),
        )
        got = decode_answer(access.OFFSET_FETCH, version, screened.after(answer_frame(9, version, broker)))
        if version >= 2:  # every topic asked: the denied one left out
            assert [t.name for t in got.topics] == ["orders-a"]
        else:
            assert [(t.name, int(t.partitions[0].error_code)) for t in got.topics] == [("secret", 29), ("orders-a", 0)]
    else:
        g_cls = element(cls, "groups")
        gt = element(g_cls, "topics")
        named = tuple(blank(gt, name=n, partition_indexes=(0,)) for n in ("secret", "orders-a"))
        request = blank(
            cls, groups=(blank(g_cls, group_id="other", topics=None), blank(g_cls, group_id="orders-g", topics=named))
        )
        screened, _ = run(ENT, access.OFFSET_FETCH, version, request)
        assert screened is not None and screened.after is not None and screened.denied == (Denied("other", 1),)
        resp_cls = protocol._response_type(access.OFFSET_FETCH, version)
        rg = element(resp_cls, "groups")
        rt = element(rg, "topics")
        rp = element(rt, "partitions")
        topics = tuple(
            blank(rt, name=n, partitions=(blank(rp, partition_index=0, committed_offset=5, error_code=0),))
            for n in ("secret", "orders-a")
        )
        broker = blank(
            resp_cls, groups=(blank(rg, group_id="other", topics=topics), blank(rg, group_id="orders-g", topics=topics))
        )
        got = decode_answer(9, version, screened.after(answer_frame(9, version, broker)))
        assert [(g.group_id, int(g.error_code), [t.name for t in g.topics]) for g in got.groups] == [
            ("other", 30, []),
            ("orders-g", 0, ["secret", "orders-a"]),
        ]
        assert [int(t.partitions[0].error_code) for t in got.groups[1].topics] == [29, 0]


@pytest.mark.parametrize("version", versions(access.OFFSET_COMMIT))
def test_offset_commit_of_a_denied_topic_in_an_allowed_group_answers_29_for_it(version: int) -> None:
    cls = protocol._request_type(8, version)
    t_cls = element(cls, "topics")
    p_cls = element(t_cls, "partitions")
    topics = tuple(
        blank(t_cls, name=n, partitions=(blank(p_cls, partition_index=0, committed_offset=3),))
        for n in ("secret", "feed")
    )
    screened, _ = run(ENT, 8, version, blank(cls, group_id="orders-g", topics=topics))
    assert screened is not None and screened.frame is not None and screened.after is not None
    assert [t.name for t in decode_request(8, version, screened.frame).topics] == ["feed"]
    resp_cls = protocol._response_type(8, version)
    rt = element(resp_cls, "topics")
    rp = element(rt, "partitions")
    broker = blank(resp_cls, topics=(blank(rt, name="feed", partitions=(blank(rp, partition_index=0, error_code=0),)),))
    got = decode_answer(8, version, screened.after(answer_frame(8, version, broker)))
    assert [(t.name, int(t.partitions[0].error_code)) for t in got.topics] == [("secret", 29), ("feed", 0)]


def test_describe_and_list_groups_hide_denied_groups() -> None:
    cls = protocol._request_type(15, 5)
    screened, _ = run(ENT, 15, 5, blank(cls, groups=("other", "orders-g")))
    assert screened is not None and screened.after is not None
    resp_cls = protocol._response_type(15, 5)
    g = element(resp_cls, "groups")
    broker = blank(resp_cls, groups=(blank(g, group_id="other", group_state="Stable"), blank(g, group_id="orders-g")))
    got = decode_answer(15, 5, screened.after(answer_frame(15, 5, broker)))
    assert [(x.group_id, int(x.error_code), x.group_state) for x in got.groups] == [
        ("other", 30, ""),
        ("orders-g", 0, ""),
    ]
    screened, _ = run(ENT, 16, 4, blank(protocol._request_type(16, 4), states_filter=()))
    assert screened is not None and screened.after is not None
    resp_cls = protocol._response_type(16, 4)
    g = element(resp_cls, "groups")
    broker = blank(resp_cls, error_code=0, groups=(blank(g, group_id="other"), blank(g, group_id="orders-g")))
    assert [x.group_id for x in decode_answer(16, 4, screened.after(answer_frame(16, 4, broker))).groups] == [
        "orders-g"
    ]


# -- administration ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", versions(19))
def test_create_topics_answers_29_for_a_restricted_account(version: int) -> None:
    cls = protocol._request_type(19, version)
    t_cls = element(cls, "topics")
    request = blank(cls, topics=(blank(t_cls, name="orders-new", num_partitions=1, replication_factor=1),))
    screened, _ = run(ENT, 19, version, request)
    assert screened is not None and screened.frame is None and screened.answer is not None
    answer = decode_answer(19, version, screened.answer)
    assert [(t.name, int(t.error_code)) for t in answer.topics] == [("orders-new", 29)]


def test_apis_a_restricted_account_may_not_use_close_the_connection() -> None:
    cls = protocol._request_type(30, 3)  # CreateAcls
    frame, end = request_frame(30, 3, blank(cls, creations=()))
    with pytest.raises(AccessRefused, match="create_acls"):
        screen(ENT, 30, 3, frame, end, 7)
    assert screen(Entitlement("acme"), 30, 3, frame, end, 7) is None  # unrestricted


# -- denied events ------------------------------------------------------------------------------


def test_denied_events_count_denied_requests_only_and_are_never_metered() -> None:
    now = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    ctx = RequestContext("User:acme/orders-svc", "cid", "127.0.0.1", "vc", 9)
    evs = denied_events(PRODUCE_TYPE, "//gw", ctx, [Denied("secret", 3)], now)
    evs += denied_events(CONSUME_TYPE, "//gw", ctx, [Denied("secret", 1)], now)
    limits = Limits(int(now.timestamp() * 1000), 35 * 86_400_000, 300_000, 2**31)
    decoded = [proxy_decoder.decode(v, limits) for _, v in evs]
    assert [(e.direction, e.bytes, e.records, e.requests, e.denied_requests) for e in decoded] == [  # type: ignore[union-attr]
        ("produce", 0, 0, 0, 3),
        ("consume", 0, 0, 0, 1),
    ]
    doc = orjson.loads(evs[0][1])
    assert doc["data"]["outcome"] == "denied" and "partition" not in doc["data"]


@pytest.mark.parametrize("version", versions(protocol.METADATA))
def test_metadata_topics_a_broker_adds_to_a_named_request_are_screened_too(version: int) -> None:
    screened, _ = run(ENT, protocol.METADATA, version, metadata_request(version, ["orders-a"]))
    assert screened is not None and screened.after is not None and screened.denied == ()
    broker = answer_frame(protocol.METADATA, version, metadata_answer(version, ["secret", "orders-a", "feed"]))
    got = decode_answer(protocol.METADATA, version, screened.after(broker))
    assert [t.name for t in got.topics] == ["orders-a", "feed"]


@pytest.mark.parametrize("version", versions(69))
def test_consumer_group_describe_answers_30_for_a_denied_group(version: int) -> None:
    screened, _ = run(ENT, 69, version, blank(protocol._request_type(69, version), group_ids=("other", "orders-g")))
    assert screened is not None and screened.after is not None and screened.denied == (Denied("other", 1),)
    resp_cls = protocol._response_type(69, version)
    g = element(resp_cls, "groups")
    broker = blank(resp_cls, groups=(blank(g, group_id="other", group_state="Stable"), blank(g, group_id="orders-g")))
    got = decode_answer(69, version, screened.after(answer_frame(69, version, broker)))
    assert [(x.group_id, int(x.error_code)) for x in got.groups] == [("other", 30), ("orders-g", 0)]
