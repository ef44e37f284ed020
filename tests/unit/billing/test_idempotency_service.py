"""Idempotency keys over an in-memory store: the first answer is replayed, a key is held by one
request at a time, nothing is kept of a request that failed, and a key is forgotten after TTL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing.errors import KeyInUse, KeyReused
from billing.services.idempotency import TTL, claim_in, fingerprint

from .fakes_edge import T0, FakeIdempotencyStore

PRINT = fingerprint("POST", "/v1/billing/runs", [("period", "2026-11")], b"")
OTHER = fingerprint("POST", "/v1/billing/runs", [("period", "2026-12")], b"")


def _answered(store: FakeIdempotencyStore, caller: str = "k1", key: str = "run-1") -> None:
    with claim_in(store.transaction, caller, key, PRINT, T0) as held:
        assert held.answer is None
        held.complete(201, [("location", "/v1/billing/runs/1")], b'{"id": 1}')


def test_a_retry_gets_the_first_answer_back() -> None:
    store = FakeIdempotencyStore()
    _answered(store)
    with claim_in(store.transaction, "k1", "run-1", PRINT, T0 + timedelta(minutes=5)) as again:
        assert again.answer is not None
        assert (again.answer.status, again.answer.headers, again.answer.body) == (
            201,
            [("location", "/v1/billing/runs/1")],
            b'{"id": 1}',
        )


def test_the_same_key_for_another_request_is_refused() -> None:
    store = FakeIdempotencyStore()
    _answered(store)
    with pytest.raises(KeyReused), claim_in(store.transaction, "k1", "run-1", OTHER, T0):
        pytest.fail("the block must not run")


def test_keys_belong_to_one_caller() -> None:
    store = FakeIdempotencyStore()
    _answered(store, caller="k1")
    with claim_in(store.transaction, "k2", "run-1", OTHER, T0) as held:
        assert held.answer is None  # k2's run-1 is its own


def test_a_key_held_by_a_running_request_is_in_use_and_free_once_it_ends() -> None:
    store = FakeIdempotencyStore()
    with claim_in(store.transaction, "k1", "run-1", PRINT, T0) as first:
        with pytest.raises(KeyInUse), claim_in(store.transaction, "k1", "run-1", PRINT, T0):
            pytest.fail("the block must not run")
        first.complete(200, [], b"done")
    with claim_in(store.transaction, "k1", "run-1", PRINT, T0) as second:
        assert second.answer is not None and second.answer.body == b"done"


def test_nothing_is_kept_of_a_request_that_raised_so_a_retry_runs_it() -> None:
    store = FakeIdempotencyStore()
    with pytest.raises(RuntimeError), claim_in(store.transaction, "k1", "run-1", PRINT, T0) as held:
        held.complete(200, [], b"half")
        raise RuntimeError("the request failed")
    with claim_in(store.transaction, "k1", "run-1", PRINT, T0) as retry:
        assert retry.answer is None


def test_a_request_that_stored_no_answer_leaves_the_key_to_the_next_retry() -> None:
    store = FakeIdempotencyStore()
    with claim_in(store.transaction, "k1", "run-1", PRINT, T0):
        pass  # e.g. a 5xx: not an answer to keep
    with claim_in(store.transaction, "k1", "run-1", PRINT, T0) as retry:
        assert retry.answer is None


def test_after_the_ttl_a_key_is_new_for_any_request() -> None:
    store = FakeIdempotencyStore()
    _answered(store)
    with claim_in(store.transaction, "k1", "run-1", PRINT, T0 + TTL - timedelta(seconds=1)) as before:
        assert before.answer is not None
    with claim_in(store.transaction, "k1", "run-1", OTHER, T0 + TTL) as after:
        assert after.answer is None  # not KeyReused: the old request is forgotten
        after.complete(201, [], b"second")
    with claim_in(store.transaction, "k1", "run-1", OTHER, T0 + TTL) as replay:
        assert replay.answer is not None and replay.answer.body == b"second"


def test_a_claim_deletes_expired_keys_of_any_caller() -> None:
    store = FakeIdempotencyStore()
    _answered(store, caller="k1", key="old")
    with claim_in(store.transaction, "k2", "new", PRINT, T0 + TTL + timedelta(hours=1)):
        pass
    assert ("k1", "old") not in store.rows and ("k2", "new") in store.rows


def test_the_fingerprint_is_the_method_path_query_in_any_order_and_body() -> None:
    base = fingerprint("post", "/p", [("a", "1"), ("b", "2")], b"x")
    assert base == fingerprint("POST", "/p", [("b", "2"), ("a", "1")], b"x")
    assert len({base, *(
        fingerprint("PUT", "/p", [("a", "1"), ("b", "2")], b"x"),
        fingerprint("POST", "/q", [("a", "1"), ("b", "2")], b"x"),
        fingerprint("POST", "/p", [("a", "1")], b"x"),
        fingerprint("POST", "/p", [("a", "1"), ("b", "2")], b"y"),
    )}) == 5  # fmt: skip
