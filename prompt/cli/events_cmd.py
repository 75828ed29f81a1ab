"""``prompt events decode|encode``: inspect or craft one raw Kafka message value."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from prompt.cli.common import fail
from prompt.config import Settings
from prompt.events import (
    AvroCodec,
    EventError,
    EventKind,
    ImageArrival,
    RawObject,
    decode_image_message,
    make_registry,
)
from prompt.events.raw_metadata import RawMetadataResolver


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("events", help="decode/encode event message values (operator tool)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    kinds = [k.value for k in EventKind]
    dec = actions.add_parser(
        "decode",
        help="raw message value on stdin (Confluent-framed Avro, or bucket-notification JSON "
        "for image-arrival) -> JSON on stdout",
    )
    dec.add_argument("--topic-kind", required=True, choices=kinds)
    dec.add_argument(
        "--raw-root",
        type=Path,
        help="bucket root (one directory per bucket) to read group/snap of notified raws",
    )
    enc = actions.add_parser("encode", help="JSON record on stdin -> Confluent-framed Avro")
    enc.add_argument("--topic-kind", required=True, choices=kinds)
    enc.add_argument("--topic", help="topic, for the registry subject (with a schema registry)")
    for parser in (dec, enc):
        parser.add_argument(
            "--schema-registry",
            help="Confluent Schema Registry URL (env PROMPT_SCHEMA_REGISTRY_URL)",
        )
    p.set_defaults(handler=run)


def _image_json(item: ImageArrival | RawObject, resolved: ImageArrival | None) -> dict[str, Any]:
    if isinstance(item, ImageArrival):
        return item.to_record()
    if resolved is not None:
        return resolved.to_record()
    return {
        "instrument": item.instrument,
        "groupId": None,
        "snap": None,
        "detector": item.detector,
        "uri": item.uri,
        "obsId": item.obs_id,
        "dayObs": item.day_obs,
        "eventTime": item.event_time,
        "size": item.size,
    }


async def _decode(
    kind: EventKind, value: bytes, registry_url: str | None, root: Path | None
) -> Any:
    registry = make_registry(registry_url)
    try:
        codec = AvroCodec(kind, registry)
        if kind is not EventKind.IMAGE_ARRIVAL:
            return await codec.decode(value)
        resolver = RawMetadataResolver(root) if root else None
        out = []
        for item in await decode_image_message(codec, value):
            resolved = None
            if isinstance(item, RawObject) and resolver is not None:
                resolved = await resolver.resolve(item)
            out.append(_image_json(item, resolved))
        return out
    finally:
        await registry.close()


async def _encode(
    kind: EventKind, record: Any, registry_url: str | None, topic: str | None
) -> bytes:
    registry = make_registry(registry_url)
    try:
        if registry_url:
            if not topic:
                raise EventError("--topic is needed to register the schema with a registry")
            codec = await AvroCodec.for_topic(kind, registry, topic)
        else:
            codec = AvroCodec(kind, registry)
        return codec.encode(record)
    finally:
        await registry.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    kind = EventKind(args.topic_kind)
    registry_url = args.schema_registry or settings.schema_registry_url
    value = sys.stdin.buffer.read()
    try:
        if args.action == "decode":
            decoded = asyncio.run(_decode(kind, value, registry_url, args.raw_root))
            sys.stdout.write(orjson.dumps(decoded, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            try:
                record = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                return fail(f"stdin is not JSON: {exc}")
            sys.stdout.buffer.write(asyncio.run(_encode(kind, record, registry_url, args.topic)))
    except EventError as exc:
        return fail(str(exc))
    return 0
