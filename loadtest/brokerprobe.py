"""Looking at the broker from outside, as a client: how many produce batches a partition holds,
and what one fetch of its newest record costs.

The embedded broker (tansu, memory or S3 storage) keeps every produce batch as one object and
lists all of a partition's objects on every fetch that returns data, giving up (an empty answer)
when the listing outlasts the fetch's max wait; so the batch count, not the record count, is the
size that matters there. On Kafka both figures are harmless.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from prompt.config import Settings
from prompt.kafka import aiokafka_options

PARTITION_FETCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class PartitionSize:
    topic: str
    partition: int
    records: int
    batches: int


async def partition_sizes(
    settings: Settings, bootstrap: str, topics: list[str]
) -> list[PartitionSize]:
    """Records and produce batches of every partition of ``topics``, read from offset 0."""
    client = AIOKafkaClient(**aiokafka_options(settings, bootstrap))
    await client.bootstrap()
    out: list[PartitionSize] = []
    try:
        for topic in topics:
            await client.add_topic(topic)  # resolves once metadata with the topic is in
            for partition in sorted(client.cluster.partitions_for_topic(topic) or ()):
                out.append(await _walk(client, topic, partition))
    finally:
        await client.close()
    return out


async def _walk(client: AIOKafkaClient, topic: str, partition: int) -> PartitionSize:
    node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
    offset, records, batches = 0, 0, 0
    while True:
        request = FetchRequest(
            2000, 1, 16 * PARTITION_FETCH_BYTES, 0,
            [(topic, [(partition, offset, PARTITION_FETCH_BYTES)])],
        )  # fmt: skip
        response = await client.send(node, request)
        _, error, high, *_rest, message_set = response.topics[0][1][0]
        if error:
            raise RuntimeError(f"fetch {topic}[{partition}] at {offset}: Kafka error {error}")
        memory = MemoryRecords(message_set)
        moved = False
        while (batch := memory.next_batch()) is not None:
            if batch.next_offset <= offset:
                continue
            batches += 1
            records += sum(1 for _ in batch)
            offset = batch.next_offset
            moved = True
        if offset >= high or not moved:
            return PartitionSize(topic, partition, records, batches)


class FetchProbe:
    """Times one fetch of the newest record of a topic's largest partition, as the dispatcher's
    consumer pays it (with a long max wait, so the probe measures the cost instead of timing
    out). Which partition is largest is looked up again every ``relist_every`` probes."""

    def __init__(
        self, settings: Settings, bootstrap: str, topic: str, relist_every: int = 10
    ) -> None:
        self._topic = topic
        self._relist_every = relist_every
        self._probes = 0
        self._ends: dict[TopicPartition, int] = {}
        self._consumer = AIOKafkaConsumer(
            **aiokafka_options(settings, bootstrap),
            enable_auto_commit=False,
            fetch_max_wait_ms=5000,
            request_timeout_ms=30000,
        )
        self._started = False

    async def start(self) -> None:
        await self._consumer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._consumer.stop()

    async def fetch_ms(self) -> float | None:
        """Milliseconds to fetch the newest record; None while the topic is empty."""
        if self._probes % self._relist_every == 0:
            await self._consumer.topics()  # refreshes the metadata partitions_for_topic reads
            parts = self._consumer.partitions_for_topic(self._topic) or set()
            tps = [TopicPartition(self._topic, p) for p in sorted(parts)]
            # list_offsets also lists every object on the embedded broker: not every probe
            self._ends = dict(await self._consumer.end_offsets(tps)) if tps else {}
        self._probes += 1
        if not self._ends:
            return None
        tp = max(self._ends, key=lambda k: self._ends[k])
        end = self._ends[tp]
        if end <= 0:
            return None
        if self._consumer.assignment() != {tp}:
            self._consumer.assign([tp])
        self._consumer.seek(tp, end - 1)
        started = time.perf_counter()
        got = await self._consumer.getmany(tp, timeout_ms=10_000, max_records=1)
        elapsed = (time.perf_counter() - started) * 1e3
        high = self._consumer.highwater(tp)
        if high is not None:
            self._ends[tp] = high
        return elapsed if got else None
