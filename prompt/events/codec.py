"""Avro codec for one event kind, in Confluent wire format.

Reader schemas are the bundled contracts, parsed once. A writer schema is looked up by the id in
the frame (cached), and fastavro resolves it against the reader schema, so records written with
extra fields, or without fields the reader has defaults for, decode.
"""

from __future__ import annotations

import io
from typing import Any, cast

import fastavro

from prompt.events.errors import DecodeError, EncodeError, PayloadError, UnknownSchemaError
from prompt.events.registry import SchemaRegistry, subject_for
from prompt.events.schemas import CONTRACTS, EventKind, Schema, bundled
from prompt.events.wire import frame, unframe
from prompt.events.writer import plan

Record = dict[str, Any]


class AvroCodec:
    def __init__(
        self, kind: EventKind, registry: SchemaRegistry, *, writer_id: int | None = None
    ) -> None:
        self.kind = kind
        self.reader: Schema = bundled(kind)
        self.writer_id = CONTRACTS[kind].bundled_id if writer_id is None else writer_id
        self._registry = registry
        self._reader_canonical = self.reader.canonical()
        try:
            self._write = plan(self.reader.raw)
        except NotImplementedError:  # a type the plan does not know: fastavro writes it
            self._write = self._fastavro_body
        # writer schema id -> reader_schema argument for fastavro (None when identical).
        self._resolution: dict[int, tuple[Any, Any]] = {}

    @classmethod
    async def for_topic(cls, kind: EventKind, registry: SchemaRegistry, topic: str) -> AvroCodec:
        """A codec whose writes carry the id the registry gives our schema for ``topic``."""
        writer_id = await registry.register(subject_for(kind, topic), bundled(kind))
        return cls(kind, registry, writer_id=writer_id)

    def encode(self, record: Record) -> bytes:
        try:
            body = self._write(record)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise EncodeError(f"record does not fit the {self.kind} schema: {why}") from exc
        return frame(self.writer_id, body)

    def _fastavro_body(self, record: Record) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.reader.parsed, record)
        return buf.getvalue()

    def decode_cached(self, value: bytes | None) -> Record | None:
        """Decode without I/O; None if the writer schema is not yet known (call ``decode``)."""
        schema_id, body = unframe(value)
        plan = self._cached_plan(schema_id)
        return None if plan is None else self._read(schema_id, body, plan)

    def writes_as_reader(self, schema_id: int) -> bool:
        """Whether records with this writer schema id are laid out as the bundled schema
        (known without I/O; False while the id is not yet fetched)."""
        plan = self._cached_plan(schema_id)
        return plan is not None and plan[1] is None

    def _cached_plan(self, schema_id: int) -> tuple[Any, Any] | None:
        plan = self._resolution.get(schema_id)
        if plan is None:
            writer = self._registry.cached(schema_id)
            if writer is None:
                return None
            plan = self._plan(schema_id, writer)
        return plan

    async def decode(self, value: bytes | None) -> Record:
        """Decode a framed value. Raises a DecodeError subclass (or RegistryUnavailableError)."""
        try:
            record = self.decode_cached(value)
            if record is not None:
                return record
            schema_id, body = unframe(value)
            writer = await self._registry.get(schema_id)
            return self._read(schema_id, body, self._plan(schema_id, writer))
        except DecodeError as exc:
            exc.kind = exc.kind or str(self.kind)
            raise

    def _plan(self, schema_id: int, writer: Schema) -> tuple[Any, Any]:
        if writer.canonical() == self._reader_canonical:
            plan = (self.reader.parsed, None)
        else:
            if writer.raw.get("type") != "record":
                raise UnknownSchemaError(f"schema id {schema_id} is not an Avro record schema")
            plan = (writer.parsed, self.reader.parsed)
        self._resolution[schema_id] = plan
        return plan

    def _read(self, schema_id: int, body: memoryview, plan: tuple[Any, Any]) -> Record:
        buf = io.BytesIO(body)
        writer, reader = plan
        try:
            record = fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:
            raise PayloadError(
                f"Avro body ({len(body)} bytes, schema id {schema_id}) does not decode: "
                f"{type(exc).__name__}: {exc}",
                kind=str(self.kind),
            ) from exc
        if buf.tell() != len(body):
            raise PayloadError(
                f"{len(body) - buf.tell()} trailing bytes after the Avro record "
                f"(schema id {schema_id})",
                kind=str(self.kind),
            )
        return cast(Record, record)
