"""The fold: a batch of one input partition's records → that partition's (a *shard*'s) state and
what the batch publishes. Pure like the domain (no Kafka, no wall clock), but it decodes.

Where it sits: ``engine`` → ``fold`` → ``decoders`` → ``domain``, each importing only the layers
below it (the ``layers`` contract in ``pyproject.toml``). The decoders build the domain's
normalized events and counter samples (``metering.domain.events``, ``metering.domain.counters``),
so the domain cannot call a decoder; the shard's fold needs them all, so it lives here, above
both, and calls them directly:

* :mod:`~metering.fold.shard` — a shard's state, the per-record scan (the reference, and the path
  of OTLP broker metrics), the state step, cold hours and the changelog;
* :mod:`~metering.fold.batch` — the batch scan for proxy audit and audit log records (a proxy
  decoder of its own, inlined, with the per-record decoders as its fallback); the shard calls
  it, and it names only what it reads of the shard (``ScanState``), so the two are not tied
  both ways;
* :mod:`~metering.fold.records` — the records both scans build and hand on (``InRecord``,
  ``Record``, ``BatchResult``, ``Scan``).

Why not the fold in ``domain`` with its decoders passed in: the batch scan is a decoder itself
(the proxy format as a msgspec struct, the decoders' checks inlined), so it could not be in
``domain`` either way, and direct calls keep the hot path free of an indirection per record.
"""
