"""Where a pilot sends the alert packets its jobs produce: the alert topic.

One producer per pilot, started with the pilot (not per job). A job is reported finished only
after its alerts are acknowledged by the broker (``acks=all``); if delivery fails the job
fails and is retried. Delivery is therefore at-least-once; alert ids (diaSourceId) are
deterministic, so a consumer can drop a repeat.

Two implementations of one interface: librdkafka's (confluent-kafka) and aiokafka's. Both
batch for 2 ms, send uncompressed (cutouts are already compressed FITS), allow 8 MiB requests.
``prompt bench alerts`` measures them against each other on the same broker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from confluent_kafka import KafkaException, Producer

from prompt.config import Settings
from prompt.kafka import confluent_config

LINGER_MS = 2
MAX_REQUEST_BYTES = 8 * 1024 * 1024
BATCH_BYTES = 1024 * 1024
DELIVERY_TIMEOUT_S = 30.0
"""A batch not acknowledged by then fails its job (which is retried) rather than waiting
librdkafka's default five minutes: the whole budget is 60 s."""


class AlertPublisher(Protocol):
    async def start(self) -> None: ...

    async def publish(self, values: list[bytes]) -> None: ...

    async def stop(self) -> None: ...


class AlertDeliveryError(Exception):
    """The broker did not take a job's alerts. ``retriable``: whether retrying the job can
    help (a broker away can come back; an alert too large stays too large)."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class _Publisher:
    """One producer, opened on the first ``start`` (concurrent callers wait for it), closed on
    ``stop``; subclasses say how to open, send and close."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._producer: Any = None
        self._lock = asyncio.Lock()
        self.published = 0

    async def start(self) -> None:
        async with self._lock:
            if self._producer is None:
                self._producer = await self._open()

    async def publish(self, values: list[bytes]) -> None:
        if not values:
            return
        if self._producer is None:
            await self.start()
        await self._send(self._producer, values)
        self.published += len(values)

    async def stop(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
            if producer is not None:
                await self._close(producer)

    async def _open(self) -> Any:
        raise NotImplementedError

    async def _send(self, producer: Any, values: list[bytes]) -> None:
        raise NotImplementedError

    async def _close(self, producer: Any) -> None:
        raise NotImplementedError


class KafkaAlertPublisher(_Publisher):
    """aiokafka's producer, on the pilot's event loop."""

    def __init__(self, options: dict[str, Any], topic: str) -> None:
        super().__init__(topic)
        self._options = options

    async def _open(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            **self._options, acks="all", linger_ms=LINGER_MS, enable_idempotence=False,
            max_request_size=MAX_REQUEST_BYTES, max_batch_size=BATCH_BYTES,
            request_timeout_ms=int(DELIVERY_TIMEOUT_S * 1000),
        )  # fmt: skip
        await producer.start()
        return producer

    async def _send(self, producer: AIOKafkaProducer, values: list[bytes]) -> None:
        futures = [await producer.send(self.topic, value) for value in values]
        await asyncio.gather(*futures)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        await producer.stop()


class _Batch:
    """One ``publish`` call: settled on the event loop once every message is reported."""

    __slots__ = ("error", "future", "left", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.left = count
        self.error: Any = None

    def delivered(self, err: Any, _msg: Any) -> None:
        """librdkafka's delivery report, on the polling thread."""
        if err is not None and self.error is None:
            self.error = err
        self.left -= 1
        if self.left == 0:
            self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if self.future.done():
            return
        if self.error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(AlertDeliveryError(f"alert not delivered: {self.error}"))


class ConfluentAlertPublisher(_Publisher):
    """librdkafka's producer. ``produce`` only queues the message (no I/O on the event loop);
    librdkafka's threads send it, and one thread of ours polls for delivery reports and wakes
    the loop once per ``publish`` call, not per message."""

    def __init__(
        self, config: dict[str, Any], topic: str, *, timeout_s: float = DELIVERY_TIMEOUT_S
    ) -> None:
        super().__init__(topic)
        self._timeout_s = timeout_s
        self._config = {
            **config,
            "acks": "all",
            "linger.ms": LINGER_MS,
            "enable.idempotence": False,
            "compression.type": "none",
            "message.max.bytes": MAX_REQUEST_BYTES,
            "batch.size": BATCH_BYTES,
            "delivery.timeout.ms": int(timeout_s * 1000),
            # librdkafka's own log lines go through logging (and so structlog), not stderr.
            "logger": logging.getLogger("librdkafka"),
        }
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()

    async def _open(self) -> Producer:
        producer = Producer(self._config)
        problem = await self._unusable(producer)
        if problem is not None:
            await asyncio.to_thread(producer.close)
            raise AlertDeliveryError(f"alert topic {self.topic}: {problem}")
        self._stopping.clear()
        self._poller = threading.Thread(
            target=self._poll, args=(producer,), name="alert-delivery", daemon=True
        )
        self._poller.start()
        return producer

    async def _unusable(self, producer: Producer) -> str | None:
        """Why the topic cannot be written, found now (like aiokafka's start())."""
        try:
            meta = await asyncio.to_thread(producer.list_topics, self.topic, self._timeout_s)
        except KafkaException as exc:
            return str(exc)
        topic = meta.topics.get(self.topic)
        if topic is None:
            return "not in the cluster's metadata"
        return None if topic.error is None else str(topic.error)

    def _poll(self, producer: Producer) -> None:
        while not self._stopping.is_set():
            producer.poll(0.1)  # returns as soon as a report is there

    async def _send(self, producer: Producer, values: list[bytes]) -> None:
        batch = _Batch(asyncio.get_running_loop(), len(values))
        for i, value in enumerate(values):
            # On an error, those already queued are still sent (reported to a batch nobody
            # awaits any more).
            try:
                producer.produce(self.topic, value, on_delivery=batch.delivered)
            except BufferError as exc:  # librdkafka's local queue is full
                raise AlertDeliveryError(
                    f"alert {i + 1}/{len(values)} not queued: producer queue full"
                ) from exc
            except KafkaException as exc:  # e.g. larger than message.max.bytes
                raise AlertDeliveryError(
                    f"alert {i + 1}/{len(values)} refused: {exc}", retriable=False
                ) from exc
        await batch.future

    async def _close(self, producer: Producer) -> None:
        await asyncio.to_thread(producer.flush, self._timeout_s)
        self._stopping.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join)
            self._poller = None
        await asyncio.to_thread(producer.close)


def alert_publisher(settings: Settings, bootstrap: str) -> AlertPublisher:
    """The pilot's producer of the alert topic: librdkafka's, measured faster than aiokafka's
    with a third of the CPU per alert (``prompt bench alerts``)."""
    return ConfluentAlertPublisher(confluent_config(settings, bootstrap), settings.topics.alerts)
