"""The intake's direct image reader agrees with the general decoder, or steps aside.

``ImageReader.read`` either returns exactly what fastavro and ``ImageArrival.from_record``
give, or None (the intake then takes the general way, which accepts or names the fault): it
never accepts a value the general decoder refuses, nor reads one differently.
"""

from __future__ import annotations

import copy
import io

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

from prompt.events import (
    AvroCodec,
    DecodeError,
    EventKind,
    ImageArrival,
    ImageReader,
    LocalSchemaRegistry,
    bundled,
    parse_schema,
)
from prompt.events.wire import frame

_REGISTRY = LocalSchemaRegistry()
_CODEC = AvroCodec(EventKind.IMAGE_ARRIVAL, _REGISTRY)

texts = st.text(max_size=80) | st.text(st.characters(max_codepoint=127), max_size=200)
ints = st.integers(-(2**31), 2**31 - 1)
longs = st.integers(-(2**63), 2**63 - 1)
arrivals = st.builds(
    ImageArrival, texts, texts, ints, ints, texts, texts, longs,
    st.floats(allow_nan=False) | st.just(float("nan")), longs,
)  # fmt: skip


def _general(value: bytes) -> ImageArrival | None:
    """What the general path reads (None: it refuses the value)."""
    try:
        record = _CODEC.decode_cached(value)
    except DecodeError:
        return None
    assert record is not None
    return ImageArrival.from_record(record)


def _same(a: ImageArrival | None, b: ImageArrival | None) -> bool:
    """Equal, counting a NaN event time as equal to itself."""
    if a is None or b is None:
        return a is b
    return a._replace(event_time=0.0) == b._replace(event_time=0.0) and (
        a.event_time == b.event_time
        or (a.event_time != a.event_time and b.event_time != b.event_time)
    )


@settings(max_examples=400)
@given(arrivals)
def test_an_encoded_arrival_reads_as_the_general_decoder_reads_it(arrival: ImageArrival) -> None:
    value = _CODEC.encode(arrival.to_record())
    direct = ImageReader(_CODEC).read(value)
    assert direct is None or _same(direct, _general(value))
    if all(s.isascii() for s in (arrival.instrument, arrival.group_id, arrival.uri,
                                 arrival.obs_id)):  # fmt: skip
        assert _same(direct, arrival)  # the usual image is read directly, not left aside


@settings(max_examples=600)
@given(arrivals, st.data())
def test_a_damaged_body_is_never_read_differently(
    arrival: ImageArrival, data: st.DataObject
) -> None:
    value = bytearray(_CODEC.encode(arrival.to_record()))
    damage = data.draw(st.sampled_from(["truncate", "append", "flip", "insert"]))
    at = data.draw(st.integers(5, max(5, len(value) - 1)))
    if damage == "truncate":
        del value[at:]
    elif damage == "append":
        value += data.draw(st.binary(min_size=1, max_size=4))
    elif damage == "flip":
        value[at] ^= data.draw(st.integers(1, 255))
    else:
        value[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    direct = ImageReader(_CODEC).read(bytes(value))
    if direct is not None:
        assert _same(direct, _general(bytes(value)))


def test_another_writer_schema_is_left_to_the_general_decoder() -> None:
    registry = LocalSchemaRegistry()
    codec = AvroCodec(EventKind.IMAGE_ARRIVAL, registry)
    writer = copy.deepcopy(bundled(EventKind.IMAGE_ARRIVAL).raw)
    writer["fields"].append({"name": "futureField", "type": "string", "default": ""})
    writer_id = registry.register_sync(parse_schema(writer))
    arrival = ImageArrival("LSSTCam", "2025-05-01T00:00:00.000-1", 0, 12, "s3://b/raw.fits")
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf, fastavro.parse_schema(writer), {**arrival.to_record(), "futureField": "x"}
    )
    value = frame(writer_id, buf.getvalue())
    assert ImageReader(codec).read(value) is None
    assert ImageArrival.from_record(codec.decode_cached(value) or {}) == arrival


def test_a_schema_id_not_yet_fetched_or_no_confluent_frame_is_left_aside() -> None:
    arrival = ImageArrival("LSSTCam", "2025-05-01T00:00:00.000-1", 0, 12, "s3://b/raw.fits")
    body = _CODEC.encode(arrival.to_record())[5:]
    reader = ImageReader(_CODEC)
    assert reader.read(frame(999, body)) is None
    assert reader.read(b'{"Records": []}') is None
    assert reader.read(b"") is None
    assert reader.read(frame(_CODEC.writer_id, body)) == arrival
