"""Running the real ``prompt`` command in tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from prompt.config import S3Settings, Settings
from prompt.kafka import aiokafka_options
from prompt.stack import Endpoints


def run_prompt(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPT_")}
    full_env["PROMPT_LOG_FORMAT"] = "json"
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "prompt", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=full_env,
        cwd=Path(__file__).parent.parent,
    )


def stack_settings(stack: Endpoints, state_dir: Path) -> Settings:
    """Settings for a replay on the session's stack (``state_dir``: the run's own)."""
    return Settings(
        database_url=stack.database_url,
        kafka_bootstrap=stack.kafka_bootstrap,
        state_dir=state_dir,
        s3=stack.s3 or S3Settings(),
    )


async def read_topic(settings: Settings, topic: str, count: int) -> list[Any]:
    """The first ``count`` records of partition 0 of ``topic``."""
    consumer = AIOKafkaConsumer(
        **aiokafka_options(settings, settings.kafka_bootstrap or ""), enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        out: list[Any] = []
        async with asyncio.timeout(20):
            while len(out) < count:
                out.extend((await consumer.getmany(tp, timeout_ms=500)).get(tp, []))
        return out
    finally:
        await consumer.stop()
