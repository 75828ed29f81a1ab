"""The intake's hot path: an image-arrival Avro body read straight into an ``ImageArrival``.

fastavro's reader walks any schema and builds a dict that ``ImageArrival.from_record`` then
copies; for the one schema every image of a burst is written with, reading its nine fields in
order is ~40 % cheaper per image (``prompt bench intake``). Only for a writer schema identical
to the bundled one. Anything a producer did not write with it, or that is not plainly a valid
body (truncated, trailing bytes, a negative length, non-ASCII text, an over-long varint),
gives None: the caller then takes the general way (``AvroCodec`` and ``limits``), which accepts
or names what is wrong. So this reader never accepts what the general way would refuse.
"""

from __future__ import annotations

import struct

from prompt.events.codec import AvroCodec
from prompt.events.models import ImageArrival
from prompt.events.wire import HEADER, HEADER_SIZE, MAGIC

_DOUBLE = struct.Struct("<d").unpack_from


class _NotPlain(Exception):
    """Raised inside the reader for a body the general decoder must look at."""


class ImageReader:
    def __init__(self, codec: AvroCodec) -> None:
        self._codec = codec

    def read(self, value: bytes | None) -> ImageArrival | None:
        """The arrival, without I/O; None if the general decoder must read this value."""
        if not value or len(value) < HEADER_SIZE or value[0] != MAGIC:
            return None
        if not self._codec.writes_as_reader(HEADER.unpack_from(value)[1]):
            return None  # the codec caches what it knows of each writer schema id
        return read_body(value, HEADER_SIZE)


def read_body(v: bytes, p: int) -> ImageArrival | None:
    """The fields of the bundled schema (image_arrival.avsc), in its order, from ``v[p:]``."""
    try:
        instrument, p = _string(v, p)
        group_id, p = _string(v, p)
        snap, p = _long(v, p)
        detector, p = _long(v, p)
        uri, p = _string(v, p)
        obs_id, p = _string(v, p)
        day_obs, p = _long(v, p)
        (event_time,) = _DOUBLE(v, p)
        size, p = _long(v, p + 8)
    except (_NotPlain, IndexError, UnicodeDecodeError, struct.error):
        return None
    if p != len(v):
        return None
    return ImageArrival(instrument, group_id, snap, detector, uri, obs_id, day_obs, event_time,
                        size)  # fmt: skip


def _long(v: bytes, p: int) -> tuple[int, int]:
    """An Avro int or long (zigzag varint) at ``p``, and the position after it."""
    n = shift = 0
    while True:
        b = v[p]
        p += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), p
        shift += 7
        if shift > 63:
            raise _NotPlain


def _string(v: bytes, p: int) -> tuple[str, int]:
    b = v[p]
    if b < 0x80:  # a length under 64: one byte, even (zigzag of a non-negative number)
        if b & 1:
            raise _NotPlain
        n, p = b >> 1, p + 1
    else:
        n, p = _long(v, p)
        if n < 0:
            raise _NotPlain
    end = p + n
    if end > len(v):
        raise _NotPlain
    return v[p:end].decode("ascii"), end
