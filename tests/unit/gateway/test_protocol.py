"""Address rewriting over encoded responses that list several brokers, for every version of
Metadata, FindCoordinator and DescribeCluster the gateway forwards; ApiVersions capping."""

from __future__ import annotations

import dataclasses
import io
import sys
from datetime import timedelta
from typing import Any

import pytest
from kio.index import load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i16, i32

from gateway import protocol
from gateway.proxy import Topology
from gateway.settings import GatewaySettings

BROKERS = [(5, "kafka-5.internal", 9092, "rack-a"), (1, "kafka-1.internal", 9093, None), (3, "10.0.0.3", 19092, "b")]


def _make(cls: type[Any], **candidates: Any) -> Any:
    """An instance of a kio class of any version, from the candidate fields it has."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in candidates.items() if k in names})


def _module(cls: type[Any]) -> Any:
    return sys.modules[cls.__module__]


def _response(api_key: int, version: int) -> Any:
    cls = load_response_schema(api_key, version)
    mod = _module(cls)
    common = {
        "throttle_time": timedelta(0),
        "error_code": ErrorCode.none,
        "error_message": None,
        "cluster_id": "cluster-x",
        "controller_id": i32(1),
        "topics": (),
        "endpoint_type": 1,
    }
    if api_key == protocol.METADATA:
        brokers = tuple(
            _make(mod.MetadataResponseBroker, node_id=i32(n), host=h, port=i32(p), rack=r) for n, h, p, r in BROKERS
        )
        return _make(cls, brokers=brokers, **common)
    if api_key == protocol.DESCRIBE_CLUSTER:
        brokers = tuple(
            _make(mod.DescribeClusterBroker, broker_id=i32(n), host=h, port=i32(p), rack=r, is_fenced=False)
            for n, h, p, r in BROKERS
        )
        return _make(cls, brokers=brokers, **common)
    assert api_key == protocol.FIND_COORDINATOR
    if version >= 4:
        found = [
            _make(
                mod.Coordinator,
                key=f"g{n}",
                node_id=i32(n),
                host=h,
                port=i32(p),
                error_code=ErrorCode.none,
                error_message=None,
            )
            for n, h, p, _ in BROKERS
        ]
        missing = _make(
            mod.Coordinator,
            key="missing",
            node_id=i32(-1),
            host="",
            port=i32(-1),
            error_code=ErrorCode.coordinator_not_available,
            error_message=None,
        )
        coordinators = (*found, missing)
        return _make(cls, coordinators=coordinators, **common)
    n, h, p, _ = BROKERS[0]
    return _make(cls, node_id=i32(n), host=h, port=i32(p), **common)


def _frame(api_key: int, version: int, value: Any) -> bytes:
    buf = io.BytesIO(i32(42).to_bytes(4, "big"))
    buf.seek(4)
    if value.__flexible__:
        buf.write(b"\x00")  # response header v1: no tagged fields
    entity_writer(type(value))(buf, value)
    return buf.getvalue()


def _cases() -> list[tuple[int, int]]:
    return [
        (key, v)
        for key in (protocol.METADATA, protocol.FIND_COORDINATOR, protocol.DESCRIBE_CLUSTER)
        for v in range(protocol.SUPPORTED[key][0], protocol.SUPPORTED[key][1] + 1)
    ]


def _addresses(value: Any) -> list[tuple[int, str, int]]:
    if hasattr(value, "brokers"):
        return [(int(getattr(b, "node_id", getattr(b, "broker_id", -1))), b.host, int(b.port)) for b in value.brokers]
    if hasattr(value, "coordinators"):
        return [(int(c.node_id), c.host, int(c.port)) for c in value.coordinators]
    return [(int(value.node_id), value.host, int(value.port))]


@pytest.mark.parametrize(("api_key", "version"), _cases(), ids=lambda x: str(x))
def test_every_broker_address_is_the_gateways(api_key: int, version: int) -> None:
    topology = Topology(GatewaySettings(listen_port=19092, advertised_host="gw.example.com"))
    original = _response(api_key, version)
    frame = _frame(api_key, version, original)

    rewritten = protocol.rewrite_response(frame, api_key, version, topology.address)

    assert rewritten[:4] == frame[:4]  # the correlation id
    body = protocol.response_body_offset(rewritten, api_key, version)
    value, size = entity_reader(load_response_schema(api_key, version))(rewritten, body)
    assert body + size == len(rewritten)
    before, after = _addresses(original), _addresses(value)
    assert [n for n, _, _ in after] == [n for n, _, _ in before]
    for (node, host, port), (_, old_host, old_port) in zip(after, before, strict=True):
        if node < 0:  # "no coordinator" stays as the broker said
            assert (host, port) == (old_host, old_port)
        else:
            assert (host, port) == ("gw.example.com", topology.port_of[node])
            assert topology.upstream[node] == (old_host, old_port)
    # everything else is untouched
    strip = {"brokers", "coordinators", "host", "port"}
    for f in dataclasses.fields(value):
        if f.name not in strip:
            assert getattr(value, f.name) == getattr(original, f.name), f.name
    if api_key != protocol.FIND_COORDINATOR:
        assert [getattr(b, "rack", None) for b in value.brokers] == [getattr(b, "rack", None) for b in original.brokers]


def test_brokers_get_ports_by_node_id_then_by_first_sight() -> None:
    topology = Topology(GatewaySettings(listen_port=19092))
    topology.seed({5: ("a", 1), 1: ("b", 2), 3: ("c", 3)})
    assert topology.port_of == {1: 19093, 3: 19094, 5: 19095}
    assert topology.address(2, "d", 4) == ("127.0.0.1", 19096)  # a broker added later
    assert topology.address(1, "b2", 9) == ("127.0.0.1", 19093)  # moved: same gateway port, new upstream
    assert topology.upstream[1] == ("b2", 9)


def test_a_broker_beyond_the_listed_ports_is_sent_to_the_bootstrap_port() -> None:
    topology = Topology(GatewaySettings(listen_port=9000, broker_ports=(9001,)))
    assert topology.address(1, "a", 1) == ("127.0.0.1", 9001)
    assert topology.address(2, "b", 1) == ("127.0.0.1", 9000)


@pytest.mark.parametrize("version", range(0, protocol.SUPPORTED[protocol.API_VERSIONS][1] + 1))
def test_api_versions_are_capped_to_what_the_gateway_forwards(version: int) -> None:
    cls = load_response_schema(protocol.API_VERSIONS, version)
    mod = _module(cls)
    upstream = {0: (0, 13), 1: (0, 18), 3: (0, 13), 18: (0, 9), 78: (0, 1), 52: (0, 2), 999: (0, 0)}
    value = _make(
        cls,
        error_code=ErrorCode.none,
        api_keys=tuple(
            mod.ApiVersion(api_key=i16(k), min_version=i16(lo), max_version=i16(hi)) for k, (lo, hi) in upstream.items()
        ),
        throttle_time=timedelta(0),
    )
    frame = i32(7).to_bytes(4, "big") + _encoded(value)  # ApiVersions responses use header v0
    capped, _ = entity_reader(cls)(protocol.cap_api_versions(frame, version), 4)
    ranges = {k.api_key: (k.min_version, k.max_version) for k in capped.api_keys}
    assert ranges == {0: (3, 12), 1: (4, 12), 3: (0, 13), 18: (0, protocol.SUPPORTED[18][1])}


def test_an_api_versions_error_answer_is_read_as_version_0() -> None:
    """A broker answers an ApiVersions version it does not know in version 0 with error 35."""
    from kio.schema.api_versions.v0.response import ApiVersion, ApiVersionsResponse

    value = ApiVersionsResponse(
        error_code=ErrorCode.unsupported_version,
        api_keys=(ApiVersion(api_key=i16(18), min_version=i16(0), max_version=i16(3)),),
    )
    frame = i32(7).to_bytes(4, "big") + _encoded(value)
    capped, _ = entity_reader(ApiVersionsResponse)(protocol.cap_api_versions(frame, 4), 4)
    assert capped == value


def _encoded(value: Any) -> bytes:
    buf = io.BytesIO()
    entity_writer(type(value))(buf, value)
    return buf.getvalue()


def test_produce_and_fetch_stop_before_topic_ids() -> None:
    assert protocol.SUPPORTED[protocol.PRODUCE] == (3, 12)
    assert protocol.SUPPORTED[protocol.FETCH][1] == 12
    assert not {78, 79, 76, 77} & set(protocol.SUPPORTED)  # share groups


@pytest.mark.parametrize(
    "version", range(protocol.SUPPORTED[protocol.PRODUCE][0], protocol.SUPPORTED[protocol.PRODUCE][1] + 1)
)
def test_produce_node_endpoints_are_the_gateways(version: int) -> None:
    """From v10 a Produce response names the new leader's address when a leader moved (KIP-951)."""
    cls = load_response_schema(protocol.PRODUCE, version)
    mod = _module(cls)
    partition = _make(
        mod.PartitionProduceResponse,
        index=i32(0),
        error_code=ErrorCode.not_leader_or_follower,
        base_offset=-1,
        log_append_time=None,
        record_errors=(),
    )
    topic = _make(mod.TopicProduceResponse, name="orders", partition_responses=(partition,))
    endpoints = tuple(
        mod.NodeEndpoint(node_id=i32(n), host=h, port=i32(p), rack=r)
        for n, h, p, r in BROKERS[:2]
        if hasattr(mod, "NodeEndpoint")
    )
    value = _make(cls, responses=(topic,), throttle_time=timedelta(0), node_endpoints=endpoints)
    frame = _frame(protocol.PRODUCE, version, value)
    topology = Topology(GatewaySettings(listen_port=19092, advertised_host="gw"))

    body = protocol.response_body_offset(frame, protocol.PRODUCE, version)
    decoded = protocol.decode_response(frame, protocol.PRODUCE, version, body)
    rewritten = protocol.rewrite_body(protocol.PRODUCE, version, decoded, topology.address)

    if version < 10:
        assert rewritten is None  # nothing to rewrite: the response goes out as the broker sent it
        return
    again, _ = entity_reader(cls)(protocol.encode(rewritten), 0)
    assert [(e.node_id, e.host, e.port) for e in again.node_endpoints] == [
        (n, "gw", topology.port_of[n]) for n, _, _, _ in BROKERS[:2]
    ]
    assert again.responses == value.responses
