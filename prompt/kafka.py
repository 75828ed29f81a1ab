"""Kafka client settings from the one Settings object: bootstrap, SASL and SSL, for both clients."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownError

from prompt.config import Settings

TOPIC_ALREADY_EXISTS = 36


def broker_retriable(exc: BaseException) -> bool:
    """Whether a Kafka client error may clear up by itself (a broker restarting, a leader
    moving, a request timing out). Besides what the client marks retriable, a timeout and an
    unspecified broker error are retried too, for a bounded time, by whoever retries."""
    return isinstance(exc, KafkaError) and (
        exc.retriable or isinstance(exc, KafkaTimeoutError | UnknownError)
    )


async def stop_consumer(consumer: Any) -> None:
    """``consumer.stop()``, safe right after ``start()``: aiokafka (0.14) starts a background
    task in ``start()`` and ``stop()`` cancels and awaits it; cancelled before its first step,
    that task raises CancelledError out of ``stop()`` (seen: a dispatcher whose topics did
    not exist yet died of it). One loop iteration lets the task start and catch its cancel."""
    await asyncio.sleep(0)
    await consumer.stop()


def aiokafka_options(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """Keyword arguments shared by AIOKafkaProducer, AIOKafkaConsumer and the admin client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
        if settings.kafka_ssl_certfile:
            ctx.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            )
        opts["ssl_context"] = ctx
    if settings.kafka_sasl_mechanism:
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            opts["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return opts


def consumer_options(
    settings: Settings, bootstrap: str, *, latency_critical: bool = True
) -> dict[str, Any]:
    """aiokafka consumer arguments: the shared ones plus the fetch wait (short where every
    millisecond counts, e.g. images; relaxed elsewhere to spare the broker idle fetches)."""
    wait = settings.kafka_fetch_max_wait_ms
    return {
        **aiokafka_options(settings, bootstrap),
        "fetch_max_wait_ms": wait if latency_critical else max(wait, 100),
    }


def confluent_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """librdkafka configuration with the same meaning as :func:`aiokafka_options`."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": settings.kafka_security_protocol.lower(),
    }
    if settings.kafka_ssl_cafile:
        conf["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile:
        conf["ssl.certificate.location"] = str(settings.kafka_ssl_certfile)
    if settings.kafka_ssl_keyfile:
        conf["ssl.key.location"] = str(settings.kafka_ssl_keyfile)
    if settings.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    return conf


async def ensure_topics(
    settings: Settings, bootstrap: str, partitions: Mapping[str, int] | None = None
) -> list[str]:
    """Create the service's topics if missing (``partitions``: per-topic counts instead of
    ``topic_partitions``). Returns those created."""
    admin = AIOKafkaAdminClient(**aiokafka_options(settings, bootstrap))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in settings.topics.all() if t not in existing]
        if not wanted:
            return []
        resp = await admin.create_topics(
            [NewTopic(t, (partitions or {}).get(t, settings.topic_partitions), 1) for t in wanted]
        )
        for topic, code, *_ in getattr(resp, "topic_errors", getattr(resp, "topics", [])):
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"creating topic {topic}: Kafka error code {code}")
        return wanted
    finally:
        await admin.close()
