"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, then the Avro body."""

from __future__ import annotations

import struct

from prompt.events.errors import FramingError

MAGIC = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size


def frame(schema_id: int, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, schema_id) + body


def unframe(value: bytes | None) -> tuple[int, memoryview]:
    """Split a framed value into (schema id, body). Raises FramingError."""
    if not value:
        raise FramingError("empty message value")
    if len(value) < HEADER_SIZE:
        raise FramingError(f"{len(value)} bytes is shorter than the 5-byte Confluent header")
    magic, schema_id = HEADER.unpack_from(value)
    if magic != MAGIC:
        raise FramingError(f"magic byte {magic:#04x}, expected 0x00 (Confluent wire format)")
    return schema_id, memoryview(value)[HEADER_SIZE:]
