"""A raw Kafka-protocol client for tests (kio types over a socket): requests no client library
sends (a produce to a partition that does not exist, pipelined requests). What a topic holds is
read back from the broker by ``streamtoll.dev.gateway_clients.broker_batches`` (re-exported here):
its own parsing of the batch headers, not the gateway's ``gateway.wire``, and the demo's check."""

from __future__ import annotations

import io
import socket
import struct
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.request_header.v1.header import RequestHeader as HeaderV1
from kio.schema.request_header.v2.header import RequestHeader as HeaderV2
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i16, i32

from gateway.protocol import response_body_offset
from streamtoll.dev.gateway_clients import broker_batches

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
