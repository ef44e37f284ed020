"""Record batches counted from their headers; request headers; gateway settings."""

from __future__ import annotations

import struct

import pytest

from gateway.errors import GatewaySettingsError, ProtocolViolation
from gateway.settings import GatewaySettings
from gateway.wire import count_batches, parse_request_header


def batch(records: int, payload: int, *, control: bool = False, magic: int = 2) -> bytes:
    """A record batch whose header says ``records`` records, with ``payload`` bytes after it
    (the counter never looks past the header, so the payload may be anything — compressed)."""
    body = (
        struct.pack(
            ">ibIhiqqqhii",
            0,  # partition leader epoch
            magic,
            0,  # crc
            0x20 if control else 0x03,  # attributes (zstd)
            records - 1,
            0,
            0,
            -1,
            -1,
            -1,
            records,
        )
        + b"\xab" * payload
    )
    return struct.pack(">qi", 1000, len(body)) + body


def test_whole_batches_are_counted_from_their_headers() -> None:
    data = batch(3, 10) + batch(100, 500) + batch(1, 0)
    c = count_batches(data)
    assert (c.records, c.bytes, c.batches, c.partial) == (104, len(data), 3, 0)


def test_a_trailing_partial_batch_is_not_counted() -> None:
    whole = batch(5, 100) + batch(7, 100)
    for cut in (1, 11, 12, 40, 61, 150):
        data = whole + batch(9, 300)[:cut]
        c = count_batches(data)
        assert (c.records, c.bytes, c.partial) == (12, len(whole), cut), cut


def test_control_batches_hold_no_records() -> None:
    c = count_batches(batch(4, 20) + batch(1, 10, control=True))
    assert (c.records, c.bytes, c.batches) == (4, len(batch(4, 20)), 1)


def test_a_legacy_message_counts_as_one_record() -> None:
    legacy = struct.pack(">qi", 0, 20) + b"\x00" * 4 + b"\x01" + b"\x00" * 15
    assert count_batches(legacy)[:3] == (1, 32, 1)


@pytest.mark.parametrize(
    "data", [b"", None, b"\x00" * 11, struct.pack(">qi", 0, -4) + b"\x00" * 50, struct.pack(">qi", 0, 3) + b"abc"]
)
def test_nothing_or_garbage_counts_nothing(data: bytes | None) -> None:
    assert count_batches(data)[:3] == (0, 0, 0)


def test_request_header_fields() -> None:
    frame = struct.pack(">hhih", 0, 9, 77, 5) + b"app-1" + b"\x00rest"
    h = parse_request_header(frame)
    assert (h.api_key, h.api_version, h.correlation_id, h.client_id, h.end) == (0, 9, 77, "app-1", 15)
    assert parse_request_header(struct.pack(">hhih", 3, 1, 1, -1)).client_id == ""


@pytest.mark.parametrize(
    "frame",
    [b"", b"\x00" * 9, struct.pack(">hhih", 0, 9, 1, 50) + b"short", struct.pack(">hhih", 0, 9, 1, -7)],
)
def test_a_truncated_header_is_a_violation(frame: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_request_header(frame)


def test_settings_defaults_and_derived_ports() -> None:
    s = GatewaySettings.from_env({})
    assert (s.listen_host, s.listen_port, s.advertised_host, s.virtual_cluster) == (
        "127.0.0.1",
        19092,
        "127.0.0.1",
        "default",
    )
    assert [s.broker_port(i) for i in range(3)] == [19093, 19094, 19095]
    s = GatewaySettings.from_env(
        {
            "STREAMTOLL_GATEWAY_LISTEN": "0.0.0.0:9092",
            "STREAMTOLL_GATEWAY_ADVERTISED_HOST": "gw.example.com",
            "STREAMTOLL_GATEWAY_ALLOW_PLAINTEXT": "true",
            "STREAMTOLL_GATEWAY_BROKER_PORTS": "9101, 9102",
            "STREAMTOLL_GATEWAY_UPSTREAM_BOOTSTRAP": "k0:9092,k1:9092",
        }
    )
    assert (s.advertised_host, s.broker_port(1), s.broker_port(2)) == ("gw.example.com", 9102, None)
    assert s.upstream("ignored:1") == [("k0", 9092), ("k1", 9092)]


def test_every_bad_setting_is_reported_at_once() -> None:
    with pytest.raises(GatewaySettingsError) as err:
        GatewaySettings.from_env(
            {
                "STREAMTOLL_GATEWAY_LISTEN": "0.0.0.0:99999",
                "STREAMTOLL_GATEWAY_BROKER_PORTS": "19093,x",
                "STREAMTOLL_GATEWAY_UPSTREAM_BOOTSTRAP": "nope",
                "STREAMTOLL_GATEWAY_MAX_REQUEST_BYTES": "12",
            }
        )
    text = "\n".join(err.value.problems)
    for name in ("GATEWAY_LISTEN", "GATEWAY_BROKER_PORTS", "GATEWAY_UPSTREAM_BOOTSTRAP", "GATEWAY_MAX_REQUEST_BYTES"):
        assert name in text
    with pytest.raises(GatewaySettingsError, match="GATEWAY_ADVERTISED_HOST must be set"):
        GatewaySettings.from_env({"STREAMTOLL_GATEWAY_LISTEN": "0.0.0.0:9092"})
