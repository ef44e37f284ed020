"""A raw Kafka-protocol client for tests (kio types over a socket): requests no client library
sends (a produce to a partition that does not exist, pipelined requests), and record batches
read back from the broker without going through the gateway."""

from __future__ import annotations

import io
import socket
import struct
from datetime import timedelta
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.request_header.v1.header import RequestHeader as HeaderV1
from kio.schema.request_header.v2.header import RequestHeader as HeaderV2
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i8, i16, i32, i64

from gateway.protocol import response_body_offset
from gateway.wire import count_batches

__all__ = ["RawClient", "broker_batches", "encode_request"]


def encode_request(api_key: int, version: int, correlation_id: int, body: Any, client_id: str = "raw") -> bytes:
    """A size-prefixed request frame."""
    flexible = load_request_schema(api_key, version).__flexible__
    header_type = HeaderV2 if flexible else HeaderV1
    header = header_type(
        request_api_key=i16(api_key),
        request_api_version=i16(version),
        correlation_id=i32(correlation_id),
        client_id=client_id,
    )
    buf = io.BytesIO()
    entity_writer(header_type)(buf, header)  # type: ignore[arg-type]
    entity_writer(type(body))(buf, body)
    data = buf.getvalue()
    return struct.pack(">i", len(data)) + data


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._next = 1
        self._sent: dict[int, tuple[int, int]] = {}

    def send(self, api_key: int, version: int, body: Any, client_id: str = "raw") -> int:
        cid = self._next
        self._next += 1
        self._sent[cid] = (api_key, version)
        self.sock.sendall(encode_request(api_key, version, cid, body, client_id))
        return cid

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def receive(self) -> tuple[int, Any]:
        """(correlation id, decoded response) of the next response."""
        (size,) = struct.unpack(">i", self._read(4))
        frame = self._read(size)
        (cid,) = struct.unpack(">i", frame[:4])
        api_key, version = self._sent.pop(cid)
        body = response_body_offset(frame, api_key, version)
        value, _ = entity_reader(load_response_schema(api_key, version))(frame, body)
        return cid, value

    def request(self, api_key: int, version: int, body: Any, client_id: str = "raw") -> Any:
        self.send(api_key, version, body, client_id)
        return self.receive()[1]

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Whether the other side closes the connection within ``timeout`` (reading what comes)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def broker_batches(bootstrap: str, topic: str, partitions: int) -> tuple[int, int]:
    """(records, record-batch bytes) stored in a topic, read straight from the broker with Fetch
    requests up to each partition's high watermark."""
    host, port = bootstrap.rsplit(":", 1)
    client = RawClient(host, int(port))
    records = nbytes = 0
    try:
        for partition in range(partitions):
            offset = 0
            while True:
                req = FetchRequest(
                    replica_id=i32(-1),
                    max_wait=timedelta(milliseconds=10),
                    min_bytes=i32(1),
                    max_bytes=i32(8 << 20),
                    isolation_level=i8(0),
                    session_id=i32(0),
                    session_epoch=i32(-1),
                    topics=(
                        FetchTopic(
                            topic=topic,
                            partitions=(
                                FetchPartition(
                                    partition=i32(partition),
                                    fetch_offset=i64(offset),
                                    partition_max_bytes=i32(8 << 20),
                                ),
                            ),
                        ),
                    ),
                    forgotten_topics_data=(),
                    rack_id="",
                )
                resp = client.request(1, 12, req)
                part = resp.responses[0].partitions[0]
                data = part.records or b""
                counted = count_batches(data)
                records += counted.records
                nbytes += counted.bytes
                pos, last = 0, offset
                while pos + 12 <= len(data):
                    base, length = struct.unpack_from(">qi", data, pos)
                    if pos + 12 + length > len(data):
                        break
                    (delta,) = struct.unpack_from(">i", data, pos + 23)
                    last = base + delta + 1
                    pos += 12 + length
                if last <= offset or last >= part.high_watermark:
                    break
                offset = last
    finally:
        client.close()
    return records, nbytes
