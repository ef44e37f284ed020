"""The live feed's database side, without a broker or a database: the base it is handed is
read through ``read_base``, every account re-rated only now and then, a failed read keeps the
last base; the enforcement records go to the board."""

from __future__ import annotations

from typing import Any

from billing.adapters.live_feed import LiveFeed, LiveSources
from billing.domain.accounts import Attributor
from billing.services.live_view import LiveBase, LiveBoard
from metering.entitlements import encode_episode

from .test_live_board import _episode

SOURCES = LiveSources({}, "minutes", "dlq", ("in",), "metering", "enforcement", "enforcement-events")
RATED = {"acme": {"currency": "EUR", "subtotal": "1.00", "total": "1.19"}}


class FakeRead:
    def __init__(self) -> None:
        self.calls: list[tuple[float, Any]] = []
        self.fail = False

    def __call__(self, now: float, rated: dict[str, dict[str, str]] | None) -> tuple[LiveBase, Attributor]:
        self.calls.append((now, rated))
        if self.fail:
            raise OSError("the database is down")
        return LiveBase(base_until=now - now % 3600, rated=rated or RATED, refreshed_at=now), Attributor([])


def test_the_base_is_read_through_read_base_and_rated_only_every_rate_every_s() -> None:
    read, board = FakeRead(), LiveBoard()
    feed = LiveFeed(SOURCES, board, read, rate_every_s=300.0)
    feed._refresh_base(1000.0)
    assert read.calls == [(1000.0, None)]  # the first read rates every account
    assert board.base.rated == RATED and board.base.refreshed_at == 1000.0
    feed._refresh_base(1030.0)
    assert read.calls[-1] == (1030.0, RATED)  # the rated amounts kept
    feed.refresh_database()  # e.g. after a billing run: rated again at once
    feed._refresh_base(1060.0)
    assert read.calls[-1] == (1060.0, None)
    feed._refresh_now.clear()
    feed._refresh_base(1400.0)  # rate_every_s after the last rating
    assert read.calls[-1] == (1400.0, None)


def test_a_failed_read_keeps_the_last_base() -> None:
    read, board = FakeRead(), LiveBoard()
    feed = LiveFeed(SOURCES, board, read)
    feed._refresh_base(1000.0)
    read.fail = True
    feed._refresh_base(1030.0)
    assert board.base.refreshed_at == 1000.0


def test_without_read_base_the_board_keeps_an_empty_base() -> None:
    board = LiveBoard()
    LiveFeed(SOURCES, board)._refresh_base(1000.0)
    assert board.base == LiveBase()


def test_each_enforcement_topic_reaches_its_side_of_the_board() -> None:
    board = LiveBoard()
    feed = LiveFeed(SOURCES, board)
    episode = _episode(gw="gw-1", account="acme", started_min=0, updated_min=1)
    feed._control_record("enforcement-events", episode.id.encode(), encode_episode(episode))
    assert list(board.episodes) == [episode.id] and board.decisions == {}
    feed._control_record("enforcement-events", episode.id.encode(), None)  # a tombstone deletes it
    feed._control_record("enforcement", b"acme/bytes", b"not json")  # unreadable: logged and skipped
    assert board.episodes == {} and board.decisions == {}
