"""The audit journal's format: append, replay after a restart, a torn write at the end cut off,
confirmation and the deletion of confirmed segments; the journal settings; the answers the
gateway gives while the journal is full; event ids that survive a client's retry."""

from __future__ import annotations

import datetime
import os
import struct
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from kio.static.primitive import i16, i32, i32Timedelta

from gateway import journal as journal_module
from gateway import protocol
from gateway.errors import GatewaySettingsError
from gateway.journal import Journal, JournalBusy
from gateway.metering import Counted, RequestContext, acknowledged, audit_event
from gateway.settings import GatewaySettings
from gateway.wire import batch_identity


def _events(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(b"User:u%d" % (i % 3), orjson.dumps({"n": i, "pad": "x" * (i % 50)})) for i in range(start, start + n)]


def _read_all(j: Journal, from_seq: int) -> list[tuple[int, bytes, bytes]]:
    out: list[tuple[int, bytes, bytes]] = []
    while batch := j.read(from_seq, 7):  # small reads: the reader resumes where it stopped
        out += batch
        from_seq = batch[-1][0] + 1
    return out


def _segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.log"))


def test_events_are_read_back_in_order_after_a_restart(tmp_path: Path) -> None:
    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=800)
    first = _events(50)
    for i in range(0, 50, 5):  # a batch goes whole into one segment
        assert j.append(first[i : i + 5]) == i + 5
    assert [(k, v) for _, k, v in _read_all(j, 1)] == first  # from memory
    j.close()
    assert len(_segments(tmp_path)) > 2  # the test spans several segments

    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=800)
    assert (j.recovered, j.depth(), j.next_seq) == (50, 50, 51)
    got = _read_all(j, 1)  # from disk
    assert [s for s, _, _ in got] == list(range(1, 51))
    assert [(k, v) for _, k, v in got] == first
    assert [(k, v) for _, k, v in _read_all(j, 31)] == first[30:]
    j.append(_events(5, 50))
    assert [s for s, _, _ in _read_all(j, 49)] == [49, 50, 51, 52, 53, 54, 55]
    j.close()


def test_a_torn_write_at_the_end_is_cut_off_and_appending_goes_on(tmp_path: Path) -> None:
    j = Journal(tmp_path, max_bytes=1 << 20)
    j.append(_events(10))
    j.close()
    seg = _segments(tmp_path)[-1]
    whole = seg.stat().st_size
    with open(seg, "ab") as f:  # a crash in the middle of the next append
        f.write(journal_module._record(11, 0, b"User:x", b"y" * 300)[:150])

    j = Journal(tmp_path, max_bytes=1 << 20)
    assert (j.torn_bytes, j.next_seq, j.depth()) == (150, 11, 10)
    assert seg.stat().st_size == whole
    j.append(_events(2, 10))
    assert [s for s, _, _ in _read_all(j, 1)] == list(range(1, 13))
    j.close()

    # a last record whose bytes are all there but do not match their CRC is torn too
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF
    seg.write_bytes(bytes(data))
    j = Journal(tmp_path, max_bytes=1 << 20)
    assert j.next_seq == 12 and j.torn_bytes > 0
    assert [v for _, _, v in _read_all(j, 1)] == [v for _, v in _events(11)]
    j.close()


def test_confirmation_deletes_covered_segments_and_survives_a_restart(tmp_path: Path) -> None:
    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=1500)
    for i in range(10):
        j.append(_events(5, i * 5))
    segments_before = len(_segments(tmp_path))
    size_before = j.bytes()
    j.confirm(32)
    assert j.depth() == 18
    assert len(_segments(tmp_path)) < segments_before
    assert j.bytes() == sum(p.stat().st_size for p in _segments(tmp_path)) < size_before
    assert _read_all(j, 33)[0][0] == 33
    j.confirm(20)  # a mark never moves back
    assert j.confirmed == 32
    j.close()

    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=1500)
    assert (j.confirmed, j.recovered, j.next_seq) == (32, 18, 51)
    assert [s for s, _, _ in _read_all(j, j.confirmed + 1)] == list(range(33, 51))
    j.confirm(50)  # everything: only the segment being appended to is left
    assert len(_segments(tmp_path)) == 1 and j.depth() == 0 and j.oldest_ms() is None
    j.append(_events(1))
    j.close()
    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=1500)
    assert (j.next_seq, j.recovered) == (52, 1)
    j.close()


def test_everything_confirmed_and_deleted_then_seqs_go_on(tmp_path: Path) -> None:
    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    for i in range(6):
        j.append(_events(1, i))
    j.confirm(6)
    j.close()
    for p in _segments(tmp_path):  # even with no segment left, seqs are never reused
        p.unlink()
    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    assert (j.next_seq, j.depth()) == (7, 0)
    assert j.append(_events(1)) == 7
    j.close()


def test_a_corrupt_older_segment_loses_only_its_damaged_part(tmp_path: Path) -> None:
    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    for i in range(12):
        j.append(_events(2, i * 2))
    j.close()
    first = _segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    assert j.lost_bytes > 0 and j.torn_bytes == 0
    seqs = [s for s, _, _ in _read_all(j, 1)]
    assert seqs == sorted(seqs) and seqs[-1] == 24 and len(seqs) < 24  # a gap, then the rest
    j.close()


def test_full_age_and_one_process_per_directory(tmp_path: Path) -> None:
    j = Journal(tmp_path, max_bytes=65536)
    with pytest.raises(JournalBusy, match="another gateway"):
        Journal(tmp_path, max_bytes=65536)
    assert not j.full() and j.oldest_ms() is None
    j.append(_events(10), now_ms=1_000_000)
    j.append(_events(10), now_ms=1_000_050)
    j.append(_events(10), now_ms=1_000_500)
    assert j.oldest_ms() == 1_000_000
    j.confirm(20)  # the oldest waiting one was appended at 1_000_500 (marks every 100 ms)
    assert j.oldest_ms() == 1_000_500
    while not j.full():
        j.append(_events(50))
    assert j.bytes() >= 65536
    j.close()
    Journal(tmp_path, max_bytes=65536).close()  # the lock goes with the journal


def test_journal_settings_are_validated() -> None:
    s = GatewaySettings.from_env(
        {
            "STREAMTOLL_GATEWAY_JOURNAL_DIR": "/var/lib/gw",
            "STREAMTOLL_GATEWAY_JOURNAL_MAX_BYTES": "1048576",
            "STREAMTOLL_GATEWAY_JOURNAL_FULL": "drop",
            "STREAMTOLL_GATEWAY_JOURNAL_FSYNC": "200ms",
        }
    )
    got = (s.journal_dir, s.journal_max_bytes, s.journal_full, s.journal_fsync)
    assert got == ("/var/lib/gw", 1 << 20, "drop", 0.2)
    assert GatewaySettings.from_env({"STREAMTOLL_GATEWAY_JOURNAL_FSYNC": "always"}).journal_fsync is None
    d = GatewaySettings.from_env({})
    assert (d.journal_full, d.journal_fsync, d.journal_max_bytes) == ("refuse", 1.0, 1 << 30)
    with pytest.raises(GatewaySettingsError) as err:
        GatewaySettings.from_env(
            {
                "STREAMTOLL_GATEWAY_JOURNAL_MAX_BYTES": "100",
                "STREAMTOLL_GATEWAY_JOURNAL_FULL": "block",
                "STREAMTOLL_GATEWAY_JOURNAL_FSYNC": "often",
            }
        )
    assert [p.split("=")[0] for p in err.value.problems] == [
        "STREAMTOLL_GATEWAY_JOURNAL_MAX_BYTES",
        "STREAMTOLL_GATEWAY_JOURNAL_FULL",
        "STREAMTOLL_GATEWAY_JOURNAL_FSYNC",
    ]


def _produce_request(version: int) -> Any:
    cls = protocol._request_type(protocol.PRODUCE, version)
    mod = sys.modules[cls.__module__]
    parts = tuple(protocol._build(mod.PartitionProduceData, index=i32(p), records=None) for p in (0, 3))
    return protocol._build(
        cls,
        acks=i16(-1),
        timeout=i32Timedelta.parse(datetime.timedelta(seconds=5)),
        topic_data=(protocol._build(mod.TopicProduceData, name="orders", partition_data=parts),),
    )


@pytest.mark.parametrize("version", range(protocol.SUPPORTED[protocol.PRODUCE][0], 13))
def test_a_refused_produce_says_not_enough_replicas_for_every_partition(version: int) -> None:
    frame = protocol.refusal(protocol.PRODUCE, version, 42, _produce_request(version))
    assert struct.unpack(">i", frame[:4])[0] == 42
    r = protocol.decode_response(frame, protocol.PRODUCE, version, protocol.response_body_offset(frame, 0, version))
    assert r.throttle_time == datetime.timedelta(milliseconds=protocol.REFUSE_THROTTLE_MS)
    parts = [(t.name, p.index, p.error_code) for t in r.responses for p in t.partition_responses]
    assert parts == [("orders", 0, 19), ("orders", 3, 19)]
    assert acknowledged(r) == set()  # nothing of it is metered


@pytest.mark.parametrize("version", range(protocol.SUPPORTED[protocol.FETCH][0], 13))
def test_a_refused_fetch_is_empty_and_throttled(version: int) -> None:
    frame = protocol.refusal(protocol.FETCH, version, 7)
    r = protocol.decode_response(frame, protocol.FETCH, version, protocol.response_body_offset(frame, 1, version))
    assert r.throttle_time == datetime.timedelta(milliseconds=protocol.REFUSE_THROTTLE_MS)
    assert r.responses == () and getattr(r, "error_code", 0) == 0


def _batch(producer_id: int, epoch: int, sequence: int, records: int) -> bytes:
    body = struct.pack(">ibIhiqqqhii", 0, 2, 0, 0, records - 1, 0, 0, producer_id, epoch, sequence, records)
    return struct.pack(">qi", 0, len(body)) + body + os.urandom(20)


def test_a_retried_idempotent_batch_is_the_same_event() -> None:
    ctx = RequestContext("User:a", "c", "10.0.0.1", "vc", 9)
    now = datetime.datetime.now(datetime.UTC)

    def event_id(records: bytes) -> str:
        c = Counted("t", 1, 5, len(records), batch_identity(records))
        return str(orjson.loads(audit_event("io.streamtoll.kafka.produce", "//gw", ctx, c, now)[1])["id"])

    idempotent = _batch(4711, 0, 100, 5)
    assert batch_identity(idempotent) == (4711, 0, 100, 5)
    assert event_id(idempotent) == event_id(idempotent[:-20] + os.urandom(20))  # the retry
    assert event_id(idempotent) != event_id(_batch(4711, 0, 105, 5))  # the next batch
    assert event_id(idempotent) != event_id(_batch(4711, 1, 100, 5))  # after an epoch bump
    plain = _batch(-1, -1, -1, 5)
    assert batch_identity(plain) is None
    assert event_id(plain) != event_id(plain)  # no identity: every event its own


def test_a_duplicate_of_a_stored_idempotent_batch_is_acknowledged() -> None:
    """A broker may answer a retried idempotent batch it already holds with
    DUPLICATE_SEQUENCE_NUMBER; the producer counts it delivered, so the gateway meters it (its
    batch-derived id makes a metered first write and this one a single event)."""
    from kio.schema.errors import ErrorCode
    from kio.schema.produce.v9.response import PartitionProduceResponse, ProduceResponse, TopicProduceResponse
    from kio.schema.types import TopicName
    from kio.static.primitive import i64

    def part(index: int, error: int) -> Any:
        return PartitionProduceResponse(
            index=i32(index),
            error_code=ErrorCode(error),
            base_offset=i64(0),
            record_errors=(),
        )

    parts = (part(0, 0), part(1, 46), part(2, 19))
    r = ProduceResponse(responses=(TopicProduceResponse(name=TopicName("t"), partition_responses=parts),))
    assert acknowledged(r) == {("t", 0), ("t", 1)}
