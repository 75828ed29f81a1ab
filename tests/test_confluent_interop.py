"""Interoperability with Confluent's own clients: records written by confluent-kafka's
``AvroSerializer`` (through its ``SchemaRegistryClient``) are consumed and decoded by prompt,
and prompt's completions decode with confluent's ``AvroDeserializer``.

Everything is real: the broker, PostgreSQL, a dispatcher and pilots, and a Confluent-compatible
registry over HTTP (``tests/registry.py``) started by the test. Confluent's registry client is
synchronous, so its calls run in threads while the registry serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from prompt.config import Settings
from prompt.events import AvroCodec, EventKind, make_registry
from prompt.kafka import confluent_config
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id
from tests.registry import Registry, serve_registry

SCHEMAS = Path(__file__).parent.parent / "schemas"
DETECTORS = range(6)

pytestmark = pytest.mark.stack


def produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = Producer(confluent_config(settings, settings.kafka_bootstrap or ""))
    errors: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for value in values:
        producer.produce(topic, value, on_delivery=delivered)
    assert producer.flush(30) == 0 and not errors, errors
    producer.close()


def consume(settings: Settings, topic: str, count: int) -> list[bytes]:
    """The first ``count`` values of partition 0, read by assignment (no group join)."""
    consumer = Consumer(
        {**confluent_config(settings, settings.kafka_bootstrap or ""), "group.id": "interop",
         "enable.auto.commit": False}
    )  # fmt: skip
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                value = msg.value()
                assert value is not None
                out.append(value)
    finally:
        consumer.close()
    return out


async def test_confluent_producers_and_consumers_interoperate(
    isolated_settings: Settings,
) -> None:
    registry = Registry()
    async with serve_registry(registry) as url:
        settings = isolated_settings.with_overrides(schema_registry_url=url)
        topics = settings.topics
        client = SchemaRegistryClient({"url": url})
        nv_schema = (SCHEMAS / "next_visit.avsc").read_text()
        image_schema = (SCHEMAS / "image_arrival.avsc").read_text()

        # The observatory's next-visit producer registers its schema as it writes (default).
        nv_serializer = AvroSerializer(client, nv_schema)
        nv = next_visit_for(group_id("interop"), start_utc=time.time())
        nv_value = await asyncio.to_thread(
            nv_serializer,
            nv.to_record(),
            SerializationContext(topics.next_visit, MessageField.VALUE),
        )
        # The image producer does not register: it writes with the subject's latest version.
        image_subject = f"{topics.image_arrival}-value"
        image_id = await asyncio.to_thread(
            client.register_schema, image_subject, Schema(image_schema, "AVRO")
        )
        image_serializer = AvroSerializer(
            client, image_schema, conf={"auto.register.schemas": False, "use.latest.version": True}
        )
        image_ctx = SerializationContext(topics.image_arrival, MessageField.VALUE)
        images = image_arrivals(nv, DETECTORS)
        image_values = [
            await asyncio.to_thread(image_serializer, a.to_record(), image_ctx) for a in images
        ]
        assert image_values[0][:5] == b"\x00" + image_id.to_bytes(4, "big")

        # prompt's codec, with PROMPT_SCHEMA_REGISTRY_URL's registry, decodes them exactly.
        prompt_registry = make_registry(settings.schema_registry_url)
        try:
            nv_codec = AvroCodec(EventKind.NEXT_VISIT, prompt_registry)
            assert await nv_codec.decode(nv_value) == nv.to_record()
            # A producer a schema version ahead (one more field) still decodes.
            newer = json.loads(nv_schema)
            newer["fields"].append({"name": "extra", "type": "long", "default": 0})
            newer_value = await asyncio.to_thread(
                AvroSerializer(client, json.dumps(newer)),
                {**nv.to_record(), "extra": 7},
                SerializationContext(topics.next_visit, MessageField.VALUE),
            )
            assert newer_value[1:5] != nv_value[1:5]
            assert await nv_codec.decode(newer_value) == nv.to_record()
            image_codec = AvroCodec(EventKind.IMAGE_ARRIVAL, prompt_registry)
            assert [await image_codec.decode(v) for v in image_values] == [
                a.to_record() for a in images
            ]
        finally:
            await prompt_registry.close()

        # The same bytes through the broker into a running dispatcher: jobs run, completions
        # come out, registered by prompt under the completion topic's subject.
        tasks = sleep_task_file(mean_s=0.05, detectors=f"0-{len(DETECTORS) - 1}")
        async with dispatcher_env(settings, tasks, pilots=1, slots=len(DETECTORS)) as env:
            await asyncio.to_thread(produce, settings, topics.next_visit, [nv_value])
            await env.visit_preloaded(nv.group_id)
            await asyncio.to_thread(produce, settings, topics.image_arrival, image_values)
            await env.completions.wait_for(len(DETECTORS), timeout=60)
            decoded_by_prompt = sorted(env.completions.records, key=lambda r: r["detector"])
        assert [r["status"] for r in decoded_by_prompt] == ["finished"] * len(DETECTORS)

        # confluent's consumer and AvroDeserializer read prompt's completions.
        values = await asyncio.to_thread(consume, settings, topics.completion, len(DETECTORS))
        deserializer = AvroDeserializer(client)
        ctx = SerializationContext(topics.completion, MessageField.VALUE)
        by_confluent = [await asyncio.to_thread(deserializer, v, ctx) for v in values]
        assert sorted(by_confluent, key=lambda r: r["detector"]) == decoded_by_prompt
        completion_id = int.from_bytes(values[0][1:5], "big")
        assert json.loads(registry.schemas[completion_id])["name"] == "Completion"
        assert len(registry.subjects[f"{topics.next_visit}-value"]) == 2
        assert set(registry.subjects) == {
            f"{topics.next_visit}-value",
            image_subject,
            f"{topics.completion}-value",
        }

        # Lookups and Confluent's error codes, as confluent's client sees them.
        found = await asyncio.to_thread(
            client.lookup_schema, image_subject, Schema(image_schema, "AVRO")
        )
        assert (found.schema_id, found.version) == (image_id, 1)
        for call, code in (
            (lambda: client.get_schema(99999), 40403),
            (lambda: client.get_version(image_subject, 7), 40402),
            (lambda: client.get_latest_version("no-such-subject"), 40401),
            (lambda: client.lookup_schema(image_subject, Schema(nv_schema, "AVRO")), 40403),
            (lambda: client.register_schema("bad", Schema('{"type": "nope"}', "AVRO")), 42201),
        ):
            with pytest.raises(SchemaRegistryError) as info:
                await asyncio.to_thread(call)
            assert info.value.error_code == code
        client.close()
