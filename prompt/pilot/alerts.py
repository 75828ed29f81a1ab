"""Where a pilot sends the alert packets its jobs produce: the alert topic.

One producer per pilot, started with the pilot (not per job). A job is reported finished only
after its alerts are acknowledged by the broker; if delivery fails the job fails and is
retried. Delivery is therefore at-least-once; alert ids (diaSourceId) are deterministic, so a
consumer can drop a repeat.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer


class AlertPublisher(Protocol):
    async def start(self) -> None: ...

    async def publish(self, values: list[bytes]) -> None: ...

    async def stop(self) -> None: ...


class KafkaAlertPublisher:
    def __init__(self, options: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self._options = options
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self.published = 0

    async def start(self) -> None:
        async with self._lock:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(
                **self._options, acks="all", linger_ms=2, enable_idempotence=False,
                max_request_size=8 * 1024 * 1024, max_batch_size=1024 * 1024,
            )  # fmt: skip
            await producer.start()
            self._producer = producer

    async def publish(self, values: list[bytes]) -> None:
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        futures = [await self._producer.send(self.topic, value) for value in values]
        await asyncio.gather(*futures)
        self.published += len(values)

    async def stop(self) -> None:
        async with self._lock:
            if self._producer is not None:
                producer, self._producer = self._producer, None
                await producer.stop()
