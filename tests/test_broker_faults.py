"""The broker failing under a running service: a durable broker killed and restarted
mid-visit, a memory broker restarting empty (its topics recreated, offsets back at 0), and
topics that do not exist yet when the dispatcher starts. Real processes throughout."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadtest.science import read_all
from prompt.config import Settings, Topics
from prompt.kafka import ensure_topics
from prompt.stack import Stack
from prompt.stack.scratch import scratch_database
from prompt.testing.processes import ServiceProcess, start_dispatcher, start_pilot
from prompt.testing.tasks import apply_task_file, sleep_task_file
from prompt.testing.traffic import CompletionCollector, EventSender, image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id, served, service_settings

pytestmark = pytest.mark.stack


@pytest.fixture
async def durable_settings(prompt_durable_stack: Stack, tmp_path: Path) -> AsyncIterator[Settings]:
    """A fresh database and topics on the stack whose broker keeps its logs in S3."""
    endpoints = prompt_durable_stack.endpoints()
    async with scratch_database(endpoints.database_url, "d") as url:
        settings = Settings(
            database_url=url, kafka_bootstrap=endpoints.kafka_bootstrap,
            state_dir=tmp_path / "state", topics=Topics().suffixed(uuid.uuid4().hex[:10]),
        )  # fmt: skip
        await ensure_topics(settings, endpoints.kafka_bootstrap)
        yield settings


async def test_a_durable_broker_killed_mid_visit_loses_and_doubles_nothing(
    durable_settings: Settings, prompt_durable_stack: Stack, tmp_path: Path
) -> None:
    settings = service_settings(durable_settings)
    await apply_task_file(settings, sleep_task_file(mean_s=1.0, detectors="0-39"))
    async with (
        served(settings, tmp_path) as env,
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        nv = next_visit_for(group_id("broker"), start_utc=time.time())
        await sender.next_visit(nv)
        await sender.images(image_arrivals(nv, range(40)))
        async with asyncio.timeout(30):  # jobs are running on the pilots
            while (await env.service.status())["jobs_by_state"].get("running", 0) < 1:
                await asyncio.sleep(0.05)
        async with prompt_durable_stack.outage("broker"):
            async with asyncio.timeout(20):  # the broker's absence shows within seconds
                while (await env.service.ready())["ready"]:
                    await asyncio.sleep(0.1)
        await completions.wait_for(40, timeout=90)
        await env.service.wait_ready()
        await asyncio.sleep(1.0)  # a duplicate would arrive in this window
    assert Counter(r["status"] for r in completions.records) == {"finished": 40}
    assert completions.duplicates() == 0


async def test_a_memory_broker_restarting_empty_is_recognised_and_nothing_new_is_skipped(
    isolated_settings: Settings, prompt_stack_control: Stack
) -> None:
    """The broker comes back without its topics; an operator recreates them. The stored
    positions are past the end of the new, empty logs: the dispatcher says so, counts it,
    resumes from the earliest offset, and acts on every event the new logs hold.

    (Offsets alone cannot tell a recreated log that has already grown past the old position
    from the old one; real Kafka keeps topics across restarts, and the embedded broker's
    durable storage does too: see the README on the offset policy.)"""
    tasks = sleep_task_file(mean_s=0.01, image_timeout_s=2.0)
    async with dispatcher_env(isolated_settings, tasks, slots=8) as env:
        nv = next_visit_for(group_id("before"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(189)))
        await env.completions.wait_for(189)
        await prompt_stack_control.restart("broker")
        await ensure_topics(env.settings, env.settings.kafka_bootstrap or "")
        resets = env.running.metrics.offset_resets
        topics = env.settings.topics
        await env.until(
            lambda: all(resets.labels(t)._value.get() >= 1
                        for t in (topics.next_visit, topics.image_arrival)),
            timeout=30,
        )  # fmt: skip
        async with EventSender(env.settings) as sender, CompletionCollector(env.settings) as after:
            nv2 = next_visit_for(group_id("after"), start_utc=time.time(), duration=0.5)
            await sender.next_visit(nv2)
            await sender.images(image_arrivals(nv2, range(189)))
            await after.wait_for(189, timeout=90)
            # What the new log holds is what counts: this broker, just recreated, has been
            # seen to keep fewer records than it acknowledged; none it holds may be skipped.
            held = len(await read_all(env.settings, topics.image_arrival))
            statuses = Counter(r["status"] for r in after.for_group(nv2.group_id))
            assert statuses["finished"] == held > 0
            assert statuses["expired"] == 189 - held


async def test_a_dispatcher_started_before_its_topics_waits_for_them(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = service_settings(
        isolated_settings, topics=Topics().suffixed(uuid.uuid4().hex[:10]), dependency_retry_s=60
    )
    await apply_task_file(settings, sleep_task_file(mean_s=0.01, detectors="0-9"))
    service = start_dispatcher(settings, log_dir=tmp_path)
    try:
        async with asyncio.timeout(30):  # it leads, waiting for its topics: alive, not ready
            while (state := await _ready_state(service)) is None or state["role"] != "leader":
                await asyncio.sleep(0.1)
        assert not state["ready"]
        await ensure_topics(settings, settings.kafka_bootstrap or "")
        await service.wait_ready(timeout=60)
        pilot = start_pilot(settings, service.pilot_port, "p0", slots=10, log_dir=tmp_path)
        try:
            await service.wait_pilots(1)
            async with EventSender(settings) as sender, CompletionCollector(settings) as done:
                nv = next_visit_for(group_id("late-topics"), start_utc=time.time())
                await sender.next_visit(nv)
                await sender.images(image_arrivals(nv, range(10)))
                await done.wait_for(10)
        finally:
            pilot.stop_if_running()
    finally:
        service.stop_if_running()


async def _ready_state(service: ServiceProcess) -> dict[str, Any] | None:
    try:
        return await service.ready()
    except (OSError, aiohttp.ClientError):
        return None
