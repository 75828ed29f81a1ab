"""The dead-letter topic: every event the service cannot use, with the reason, and its bytes.

A dead letter always fits: a value larger than ``value_limit`` is cut, and the headers keep
its original size, a SHA-256 of the whole and where it came from, so it can be found in its
source topic. A broker outage is ridden out with backoff for a bounded time; after that the
event is logged with its position (it is still in its source topic) and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from prompt.aio import reraise_if_cancelled
from prompt.bounds import bound_error
from prompt.events import EventError
from prompt.events.consumed import ConsumedMessage
from prompt.kafka import broker_retriable
from prompt.metrics import DispatcherMetrics

log = structlog.get_logger(__name__)

VALUE_LIMIT = 512 * 1024
"""Bytes of an event kept in its dead letter (Kafka's default message limit is 1 MB)."""
KEY_LIMIT = 1024


class DeadLetters:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        metrics: DispatcherMetrics,
        *,
        value_limit: int = VALUE_LIMIT,
        retry_for_s: float = 60.0,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._value_limit = value_limit
        self._retry_for_s = retry_for_s
        self.count = 0

    async def send(self, msg: ConsumedMessage, kind: str, error: EventError) -> None:
        value: bytes = msg.value or b""
        key: bytes | None = getattr(msg, "key", None)
        headers = [
            ("prompt.reason", error.reason.encode()),
            ("prompt.error", bound_error(error).encode()),
            ("prompt.kind", kind.encode()),
            ("prompt.source.topic", msg.topic.encode()),
            ("prompt.source.partition", str(msg.partition).encode()),
            ("prompt.source.offset", str(msg.offset).encode()),
            ("prompt.original.size", str(len(value)).encode()),
            ("prompt.original.sha256", hashlib.sha256(value).hexdigest().encode()),
        ]
        if len(value) > self._value_limit:
            value = value[: self._value_limit]
            headers.append(("prompt.truncated", b"true"))
        if key is not None and len(key) > KEY_LIMIT:
            key = key[:KEY_LIMIT]
        await self._produce(value, key, headers, msg)
        self.count += 1
        self._metrics.dead_lettered.labels(kind, error.reason).inc()
        log.warning("event dead-lettered", kind=kind, reason=error.reason, error=bound_error(error),
                    topic=msg.topic, partition=msg.partition, offset=msg.offset)  # fmt: skip

    async def _produce(
        self, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]], msg: Any
    ) -> None:
        deadline = time.monotonic() + self._retry_for_s
        backoff = 0.1
        while True:
            try:
                await self._producer.send_and_wait(self._topic, value, key=key, headers=headers)
                return
            except MessageSizeTooLargeError:
                if not value:
                    raise
                # The broker's limit is lower than ours: keep the headers, drop the bytes.
                value = b""
                headers.append(("prompt.value_dropped", b"true"))
            except KafkaError as exc:
                reraise_if_cancelled()
                if not broker_retriable(exc) or time.monotonic() > deadline:
                    self._metrics.dead_letter_failures.inc()
                    log.error("dead letter not delivered; the event stays in its source topic",
                              error=repr(exc), topic=msg.topic, partition=msg.partition,
                              offset=msg.offset)  # fmt: skip
                    return
                log.warning("dead-letter topic unreachable; retrying", error=repr(exc),
                            retry_in=backoff)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
