"""Writer-schema resolution through a Confluent-compatible registry over real HTTP.

The registry here is a minimal aiohttp app speaking the two endpoints the client uses; it
counts requests so the cache can be checked.
"""

from __future__ import annotations

import copy
import io
from collections.abc import AsyncIterator
from typing import Any

import fastavro
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

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


class Registry:
    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.gets = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/schemas/ids/{id}", self.get)
        app.router.add_post("/subjects/{subject}/versions", self.post)
        return app

    async def get(self, request: web.Request) -> web.Response:
        self.gets += 1
        schema = self.schemas.get(int(request.match_info["id"]))
        if schema is None:
            return web.json_response(
                {"error_code": 40403, "message": "Schema not found"}, status=404
            )
        return web.json_response({"schema": schema})

    async def post(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        for sid, text in self.schemas.items():
            if text == body["schema"]:
                return web.json_response({"id": sid})
        sid = 100 + len(self.schemas)
        self.schemas[sid] = body["schema"]
        return web.json_response({"id": sid})


@pytest.fixture
async def registry_server() -> AsyncIterator[tuple[Registry, str]]:
    reg = Registry()
    server = TestServer(reg.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield reg, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


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
