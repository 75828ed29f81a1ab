"""Confluent-framed events through the real broker, with both Kafka clients."""

from __future__ import annotations

import asyncio

import confluent_kafka
import pytest
from aiokafka import AIOKafkaProducer

from prompt.config import Settings
from prompt.events import (
    AvroCodec,
    DecodeError,
    EventKind,
    FramingError,
    LocalSchemaRegistry,
    PayloadError,
    UnknownSchemaError,
    decode_consumed,
    make_notification,
)
from prompt.events.errors import NotificationError
from prompt.events.image_topic import decode_image_message
from prompt.kafka import aiokafka_options, confluent_config
from tests.conftest import make_next_visit
from tests.helpers import read_topic

pytestmark = pytest.mark.stack


async def test_aiokafka_produce_consume_decode(isolated_settings: Settings) -> None:
    settings = isolated_settings
    codec = AvroCodec(EventKind.NEXT_VISIT, LocalSchemaRegistry())
    records = [make_next_visit(i) for i in range(5)]
    producer = AIOKafkaProducer(**aiokafka_options(settings, settings.kafka_bootstrap or ""))
    await producer.start()
    try:
        for r in records:
            await producer.send_and_wait(settings.topics.next_visit, codec.encode(r), partition=0)
    finally:
        await producer.stop()
    msgs = await read_topic(settings, settings.topics.next_visit, len(records))
    assert [await decode_consumed(codec, m) for m in msgs] == records


async def test_confluent_kafka_produce_and_assign_consume(isolated_settings: Settings) -> None:
    settings = isolated_settings
    codec = AvroCodec(EventKind.NEXT_VISIT, LocalSchemaRegistry())
    record = make_next_visit(7, filters="", survey="")
    conf = confluent_config(settings, settings.kafka_bootstrap or "")

    def produce_then_fetch() -> bytes:
        producer = confluent_kafka.Producer(conf)
        producer.produce(settings.topics.next_visit, codec.encode(record), partition=0)
        assert producer.flush(10) == 0
        consumer = confluent_kafka.Consumer(
            {**conf, "group.id": "unused", "enable.auto.commit": False}
        )
        try:
            consumer.assign([confluent_kafka.TopicPartition(settings.topics.next_visit, 0, 0)])
            for _ in range(100):
                msg = consumer.poll(0.2)
                if msg is not None and msg.error() is None:
                    value = msg.value()
                    assert isinstance(value, bytes)
                    return value
            raise AssertionError("confluent-kafka consumer got nothing")
        finally:
            consumer.close()

    value = await asyncio.to_thread(produce_then_fetch)
    assert await codec.decode(value) == record
    # And the same bytes read with aiokafka decode identically.
    (msg,) = await read_topic(settings, settings.topics.next_visit, 1)
    assert await decode_consumed(codec, msg) == record


async def test_bad_messages_raise_typed_errors_and_consumption_goes_on(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    codec = AvroCodec(EventKind.NEXT_VISIT, LocalSchemaRegistry())
    good = codec.encode(make_next_visit(1))
    bad: list[tuple[bytes, type[DecodeError]]] = [
        (b"\x89PNG garbage", FramingError),
        (b"\x07\x00\x00\x00\x01" + good[5:], FramingError),
        (b"\x00\x00\x00\x04\xd2" + good[5:], UnknownSchemaError),
        (good[: len(good) // 2], PayloadError),
    ]
    producer = AIOKafkaProducer(**aiokafka_options(settings, settings.kafka_bootstrap or ""))
    await producer.start()
    try:
        for value, _ in bad:
            await producer.send_and_wait(settings.topics.next_visit, value, partition=0)
        await producer.send_and_wait(settings.topics.next_visit, good, partition=0)
        await producer.send_and_wait(
            settings.topics.image_arrival, b"this is not json", partition=0
        )
        await producer.send_and_wait(
            settings.topics.image_arrival,
            make_notification(
                "b",
                "LSSTCam/20250501/MC_O_20250501_000001/MC_O_20250501_000001_R22_S11.fits",
                event_time=1.0,
            ),
            partition=0,
        )
    finally:
        await producer.stop()

    msgs = await read_topic(settings, settings.topics.next_visit, len(bad) + 1)
    for msg, (_, error) in zip(msgs, bad, strict=False):
        with pytest.raises(error) as info:
            await decode_consumed(codec, msg)
        where = f"{settings.topics.next_visit}[0]@{msg.offset}"
        assert where in str(info.value)
    assert await decode_consumed(codec, msgs[-1]) == make_next_visit(1)

    image_codec = AvroCodec(EventKind.IMAGE_ARRIVAL, LocalSchemaRegistry())
    not_json, notification = await read_topic(settings, settings.topics.image_arrival, 2)
    with pytest.raises(NotificationError, match="not JSON"):
        await decode_image_message(image_codec, not_json.value)
    (raw,) = await decode_image_message(image_codec, notification.value)
    assert getattr(raw, "detector", None) == 94
