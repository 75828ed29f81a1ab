"""The Avro codec and Confluent framing, without a broker."""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro
import pytest

from prompt.events import (
    AvroCodec,
    DecodeError,
    EncodeError,
    EventKind,
    FramingError,
    LocalSchemaRegistry,
    PayloadError,
    UnknownSchemaError,
    bundled,
    parse_schema,
)
from prompt.events.wire import frame


@pytest.fixture
def registry() -> LocalSchemaRegistry:
    return LocalSchemaRegistry()


@pytest.fixture
def codec(registry: LocalSchemaRegistry) -> AvroCodec:
    return AvroCodec(EventKind.NEXT_VISIT, registry)


def _body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


async def test_next_visit_round_trip(codec: AvroCodec, next_visit_record: dict[str, Any]) -> None:
    value = codec.encode(next_visit_record)
    assert value[0] == 0
    assert int.from_bytes(value[1:5], "big") == 1
    assert await codec.decode(value) == next_visit_record


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_contract_is_a_record_with_a_namespace(kind: EventKind) -> None:
    schema = bundled(kind)
    assert schema.raw["type"] == "record"
    assert "." in schema.fullname


def test_next_visit_fields_all_have_defaults() -> None:
    fields = bundled(EventKind.NEXT_VISIT).raw["fields"]
    names = {f["name"] for f in fields}
    assert {"groupId", "position", "startTime", "filters", "instrument", "nimages"} <= names
    assert all("default" in f for f in fields)


async def test_writer_with_unknown_extra_field_decodes(
    registry: LocalSchemaRegistry, codec: AvroCodec, next_visit_record: dict[str, Any]
) -> None:
    writer = copy.deepcopy(bundled(EventKind.NEXT_VISIT).raw)
    writer["fields"].append({"name": "futureField", "type": "string", "default": ""})
    writer_id = registry.register_sync(parse_schema(writer))
    assert writer_id != 1
    value = frame(writer_id, _body(writer, {**next_visit_record, "futureField": "hello"}))
    assert await codec.decode(value) == next_visit_record


async def test_writer_missing_a_defaulted_field_decodes(
    registry: LocalSchemaRegistry, codec: AvroCodec, next_visit_record: dict[str, Any]
) -> None:
    writer = copy.deepcopy(bundled(EventKind.NEXT_VISIT).raw)
    writer["fields"] = [f for f in writer["fields"] if f["name"] not in ("survey", "nimages")]
    old = {k: v for k, v in next_visit_record.items() if k not in ("survey", "nimages")}
    writer_id = registry.register_sync(parse_schema(writer))
    decoded = await codec.decode(frame(writer_id, _body(writer, old)))
    assert decoded == {**next_visit_record, "survey": "", "nimages": 0}


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (b"", FramingError, "empty"),
        (b"\x00\x00\x01", FramingError, "shorter"),
        (b"garbage bytes, not Avro at all", FramingError, "magic byte"),
        (b"\x01\x00\x00\x00\x01\x02\x03", FramingError, "magic byte 0x01"),
        (b"\x00\x00\x00\x30\x39" + b"\x02" * 40, UnknownSchemaError, "schema id 12345"),
    ],
)
async def test_bad_frames_raise_typed_errors(
    codec: AvroCodec, value: bytes, error: type[DecodeError], words: str
) -> None:
    with pytest.raises(error, match=words) as info:
        await codec.decode(value)
    assert info.value.kind == "next-visit"
    assert not info.value.retriable


async def test_truncated_avro_raises_payload_error(
    codec: AvroCodec, next_visit_record: dict[str, Any]
) -> None:
    value = codec.encode(next_visit_record)
    for cut in (6, len(value) // 2, len(value) - 1):
        with pytest.raises(PayloadError):
            await codec.decode(value[:cut])


async def test_trailing_bytes_raise_payload_error(
    codec: AvroCodec, next_visit_record: dict[str, Any]
) -> None:
    with pytest.raises(PayloadError, match="trailing"):
        await codec.decode(codec.encode(next_visit_record) + b"\x00\x01")


def test_encode_rejects_records_that_do_not_fit(codec: AvroCodec) -> None:
    with pytest.raises(EncodeError):
        codec.encode({"groupId": 12})


async def test_completion_round_trip(registry: LocalSchemaRegistry) -> None:
    codec = AvroCodec(EventKind.COMPLETION, registry)
    record = {
        "instrument": "LSSTCam",
        "groupId": "2025-05-01T23:33:14.762",
        "detector": 94,
        "jobId": 7,
        "task": "alerts",
        "taskVersion": 1,
        "status": "late",
        "attempt": 2,
        "pilot": "pilot-1",
        "cacheHit": True,
        "error": None,
        "nextVisitReceived": 1.0,
        "preloaded": 1.5,
        "imageArrived": 2.0,
        "imageConsumed": 2.001,
        "dispatched": 2.002,
        "started": 2.003,
        "finished": 70.0,
        "completed": 70.01,
        "deadline": 62.0,
        "latencySeconds": 68.0,
        "dispatchMs": 2.0,
        "runSeconds": 67.997,
        "counts": {"alerts": 3},
        "stageSeconds": {"isr": 0.1},
        "failureKind": None,
    }
    assert await codec.decode(codec.encode(record)) == record
