"""The batch scan: what :meth:`ShardState.scan` does for a batch of proxy audit or Confluent audit
records, with the same result, at a fraction of the cost per record.

``ShardState.scan`` stays the reference (and the path of OTLP broker metrics, whose counters are
stateful). :func:`scan` gives exactly its output for the same records and shard — the same
:class:`~metering.fold.shard.Scan` (dedup keys in record order, newest timestamp, stream time)
and the same ``out.minutes`` (same keys in the same order), ``out.rejected`` (same records, reasons
and sentences, in record order), duplicates, tombstones and ignored counts;
``tests/unit/domain/test_batch.py`` checks it on fuzzed batches, both paths side by side.

How
---
Each record is either *fast* or *slow*:

* **Fast**: a structured-mode record (no ``ce_*`` headers) whose value decodes into
  :class:`_ProxyEvent` with msgspec (typed, every field known, ``forbid_unknown_fields``), or for
  the audit log into a dict with orjson, and that passes every check the per-record decoder makes,
  inlined (identities printable and ≤ 255 characters, counts in range, the time of the exact
  ``YYYY-MM-DDTHH:MM:SS.mmmZ`` shape for proxy records, within the lateness and future limits of
  the shard's stream time at that record). Its dedup key is computed as in the decoders
  (BLAKE2b-128 of ``orjson.dumps((kind, source, id))``: byte-identical, it is in the changelog)
  and its amounts go straight into the minute sums — no ``UsageEvent`` is built.
* **Slow**: everything else (a tombstone, binary content mode, unreadable headers, an unknown
  field, any value or check the fast path does not accept): the record goes through the same
  decoder call and the same exception handling as ``ShardState.scan``, so a rejection keeps its
  exact reason and sentence. The fast path only ever *declines*; it never rejects.

Records are handled in offset order in one pass, so stream time (the running maximum of the Kafka
timestamps from the shard's ``stream_ms``), dedup (first occurrence counts) and the order of
rejections and minute keys are those of the reference.

msgspec decodes proxy records only where it parses exactly as orjson does: every field typed, no
unknown fields (msgspec skips an unknown field without checking its UTF-8 or that its numbers are
finite, which orjson rejects), integers bounded where orjson would read a float. A proxy that adds
fields of its own gets the slow path (the reference's cost) until the struct learns them; after
64 failed records with no success in a batch, msgspec is not tried for the rest of it.

Why msgspec (measured on this machine, 100k ``bench ingest`` records, µs per record, one core)
-----------------------------------------------------------------------------------------------
========================================  ======
orjson.loads per record (results kept)    1.25
msgspec into a typed struct per record    0.50–0.70
msgspec, one ``[…]`` of the whole batch   1.09
polars ``read_ndjson`` (one thread, CPU)  1.6–1.8
pyarrow ``read_json`` (wall, 2 threads)   1.21
========================================  ======

A columnar reader (polars, pyarrow) parses no faster than msgspec on one core, and every record
still needs a Python-level BLAKE2b for its dedup key and a trip back to Python objects for the
minute keys (a group-by's output is as many rows as the batch has minute keys: half the records
in the benchmark), so the columns would buy nothing and cost 180 MB of dependency (polars'
runtime or pyarrow, installed); msgspec is 0.7 MB. The audit log keeps orjson: its records carry
many fields that vary by Confluent version, which a struct forbidding unknown fields would send
to the slow path.

What it gives (same machine, 25k-record batches of ``bench ingest`` records, CPU µs per record)
-----------------------------------------------------------------------------------------------
The scan: 5.9–6.9 per record → 3.7–4.3. Where the rest goes (py-spy, 200 Hz): the msgspec
decode 17 %, the minute sums 25 % (a 7-tuple of fresh strings hashed into a dict that gets a new
key for every other record here), the dedup key 14 % (the BLAKE2b call alone is 0.35 µs), the
checks and the loop the rest. A whole worker (``bench ingest --reference``, the same input, same
run): 9.4–9.7 CPU s per million events → 7.2–7.6; see the README's Performance table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Protocol

import msgspec
import orjson

from metering.decoders import confluent_audit, proxy
from metering.decoders.common import MAX_ID_LEN, Headers, Invalid, Limits, as_time_ms, is_binary
from metering.domain.events import AUDIT_LOG, CONSUME, PRODUCE, PROXY, Rejection, UsageEvent
from metering.fold.records import BatchResult, HeadersUnreadable, InRecord, Scan

__all__ = ["ScanState", "scan"]


class _SourceKind(Protocol):
    @property
    def source_kind(self) -> str: ...


class _Keys(Protocol):
    @property
    def _keys(self) -> dict[bytes, int]: ...


class ScanState(Protocol):
    """What the scan reads of a shard's state (:class:`metering.fold.shard.ShardState` is one;
    the shard calls the scan, so the scan names only what it needs)."""

    @property
    def config(self) -> _SourceKind: ...

    @property
    def dedup(self) -> _Keys: ...

    @property
    def stream_ms(self) -> int: ...

    def scan(self, records: Sequence[InRecord], limits: Limits, out: BatchResult) -> Scan: ...


MINUTE_MS = 60_000
_RECORDS_LIMIT = 2**31
_I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # orjson reads wider integers as floats
_MISSES_BEFORE_GIVING_UP = 64

_blake = hashlib.blake2b
_dumps = orjson.dumps
_FRACTION = {f".{i:03d}Z": i for i in range(1000)}  # ".mmmZ" → ms; ASCII digits only (str.isdigit is wider)


class _ProxyData(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    topic: str
    records: Annotated[int, msgspec.Meta(ge=0, le=_RECORDS_LIMIT)]
    bytes: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    client_id: str = ""
    virtual_cluster: str = ""
    partition: _I64 = 0
    outcome: None = None
    # what the streamtoll gateway adds (not metered)
    client_ip: str = ""
    api_version: _I64 = 0
    acks: _I64 = 0
    acknowledged: bool = True


class _ProxyEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    specversion: Literal["1.0"]
    id: str
    source: str
    type: Literal["io.streamtoll.kafka.produce", "io.streamtoll.kafka.fetch"]
    time: str
    subject: str
    data: _ProxyData
    datacontenttype: str = ""


_proxy_decode = msgspec.json.Decoder(_ProxyEvent).decode
_DIRECTIONS = {"io.streamtoll.kafka.produce": PRODUCE, "io.streamtoll.kafka.fetch": CONSUME}
_AUDIT_METHODS = {"kafka.produce": PRODUCE, "kafka.fetchconsumer": CONSUME, "kafka.fetch": CONSUME}
_AUDIT_TYPE = confluent_audit.AUTHZ_TYPE
_times: dict[str, int] = {}  # audit log: RFC 3339 text → epoch ms (as_time_ms), events share seconds


def scan(state: ScanState, records: Sequence[InRecord], limits: Limits, out: BatchResult) -> Scan:
    """``state.scan(records, limits, out)`` for a proxy audit or audit log shard, faster."""
    if state.config.source_kind == PROXY:
        return _scan_proxy(state, records, limits, out)
    return _scan_audit(state, records, limits, out)


def _scan_proxy(state: ScanState, records: Sequence[InRecord], limits: Limits, out: BatchResult) -> Scan:
    # One pass in record order, the fast path inlined: a call and a result tuple per record cost
    # as much as its checks, and every tracked object made per record feeds the cyclic GC.
    dedup_keys = state.dedup._keys
    seen: dict[bytes, None] = {}  # keys counted in this batch, in record order
    minutes = out.minutes
    stream_ms = state.stream_ms
    lateness, future, max_bytes = limits.max_lateness_ms, limits.max_future_ms, limits.max_event_bytes
    lim = Limits(stream_ms, lateness, future, max_bytes)
    lo, hi = stream_ms - lateness, stream_ms + future
    max_ts = 0
    duplicates = tombstones = hits = misses = 0
    try_fast = True
    decode, seconds, second_ms, fraction, directions = _proxy_decode, proxy._seconds, _second_ms, _FRACTION, _DIRECTIONS
    blake, dumps = _blake, _dumps

    for rec in records:
        value = rec.value()
        ts = rec.timestamp()[1]
        if ts > max_ts:
            max_ts = ts
            if ts > stream_ms:
                stream_ms = lim.now_ms = ts
                lo, hi = ts - lateness, ts + future
        if value is None:
            tombstones += 1
            continue
        try:
            headers = rec.headers()
        except Exception:  # never call headers() again on it (see HeadersUnreadable)
            out.rejected.append((HeadersUnreadable(rec), _HEADERS_UNREADABLE))
            continue
        if try_fast and (not headers or _structured(headers)):
            try:
                ev: _ProxyEvent | None = decode(value)
            except Exception:  # msgspec.DecodeError, or whatever it may raise: the decoder will say
                ev = None
            if ev is not None:
                data = ev.data
                ev_id, source, principal, topic = ev.id, ev.source, ev.subject, data.topic
                client_id, vcluster, nbytes, t = data.client_id, data.virtual_cluster, data.bytes, ev.time
                ident = ev_id + source + principal + topic + client_id + vcluster
                if (
                    ev_id
                    and source
                    and principal
                    and topic
                    and nbytes <= max_bytes
                    and len(t) == 24
                    and (frac := fraction.get(t[19:])) is not None
                    and len(ident) <= MAX_ID_LEN
                    and ident.isprintable()
                    and (base := seconds.get(head := t[:19]) or second_ms(head)) is not None
                    and lo <= (ms := base + frac) <= hi
                ):
                    hits += 1
                    # orjson.dumps((PROXY, source, ev_id)), which escapes nothing else in printable text
                    key = blake(
                        f'["proxy","{source}","{ev_id}"]'.encode()
                        if '"' not in ident and "\\" not in ident
                        else dumps((PROXY, source, ev_id)),
                        digest_size=16,
                    ).digest()
                    if key in dedup_keys or key in seen:
                        duplicates += 1
                        continue
                    seen[key] = None
                    mk = (PROXY, principal, client_id, vcluster, topic, directions[ev.type], ms - ms % MINUTE_MS)
                    m = minutes.get(mk)
                    if m is None:
                        minutes[mk] = [nbytes, data.records, 1, 0]
                    else:
                        m[0] += nbytes
                        m[1] += data.records
                        m[2] += 1
                    continue
            misses += 1
            if misses >= _MISSES_BEFORE_GIVING_UP and not hits:
                try_fast = False
        got = _slow(rec, value, headers, lim, proxy.decode, proxy.decode_binary, out)
        if got is None:
            continue
        key = got[0]
        if key in dedup_keys or key in seen:
            duplicates += 1
            continue
        seen[key] = None
        _add(minutes, got)

    out.duplicates += duplicates
    out.tombstones += tombstones
    return Scan(list(seen), max_ts, stream_ms, set())


def _scan_audit(state: ScanState, records: Sequence[InRecord], limits: Limits, out: BatchResult) -> Scan:
    dedup_keys = state.dedup._keys
    seen: dict[bytes, None] = {}  # keys counted in this batch, in record order
    minutes = out.minutes
    stream_ms = state.stream_ms
    lateness, future, max_bytes = limits.max_lateness_ms, limits.max_future_ms, limits.max_event_bytes
    lim = Limits(stream_ms, lateness, future, max_bytes)
    lo, hi = stream_ms - lateness, stream_ms + future
    max_ts = 0
    duplicates = tombstones = ignored = 0

    for rec in records:
        value = rec.value()
        ts = rec.timestamp()[1]
        if ts > max_ts:
            max_ts = ts
            if ts > stream_ms:
                stream_ms = lim.now_ms = ts
                lo, hi = ts - lateness, ts + future
        if value is None:
            tombstones += 1
            continue
        try:
            headers = rec.headers()
        except Exception:  # never call headers() again on it (see HeadersUnreadable)
            out.rejected.append((HeadersUnreadable(rec), _HEADERS_UNREADABLE))
            continue
        got: Counted | str | None = None
        if not headers or _structured(headers):
            got = _fast_audit(value, lo, hi)
        if got is None:
            ev = _slow(rec, value, headers, lim, confluent_audit.decode, confluent_audit.decode_binary, out)
            if ev is None:
                continue
            key = ev[0]
            if key in dedup_keys or key in seen:
                duplicates += 1
                continue
            seen[key] = None
            _add(minutes, ev)
            continue
        if isinstance(got, str):
            ignored += 1
            continue
        key, mk, amounts = got
        if key in dedup_keys or key in seen:
            duplicates += 1
            continue
        seen[key] = None
        m = minutes.get(mk)
        if m is None:
            minutes[mk] = amounts
        else:
            m[2] += amounts[2]
            m[3] += amounts[3]

    out.duplicates += duplicates
    out.tombstones += tombstones
    out.ignored += ignored
    return Scan(list(seen), max_ts, stream_ms, set())


_HEADERS_UNREADABLE = Rejection("not_utf8", "a header name is not valid UTF-8 (no header can be read)")


def _slow(
    rec: InRecord,
    value: bytes,
    headers: Headers | None,
    lim: Limits,
    decode: Callable[[bytes, Limits], UsageEvent | str],
    decode_binary: Callable[[bytes, Headers, Limits], UsageEvent | str],
    out: BatchResult,
) -> UsageEvent | None:
    """One record the way ``ShardState.scan`` handles it: its event, or None once its rejection
    (reason and sentence from the decoder) or its being ignored is recorded in ``out``."""
    try:
        got = decode_binary(value, headers, lim) if headers and is_binary(headers) else decode(value, lim)
    except Invalid as exc:
        out.rejected.append((rec, exc.rejection))
        return None
    except Exception as exc:  # a decoder bug must not stop metering; the record is kept
        out.rejected.append((rec, Rejection("schema", f"undecodable record ({type(exc).__name__})")))
        return None
    if type(got) is str:
        out.ignored += 1
        return None
    return got  # type: ignore[return-value]


def _add(minutes: dict[MinuteKey, list[int]], ev: UsageEvent) -> None:
    t = ev[2]
    mk = (ev[1], ev[3], ev[4], ev[5], ev[6], ev[7], t - t % MINUTE_MS)
    m = minutes.get(mk)
    if m is None:
        minutes[mk] = [ev[8], ev[9], ev[10], ev[11]]
    else:
        m[0] += ev[8]
        m[1] += ev[9]
        m[2] += ev[10]
        m[3] += ev[11]


MinuteKey = tuple[str, str, str, str, str, str, int]
Counted = tuple[bytes, MinuteKey, list[int]]  # dedup key, minute key, [bytes, records, requests, denied]


def _structured(headers: Headers) -> bool:
    """Headers, but none that makes the record binary content mode (``ce_specversion``)."""
    try:
        return not is_binary(headers)
    except Exception:  # odd headers: the slow path meets the same error where scan does
        return False


def _second_ms(head: str) -> int | None:
    """``proxy._second_ms`` (which fills the cache the decoder reads), None where it raises."""
    try:
        return proxy._second_ms(head)
    except Exception:
        return None


def _identity(v: Any, default: str) -> str | None:
    """``as_identity`` where it succeeds (None where it would raise)."""
    if v is None or v == "":
        return default
    if type(v) is not str or len(v) > MAX_ID_LEN or not v.isprintable():
        return None
    return v


def _fast_audit(value: bytes, lo: int, hi: int) -> Counted | str | None:
    """A well-formed structured Confluent audit record → (dedup key, minute key, amounts), or the
    ignored method's name; None for anything else. The checks are confluent_audit's, in its order
    up to the decision to ignore."""
    try:
        doc = orjson.loads(value)
    except Exception:  # JSONDecodeError; the decoder says which reason
        return None
    if type(doc) is not dict or doc.get("specversion") not in ("1.0", "0.3"):
        return None
    ev_id = doc.get("id")
    source = doc.get("source")
    if not (type(ev_id) is str and ev_id and type(source) is str and source):
        return None
    if len(ev_id) > MAX_ID_LEN or len(source) > MAX_ID_LEN or not ev_id.isprintable() or not source.isprintable():
        return None
    t = doc.get("time")
    if type(t) is not str:
        return None
    ms = _times.get(t)
    if ms is None:
        try:
            ms = as_time_ms(t, "time")
        except Exception:
            return None
        if len(_times) > 100_000:
            _times.clear()
        _times[t] = ms
    typ = doc.get("type")
    if typ != _AUDIT_TYPE:
        return typ[:80] if type(typ) is str else None
    data = doc.get("data")
    if type(data) is not dict:
        return None
    method = data.get("methodName")
    if type(method) is not str:
        return None
    direction = _AUDIT_METHODS.get(method.lower())
    if direction is None:
        return method[:80]
    authn = data.get("authenticationInfo")
    if type(authn) is dict:
        principal = _identity(authn.get("principal"), "unknown")
        if principal is None:
            return None
    elif authn is None:
        principal = "unknown"
    else:
        return None
    authz = data.get("authorizationInfo")
    if type(authz) is not dict:
        return None
    granted = authz.get("granted")
    if type(granted) is not bool or authz.get("resourceType") != "Topic":
        return None
    topic = authz.get("resourceName")
    if not (type(topic) is str and topic and len(topic) <= MAX_ID_LEN and topic.isprintable()):
        return None
    request = data.get("request")
    client_id = ""
    if type(request) is dict:
        got = _identity(request.get("client_id" if "client_id" in request else "clientId"), "")
        if got is None:
            return None
        client_id = got
    elif request is not None:
        return None
    if not lo <= ms <= hi:
        return None
    return (
        _blake(_dumps((AUDIT_LOG, source, ev_id)), digest_size=16).digest(),
        (AUDIT_LOG, principal, client_id, "", topic, direction, ms - ms % MINUTE_MS),
        [0, 0, 1, 0] if granted else [0, 0, 0, 1],
    )
