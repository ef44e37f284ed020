"""The audit journal: proxy audit events on disk from the moment they exist until the audit topic
has them, so neither an unavailable audit cluster nor a ``kill -9`` of the gateway leaves an
acknowledged request unmetered.

Layout of ``GATEWAY_JOURNAL_DIR``:

* ``<first seq, 20 digits>.log`` — segments, appended in order; each event is one record::

      length  u32   bytes after the crc
      crc     u32   CRC-32 of those bytes
      seq     u64   1, 2, 3 … (never reused: a gap only where a corrupt segment lost records)
      time    i64   when it was appended (Unix ms): the journal's age
      keylen  u16
      key, value    the Kafka record (key = principal, value = the CloudEvent)

* ``confirmed`` — the highest seq such that it and every seq before it reached the audit topic
  (8 bytes + CRC-32, replaced atomically). Written at most every 100 ms: a kill loses at most that
  much confirmation, and those events are sent again at start (same ``id``: the worker's dedup
  drops the copies).
* ``LOCK`` — held (``flock``) while a gateway uses the directory: two gateways cannot share one.

At open the segments are read back: a record cut short or failing its CRC at the end of the last
segment (a write torn by a crash) is cut off and the file truncated there; a bad record inside an
older segment ends that segment (logged as an error with the bytes lost). A segment whose last
seq is confirmed is deleted, never the one being appended to. Appends go through one ``write``
per batch of events (in the page cache when it returns: a process kill loses nothing); ``sync``
is the ``fsync`` the writer calls by its policy (``GATEWAY_JOURNAL_FSYNC``).

The journal is *full* when its segments take ``max_bytes`` or more; what then happens is the
writer's policy (``GATEWAY_JOURNAL_FULL``). The bound is checked before a request is forwarded,
so the events of requests already in flight when it filled are still appended (the bound can be
passed by those).

Thread safety: ``append`` (the event loop) and ``read``/``confirm`` (the sender thread) may run
at once; one lock guards the shared state.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError

__all__ = ["Journal", "JournalBusy", "JournalEntry"]

log = logging.getLogger(__name__)

_FRAME = struct.Struct(">II")  # length, crc
_HEAD = struct.Struct(">QqH")  # seq, time ms, key length
_CONFIRMED = struct.Struct(">QI")
_SEGMENT = re.compile(r"^(\d{20})\.log$")
MAX_SEGMENT_BYTES = 64 << 20
TAIL_BYTES = 32 << 20  # newest events kept in memory too, so the sender rarely reads the disk
MARK_EVERY_MS = 100  # the journal's age is known to this resolution
READ_BYTES = 1 << 20

JournalEntry = tuple[int, bytes, bytes]  # seq, key, value


class JournalBusy(GatewayError):
    """Another process holds the journal directory."""


@dataclass
class _Segment:
    first: int
    path: Path
    size: int
    last: int  # seq of its last record (first - 1 while empty)


def _record(seq: int, now_ms: int, key: bytes, value: bytes) -> bytes:
    body = _HEAD.pack(seq, now_ms, len(key)) + key + value
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _parse(buf: bytes | memoryview, pos: int) -> tuple[int, int, bytes, bytes, int] | None:
    """(seq, time ms, key, value, next pos) of the record at ``pos``, or None if it is cut short
    or its CRC does not match."""
    if pos + _FRAME.size > len(buf):
        return None
    length, crc = _FRAME.unpack_from(buf, pos)
    start = pos + _FRAME.size
    end = start + length
    if length < _HEAD.size or end > len(buf):
        return None
    body = bytes(buf[start:end])
    if zlib.crc32(body) != crc:
        return None
    seq, now_ms, keylen = _HEAD.unpack_from(body, 0)
    if _HEAD.size + keylen > length:
        return None
    return seq, now_ms, body[_HEAD.size : _HEAD.size + keylen], body[_HEAD.size + keylen :], end


class Journal:
    def __init__(self, directory: Path | str, max_bytes: int, segment_bytes: int | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(MAX_SEGMENT_BYTES, max(4096, max_bytes // 8))
        self._lock_fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise JournalBusy(f"another gateway uses the journal directory {self.dir}") from None
        self._lock = threading.Lock()
        self._tail: deque[JournalEntry] = deque()
        self._tail_bytes = 0
        self._marks: deque[tuple[int, int]] = deque()  # (seq, append time ms), one per MARK_EVERY_MS
        self._reader: tuple[int, int, int] | None = None  # (next seq, segment first, offset) of the last disk read
        self.torn_bytes = 0  # cut off at open (a torn write at the end)
        self.lost_bytes = 0  # skipped at open (corruption inside an older segment)
        self.confirmed = self._read_confirmed()
        self._segments = self._recover()
        last = self._segments[-1]
        self.next_seq = max(last.last + 1, self.confirmed + 1)
        if last.size == 0 and last.first != self.next_seq:  # an empty segment must be named by its first seq
            last.path.unlink(missing_ok=True)
            n = self.next_seq
            last = self._segments[-1] = _Segment(n, self.dir / f"{n:020d}.log", 0, n - 1)
        self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._bytes = sum(s.size for s in self._segments)
        self.recovered = self.depth()

    # -- open ---------------------------------------------------------------------------------

    def _read_confirmed(self) -> int:
        try:
            data = (self.dir / "confirmed").read_bytes()
        except FileNotFoundError:
            return 0
        if len(data) == _CONFIRMED.size:
            seq, crc = _CONFIRMED.unpack(data)
            if zlib.crc32(data[:8]) == crc:
                return int(seq)
        log.warning("the journal's confirmation mark is unreadable: every event in it is sent again", extra={})
        return 0

    def _recover(self) -> list[_Segment]:
        found = sorted((int(m.group(1)), p) for p in self.dir.iterdir() if (m := _SEGMENT.match(p.name)))
        segments: list[_Segment] = []
        for i, (first, path) in enumerate(found):
            is_last = i == len(found) - 1
            data = path.read_bytes()
            pos, expect = 0, first
            while (rec := _parse(data, pos)) is not None and rec[0] == expect:
                if expect > self.confirmed:
                    self._mark(expect, rec[1])
                pos, expect = rec[4], expect + 1
            if pos < len(data):
                if is_last:
                    self.torn_bytes += len(data) - pos
                    log.warning(
                        "the journal ended in a torn write: cut off",
                        extra={"segment": path.name, "bytes": len(data) - pos, "kept_events": expect - first},
                    )
                    with open(path, "r+b") as f:
                        f.truncate(pos)
                else:
                    self.lost_bytes += len(data) - pos
                    log.error(
                        "a journal segment is corrupt: the events after the damage are lost (not metered)",
                        extra={"segment": path.name, "bytes": len(data) - pos, "kept_events": expect - first},
                    )
            seg = _Segment(first, path, pos, expect - 1)
            if not is_last and (pos == 0 or seg.last <= self.confirmed):
                path.unlink()
                continue
            segments.append(seg)
        if not segments:
            first = self.confirmed + 1
            segments.append(_Segment(first, self.dir / f"{first:020d}.log", 0, first - 1))
        return segments

    # -- the event loop's side ----------------------------------------------------------------

    def append(self, events: Sequence[tuple[bytes, bytes]], now_ms: int | None = None) -> int:
        """Write events (key, value) in one ``write``; returns the seq of the last one. Raises
        OSError if the disk refuses (nothing of the batch is then counted as journaled)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            if self._segments[-1].size >= self.segment_bytes:
                self._roll()
            seq = self.next_seq
            data = b"".join(_record(seq + i, now_ms, k, v) for i, (k, v) in enumerate(events))
            written = os.write(self._fd, data)
            seg = self._segments[-1]
            if written != len(data):  # a short write (disk full): cut it back off
                os.ftruncate(self._fd, seg.size)
                raise OSError(f"the journal disk took {written} of {len(data)} bytes")
            seg.size += written
            self._bytes += written
            self.next_seq = seq + len(events)
            seg.last = self.next_seq - 1
            self._mark(seq, now_ms)
            for i, (k, v) in enumerate(events):
                self._tail.append((seq + i, k, v))
                self._tail_bytes += len(k) + len(v)
            while self._tail_bytes > TAIL_BYTES:
                _, k, v = self._tail.popleft()
                self._tail_bytes -= len(k) + len(v)
            return self.next_seq - 1

    def _mark(self, seq: int, now_ms: int) -> None:
        if not self._marks or now_ms - self._marks[-1][1] >= MARK_EVERY_MS:
            self._marks.append((seq, now_ms))

    def _roll(self) -> None:
        os.fsync(self._fd)  # the old segment is complete on disk before the next one starts
        os.close(self._fd)
        first = self.next_seq
        seg = _Segment(first, self.dir / f"{first:020d}.log", 0, first - 1)
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._segments.append(seg)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def sync(self) -> int:
        """fsync what was appended; returns the last seq it covers."""
        with self._lock:
            fd, last = self._fd, self.next_seq - 1
        with contextlib.suppress(OSError):  # a segment closed by a roll was fsynced then
            os.fsync(fd)
        return last

    # -- state --------------------------------------------------------------------------------

    def bytes(self) -> int:
        """Bytes the segments take on disk."""
        return self._bytes

    def full(self) -> bool:
        return self.bytes() >= self.max_bytes

    def depth(self) -> int:
        """Events appended and not yet confirmed (some above the mark may have been delivered)."""
        return self.next_seq - 1 - self.confirmed

    def oldest_ms(self) -> int | None:
        """When the oldest unconfirmed event was appended (to ``MARK_EVERY_MS``), or None."""
        with self._lock:
            if self.next_seq - 1 <= self.confirmed:
                return None
            oldest = None
            for seq, at in self._marks:
                if seq > self.confirmed + 1:
                    break
                oldest = at
            return oldest if oldest is not None else (self._marks[0][1] if self._marks else None)

    # -- the sender's side --------------------------------------------------------------------

    def read(self, from_seq: int, max_events: int) -> list[JournalEntry]:
        """Up to ``max_events`` events from ``from_seq`` on, in seq order (a seq lost to a corrupt
        segment is skipped): from memory when they are still there, else from the segments."""
        with self._lock:
            end = self.next_seq
            if from_seq >= end:
                return []
            tail = self._tail
            if tail and tail[0][0] <= from_seq:
                start = from_seq - tail[0][0]
                return [tail[i] for i in range(start, min(len(tail), start + max_events))]
            segments = [(s.first, s.path, s.size) for s in self._segments]
            reader = self._reader
        out: list[JournalEntry] = []
        seq = from_seq
        for i, (first, path, size) in enumerate(segments):
            nxt = segments[i + 1][0] if i + 1 < len(segments) else end
            if nxt <= seq or size == 0:
                continue
            pos = reader[2] if reader and reader[0] == seq and reader[1] == first else 0
            try:
                f = open(path, "rb")  # noqa: SIM115
            except FileNotFoundError:  # confirmed and deleted meanwhile
                continue
            with f:
                want = READ_BYTES
                while pos < size and len(out) < max_events:
                    f.seek(pos)
                    data = f.read(min(size - pos, want))
                    p = 0
                    while len(out) < max_events and (rec := _parse(data, p)) is not None:
                        if rec[0] >= seq:
                            out.append((rec[0], rec[2], rec[3]))
                            seq = rec[0] + 1
                        p = rec[4]
                    if p == 0:  # a record longer than one read: read it whole (else it is damaged: stop)
                        need = _FRAME.size + _FRAME.unpack_from(data, 0)[0] if len(data) >= _FRAME.size else 0
                        if need <= len(data) or need > size - pos:
                            break
                        want = need
                        continue
                    pos += p
                    want = READ_BYTES
            with self._lock:
                self._reader = (seq, first, pos)
            if len(out) >= max_events:
                break
        return out

    def confirm(self, seq: int) -> None:
        """Every event up to ``seq`` is in the audit topic: move the mark, delete the segments it
        covers (never the one being appended to) and write the mark down."""
        with self._lock:
            if seq <= self.confirmed:
                return
            self.confirmed = seq
            while len(self._segments) > 1 and self._segments[1].first - 1 <= seq:
                old = self._segments.pop(0)
                self._bytes -= old.size
                with contextlib.suppress(FileNotFoundError):
                    old.path.unlink()
            while len(self._marks) > 1 and self._marks[1][0] <= seq + 1:
                self._marks.popleft()
        data = struct.pack(">Q", seq)
        tmp = self.dir / "confirmed.tmp"
        tmp.write_bytes(_CONFIRMED.pack(seq, zlib.crc32(data)))
        os.replace(tmp, self.dir / "confirmed")

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            os.close(self._lock_fd)
