"""Kafka wire format at the byte level: request headers, tagged fields and record-batch headers.

Pure functions over ``bytes``; nothing here decodes record data. Record batches are counted from
their headers alone (no decompression), in the layout of Kafka's ``DefaultRecordBatch``:

====== ======================= =====
offset field                   size
====== ======================= =====
0      base offset             8
8      batch length            4     (bytes after this field: a batch is 12 + length bytes)
12     partition leader epoch  4
16     magic                   1     (2 = record batch; 0/1 = a legacy message, same offset)
17     crc                     4
21     attributes              2     (bit 5: a control batch — a transaction marker)
23     last offset delta       4
27     base timestamp          8
35     max timestamp           8
43     producer id             8
51     producer epoch          2
53     base sequence           4
57     record count            4
====== ======================= =====
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from gateway.errors import ProtocolViolation

__all__ = [
    "BATCH_HEADER",
    "BatchCount",
    "RequestHeader",
    "batch_identity",
    "count_batches",
    "parse_request_header",
    "read_uvarint",
    "skip_tagged_fields",
]

BATCH_HEADER = 61  # bytes of a magic-2 batch header, up to and including the record count
_LOG_OVERHEAD = 12  # base offset + batch length
_CONTROL = 0x20
_i16 = struct.Struct(">h").unpack_from
_i32 = struct.Struct(">i").unpack_from
_head = struct.Struct(">hhi").unpack_from


class RequestHeader(NamedTuple):
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str
    end: int  # offset after the client id (a flexible header's tagged fields follow)


class BatchCount(NamedTuple):
    records: int
    bytes: int  # record-batch bytes as on the wire (12 + batch length, per whole batch)
    batches: int
    partial: int  # bytes of a trailing incomplete batch (Fetch responses end with one), not counted


def parse_request_header(frame: bytes) -> RequestHeader:
    """The fields every request header version shares (v1 and v2 differ only in the tagged fields
    after the client id). :class:`ProtocolViolation` for a frame too short to hold them."""
    if len(frame) < 10:
        raise ProtocolViolation(f"a request of {len(frame)} bytes is shorter than a request header")
    api_key, api_version, correlation_id = _head(frame, 0)
    (n,) = _i16(frame, 8)
    end = 10 + max(n, 0)
    if n < -1 or end > len(frame):
        raise ProtocolViolation("the request header's client id runs past the end of the request")
    try:
        client_id = frame[10:end].decode("utf-8") if n > 0 else ""
    except UnicodeDecodeError:
        raise ProtocolViolation("the request header's client id is not UTF-8") from None
    return RequestHeader(api_key, api_version, correlation_id, client_id, end)


def read_uvarint(buf: bytes, offset: int) -> tuple[int, int]:
    """An unsigned varint at ``offset`` → (value, offset after it)."""
    value = shift = 0
    while True:
        if offset >= len(buf) or shift > 28:
            raise ProtocolViolation("a varint runs past the end of the message or is too long")
        b = buf[offset]
        offset += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, offset
        shift += 7


def skip_tagged_fields(buf: bytes, offset: int) -> int:
    """The offset after a tagged-field section (a count, then tag, size and bytes per field)."""
    count, offset = read_uvarint(buf, offset)
    for _ in range(count):
        _, offset = read_uvarint(buf, offset)
        size, offset = read_uvarint(buf, offset)
        offset += size
        if offset > len(buf):
            raise ProtocolViolation("a tagged field runs past the end of the message")
    return offset


def count_batches(records: bytes | None) -> BatchCount:
    """Records and bytes of the whole record batches in a ``records`` field, from their headers.

    A Fetch response may end with a batch cut short by the fetch size limit: the client cannot
    use it and fetches it again, so it is left out (``partial`` says how many bytes it had).
    Control batches (transaction markers) hold no user records and are left out too. A legacy
    message (magic 0 or 1) counts as one record: its compressed wrappers are not opened.
    """
    if not records:
        return BatchCount(0, 0, 0, 0)
    n = len(records)
    pos = nrec = nbytes = nbatch = 0
    while pos + _LOG_OVERHEAD <= n:
        (length,) = _i32(records, pos + 8)
        end = pos + _LOG_OVERHEAD + length
        if length < 0 or end > n:
            break
        if pos + 17 > end:
            break  # not even a magic byte: malformed, stop counting here
        if records[pos + 16] >= 2:
            if pos + BATCH_HEADER > end:
                break
            (attributes,) = _i16(records, pos + 21)
            if not attributes & _CONTROL:
                (count,) = _i32(records, pos + 57)
                nrec += max(count, 0)
                nbytes += end - pos
                nbatch += 1
        else:
            nrec += 1
            nbytes += end - pos
            nbatch += 1
        pos = end
    return BatchCount(nrec, nbytes, nbatch, n - pos)


def batch_identity(records: bytes | None) -> tuple[int, int, int, int] | None:
    """(producer id, producer epoch, base sequence, record count) of the first batch of a Produce
    partition's ``records`` when an idempotent or transactional producer wrote it, else None.

    This is the identity by which a broker recognises a retried batch (KIP-98); a producer
    retries a batch with the same four values, so an audit event derived from them is the same
    event however often the batch is sent.
    """
    if not records or len(records) < BATCH_HEADER or records[16] < 2:
        return None
    producer_id, epoch, base_sequence, count = struct.unpack_from(">qhii", records, 43)
    if producer_id < 0:
        return None
    return producer_id, epoch, base_sequence, count
