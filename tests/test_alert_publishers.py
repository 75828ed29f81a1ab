"""The pilot's alert producers against the real broker: every alert acknowledged is on the
topic, and failures are errors that say whether a retry can help."""

from __future__ import annotations

import asyncio
import threading

import pytest

from prompt.config import Settings
from prompt.kafka import aiokafka_options, confluent_config
from prompt.pilot.alerts import (
    AlertDeliveryError,
    AlertPublisher,
    ConfluentAlertPublisher,
    KafkaAlertPublisher,
    alert_publisher,
)
from prompt.stack.processes import free_port
from tests.helpers import read_topic

pytestmark = pytest.mark.stack


def make(kind: str, settings: Settings) -> AlertPublisher:
    bootstrap = settings.kafka_bootstrap or ""
    if kind == "aiokafka":
        return KafkaAlertPublisher(aiokafka_options(settings, bootstrap), settings.topics.alerts)
    return ConfluentAlertPublisher(confluent_config(settings, bootstrap), settings.topics.alerts)


@pytest.mark.parametrize("kind", ["aiokafka", "confluent"])
async def test_concurrent_jobs_alerts_all_land_on_the_topic(
    kind: str, isolated_settings: Settings
) -> None:
    publisher = make(kind, isolated_settings)
    await publisher.start()
    try:
        jobs = [
            [f"{kind}-{j}-{i}".encode() * 1000 for i in range(n)] for j, n in enumerate((1, 7, 20))
        ]
        await asyncio.gather(*(publisher.publish(values) for values in jobs))
        await publisher.publish([])
    finally:
        await publisher.stop()
    sent = [v for values in jobs for v in values]
    got = [
        m.value for m in await read_topic(isolated_settings, isolated_settings.topics.alerts, 28)
    ]
    assert sorted(got) == sorted(sent)
    assert not any(t.name == "alert-delivery" for t in threading.enumerate())


def test_the_pilot_uses_librdkafka(isolated_settings: Settings) -> None:
    assert isinstance(alert_publisher(isolated_settings, "127.0.0.1:1"), ConfluentAlertPublisher)


async def test_confluent_failures_are_typed(isolated_settings: Settings) -> None:
    config = confluent_config(isolated_settings, f"127.0.0.1:{free_port()}")
    with pytest.raises(AlertDeliveryError, match="alert topic") as away:
        await ConfluentAlertPublisher(config, "alerts", timeout_s=1).start()
    assert away.value.retriable
    config = confluent_config(isolated_settings, isolated_settings.kafka_bootstrap or "")
    publisher = ConfluentAlertPublisher(config, isolated_settings.topics.alerts)
    await publisher.start()
    try:
        with pytest.raises(AlertDeliveryError, match="2/2 refused") as big:
            await publisher.publish([b"ok", b"x" * (9 * 1024 * 1024)])
        assert not big.value.retriable
        await publisher.publish([b"after"])  # the producer is still usable
    finally:
        await publisher.stop()
