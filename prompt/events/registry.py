"""Writer-schema lookup by id: the bundled contracts, or a Confluent-compatible Schema Registry.

Lookups are cached forever (a schema id is immutable), so after the first message of each
writer schema the hot path never leaves the process.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import aiohttp
import orjson

from prompt.events.errors import RegistryUnavailableError, UnknownSchemaError
from prompt.events.schemas import CONTRACTS, EventKind, Schema, bundled, parse_schema


class SchemaRegistry(Protocol):
    def cached(self, schema_id: int) -> Schema | None:
        """The schema if already known, without I/O."""

    async def get(self, schema_id: int) -> Schema:
        """The schema for an id; raises UnknownSchemaError or RegistryUnavailableError."""

    async def register(self, subject: str, schema: Schema) -> int:
        """The id of ``schema`` under ``subject``, registering it if new."""

    async def close(self) -> None: ...


class LocalSchemaRegistry:
    """In-process registry seeded with the bundled contracts at their fixed ids."""

    def __init__(self) -> None:
        self._by_id: dict[int, Schema] = {}
        self._ids: dict[str, int] = {}
        for kind, info in CONTRACTS.items():
            self._add(info.bundled_id, bundled(kind))

    def _add(self, schema_id: int, schema: Schema) -> None:
        self._by_id[schema_id] = schema
        self._ids.setdefault(schema.canonical(), schema_id)

    def cached(self, schema_id: int) -> Schema | None:
        return self._by_id.get(schema_id)

    async def get(self, schema_id: int) -> Schema:
        schema = self._by_id.get(schema_id)
        if schema is None:
            raise UnknownSchemaError(f"schema id {schema_id} is not a bundled or registered schema")
        return schema

    def register_sync(self, schema: Schema) -> int:
        existing = self._ids.get(schema.canonical())
        if existing is not None:
            return existing
        new_id = max(self._by_id, default=0) + 1
        self._add(new_id, schema)
        return new_id

    async def register(self, subject: str, schema: Schema) -> int:
        return self.register_sync(schema)

    async def close(self) -> None:
        return None


class HttpSchemaRegistry:
    """Client of the Confluent Schema Registry REST API (``GET /schemas/ids/{id}``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        auth: aiohttp.BasicAuth | None = None,
    ) -> None:
        self._url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._auth = auth
        self._session: aiohttp.ClientSession | None = None
        self._by_id: dict[int, Schema] = {}
        self._inflight: dict[int, asyncio.Future[Schema]] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auth=self._auth)
        return self._session

    def cached(self, schema_id: int) -> Schema | None:
        return self._by_id.get(schema_id)

    async def get(self, schema_id: int) -> Schema:
        schema = self._by_id.get(schema_id)
        if schema is not None:
            return schema
        pending = self._inflight.get(schema_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Schema] = asyncio.get_running_loop().create_future()
        self._inflight[schema_id] = future
        try:
            schema = await self._fetch(schema_id)
            self._by_id[schema_id] = schema
            future.set_result(schema)
            return schema
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[schema_id]

    async def _fetch(self, schema_id: int) -> Schema:
        url = f"{self._url}/schemas/ids/{schema_id}"
        try:
            async with self._client().get(url) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryUnavailableError(f"schema registry {self._url}: {exc!r}") from exc
        if status == 404:
            raise UnknownSchemaError(f"schema id {schema_id} not found in registry {self._url}")
        if status != 200:
            raise RegistryUnavailableError(
                f"schema registry {self._url} answered HTTP {status} for id {schema_id}"
            )
        try:
            doc: dict[str, Any] = orjson.loads(body)
            if doc.get("schemaType", "AVRO") != "AVRO":
                raise UnknownSchemaError(f"schema id {schema_id} is {doc['schemaType']}, not Avro")
            return parse_schema(doc["schema"])
        except UnknownSchemaError:
            raise
        except Exception as exc:
            raise UnknownSchemaError(f"schema id {schema_id}: unusable schema ({exc})") from exc

    async def register(self, subject: str, schema: Schema) -> int:
        url = f"{self._url}/subjects/{subject}/versions"
        payload = orjson.dumps({"schema": schema.canonical(), "schemaType": "AVRO"})
        headers = {"Content-Type": "application/vnd.schemaregistry.v1+json"}
        try:
            async with self._client().post(url, data=payload, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryUnavailableError(f"schema registry {self._url}: {exc!r}") from exc
        if status != 200:
            raise RegistryUnavailableError(
                f"registering {subject} at {self._url}: HTTP {status} {body[:200]!r}"
            )
        schema_id = int(orjson.loads(body)["id"])
        self._by_id[schema_id] = schema
        return schema_id

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def make_registry(url: str | None) -> SchemaRegistry:
    return HttpSchemaRegistry(url) if url else LocalSchemaRegistry()


def subject_for(kind: EventKind, topic: str) -> str:
    """TopicNameStrategy, as Confluent serializers use by default."""
    del kind
    return f"{topic}-value"
