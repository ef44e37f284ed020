"""A produce the broker rejects is never metered, whatever the rejection (the dev broker rejects
neither unknown topics nor oversize records, so the integration test can only show one kind)."""

from __future__ import annotations

from typing import Any

import pytest
from kio.schema.errors import ErrorCode
from kio.schema.produce.v9.response import PartitionProduceResponse, ProduceResponse, TopicProduceResponse
from kio.schema.types import TopicName
from kio.static.primitive import i32, i64

from gateway.metering import acknowledged

# what Apache Kafka answers a partition of a Produce it did not write
REJECTIONS = {
    "UNKNOWN_TOPIC_OR_PARTITION": 3,
    "NOT_LEADER_OR_FOLLOWER": 6,
    "MESSAGE_TOO_LARGE": 10,
    "RECORD_LIST_TOO_LARGE": 18,
    "NOT_ENOUGH_REPLICAS": 19,
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND": 20,
    "TOPIC_AUTHORIZATION_FAILED": 29,
    "INVALID_PRODUCER_EPOCH": 47,
    "UNKNOWN_PRODUCER_ID": 59,
    "INVALID_RECORD": 87,
}


def _response(errors: list[int]) -> Any:
    parts = tuple(
        PartitionProduceResponse(
            index=i32(i), error_code=ErrorCode(e), base_offset=i64(-1 if e else 0), record_errors=()
        )
        for i, e in enumerate(errors)
    )
    return ProduceResponse(responses=(TopicProduceResponse(name=TopicName("orders"), partition_responses=parts),))


@pytest.mark.parametrize("name", sorted(REJECTIONS))
def test_a_rejected_partition_is_not_metered_and_its_neighbours_are(name: str) -> None:
    # partition 1 rejected, 0 and 2 written in the same request
    assert acknowledged(_response([0, REJECTIONS[name], 0])) == {("orders", 0), ("orders", 2)}


def test_a_request_rejected_everywhere_meters_nothing() -> None:
    assert acknowledged(_response(list(REJECTIONS.values()))) == set()
