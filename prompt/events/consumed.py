"""Decoding a consumed Kafka record, with its position attached to any error."""

from __future__ import annotations

from typing import Any, Protocol

from prompt.events.codec import AvroCodec, Record
from prompt.events.errors import EventError


class ConsumedMessage(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> Any: ...


async def decode_consumed(codec: AvroCodec, msg: ConsumedMessage) -> Record:
    """Decode ``msg.value``; an EventError names the topic, partition and offset."""
    try:
        return await codec.decode(msg.value)
    except EventError as exc:
        raise exc.at(topic=msg.topic, partition=msg.partition, offset=msg.offset) from None
