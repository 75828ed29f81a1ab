"""A small Confluent-compatible Schema Registry over real HTTP, for tests.

It speaks what prompt's ``HttpSchemaRegistry`` and confluent-kafka's ``SchemaRegistryClient``
call: register under a subject, look a schema up in a subject, get by id, get a subject's
version (or ``latest``), list subjects and versions, with Confluent's error bodies and codes
(40401 subject not found, 40402 version not found, 40403 schema not found, 42201 invalid
schema, 42202 invalid version). Schemas are deduplicated across subjects by their canonical
form, as Confluent does, so one schema has one id. No compatibility checks, no deletes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import fastavro
from aiohttp import web
from aiohttp.test_utils import TestServer

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {"error_code": code, "message": message}, status=status, content_type=CONTENT_TYPE
    )


def _ok(body: Any) -> web.Response:
    return web.json_response(body, content_type=CONTENT_TYPE)


def _canonical(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


class Registry:
    def __init__(self, first_id: int = 100) -> None:
        self.schemas: dict[int, str] = {}
        """id -> schema text as first registered (tests may add entries directly)."""
        self.subjects: dict[str, list[int]] = {}
        """subject -> schema id of each version (version n at index n-1)."""
        self.gets = 0
        """GET /schemas/ids/{id} requests served."""
        self._next_id = first_id

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/schemas/ids/{id}", self.get_by_id)
        r.add_get("/schemas/ids/{id}/versions", self.versions_of_id)
        r.add_get("/subjects", self.list_subjects)
        r.add_post("/subjects/{subject}/versions", self.register)
        r.add_get("/subjects/{subject}/versions", self.list_versions)
        r.add_get("/subjects/{subject}/versions/{version}", self.get_version)
        r.add_post("/subjects/{subject}", self.lookup)
        return app

    def _id_of(self, text: str) -> int | None:
        canonical = _canonical(text)
        return next((i for i, t in self.schemas.items() if _canonical(t) == canonical), None)

    @staticmethod
    async def _schema_text(request: web.Request) -> str | web.Response:
        try:
            body = json.loads(await request.read())
            text = body["schema"]
            if body.get("schemaType", "AVRO") != "AVRO":
                return _error(422, 42201, f"unsupported schema type {body['schemaType']}")
            fastavro.parse_schema(json.loads(text))
        except (ValueError, KeyError, TypeError, fastavro.schema.SchemaParseException) as exc:
            return _error(422, 42201, f"Invalid schema: {exc}")
        return str(text)

    def _registered(self, subject: str, version: int) -> dict[str, Any]:
        schema_id = self.subjects[subject][version - 1]
        return {
            "subject": subject,
            "version": version,
            "id": schema_id,
            "schema": self.schemas[schema_id],
        }

    async def get_by_id(self, request: web.Request) -> web.Response:
        self.gets += 1
        schema = self.schemas.get(int(request.match_info["id"]))
        if schema is None:
            return _error(404, 40403, "Schema not found")
        return _ok({"schema": schema})

    async def versions_of_id(self, request: web.Request) -> web.Response:
        schema_id = int(request.match_info["id"])
        if schema_id not in self.schemas:
            return _error(404, 40403, "Schema not found")
        return _ok([
            {"subject": s, "version": v + 1}
            for s, ids in self.subjects.items() for v, i in enumerate(ids) if i == schema_id
        ])  # fmt: skip

    async def list_subjects(self, request: web.Request) -> web.Response:
        return _ok(sorted(self.subjects))

    async def register(self, request: web.Request) -> web.Response:
        text = await self._schema_text(request)
        if isinstance(text, web.Response):
            return text
        subject = request.match_info["subject"]
        schema_id = self._id_of(text)
        if schema_id is None:
            schema_id, self._next_id = self._next_id, self._next_id + 1
            self.schemas[schema_id] = text
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return _ok({"id": schema_id})

    async def list_versions(self, request: web.Request) -> web.Response:
        versions = self.subjects.get(request.match_info["subject"])
        if versions is None:
            return _error(404, 40401, "Subject not found")
        return _ok(list(range(1, len(versions) + 1)))

    async def get_version(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        versions = self.subjects.get(subject)
        if versions is None:
            return _error(404, 40401, "Subject not found")
        raw = request.match_info["version"]
        if raw == "latest" or raw == "-1":
            version = len(versions)
        elif raw.isdigit() and int(raw) > 0:
            version = int(raw)
        else:
            return _error(422, 42202, "The specified version is not a valid version id")
        if version > len(versions):
            return _error(404, 40402, "Version not found")
        return _ok(self._registered(subject, version))

    async def lookup(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        versions = self.subjects.get(subject)
        if versions is None:
            return _error(404, 40401, "Subject not found")
        text = await self._schema_text(request)
        if isinstance(text, web.Response):
            return text
        schema_id = self._id_of(text)
        if schema_id is None or schema_id not in versions:
            return _error(404, 40403, "Schema not found")
        return _ok(self._registered(subject, versions.index(schema_id) + 1))


@contextlib.asynccontextmanager
async def serve_registry(registry: Registry) -> AsyncIterator[str]:
    """Serve ``registry`` on a free loopback port; yields its base URL."""
    server = TestServer(registry.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
