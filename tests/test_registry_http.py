"""Writer-schema resolution through a Confluent-compatible registry over real HTTP.

The registry (``tests/registry.py``) is a small Confluent-compatible aiohttp app; it counts
requests so the cache can be checked.
"""

from __future__ import annotations

import copy
import io
from collections.abc import AsyncIterator
from typing import Any

import fastavro
import orjson
import pytest

from prompt.events import (
    AvroCodec,
    EventKind,
    HttpSchemaRegistry,
    RegistryUnavailableError,
    UnknownSchemaError,
    bundled,
)
from prompt.events.wire import frame
from prompt.stack.processes import free_port
from tests.registry import Registry, serve_registry


@pytest.fixture
async def registry_server() -> AsyncIterator[tuple[Registry, str]]:
    reg = Registry()
    async with serve_registry(reg) as url:
        yield reg, url


async def test_codec_registers_and_resolves_via_http(
    registry_server: tuple[Registry, str], next_visit_record: dict[str, Any]
) -> None:
    reg, url = registry_server
    client = HttpSchemaRegistry(url)
    try:
        codec = await AvroCodec.for_topic(EventKind.NEXT_VISIT, client, "nv")
        assert codec.writer_id == 100
        # A producer with a newer schema (one extra field) registered it as id 101.
        newer = copy.deepcopy(bundled(EventKind.NEXT_VISIT).raw)
        newer["fields"].append({"name": "extra", "type": "long", "default": 0})
        reg.schemas[101] = orjson.dumps(newer).decode()
        buf = io.BytesIO()
        fastavro.schemaless_writer(
            buf, fastavro.parse_schema(newer), {**next_visit_record, "extra": 5}
        )
        reader = HttpSchemaRegistry(url)
        decoder = AvroCodec(EventKind.NEXT_VISIT, reader)
        for _ in range(3):
            assert await decoder.decode(frame(101, buf.getvalue())) == next_visit_record
        assert reg.gets == 1, "writer schemas must be fetched once, then cached"
        with pytest.raises(UnknownSchemaError, match="not found"):
            await decoder.decode(frame(999, b"\x00"))
        await reader.close()
    finally:
        await client.close()


async def test_unreachable_registry_is_retriable() -> None:
    client = HttpSchemaRegistry(f"http://127.0.0.1:{free_port()}", timeout_s=1)
    try:
        with pytest.raises(RegistryUnavailableError) as info:
            await client.get(7)
        assert info.value.retriable
    finally:
        await client.close()
