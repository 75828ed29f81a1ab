"""PostgreSQL failing under a running service: a restart with a hot standby waiting, a restart
between the broker's acknowledgement of completions and their outbox delete, and a
resurrection that fails while the visit's images arrive. Real processes throughout; the
faults are a real server killed (kill -9) and started again, or a trigger inside it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from prompt.config import Settings
from prompt.stack import Stack
from prompt.store import connect
from prompt.testing.tasks import apply_task_file, sleep_task_file
from prompt.testing.traffic import CompletionCollector, EventSender, image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id, hot_standby, served, service_settings
from tests.faults import fault_hits, install_fault, wait_db

pytestmark = pytest.mark.stack

ALL = range(189)


async def _visit(sender: EventSender, completions: CompletionCollector, tag: str) -> str:
    nv = next_visit_for(group_id(tag), start_utc=time.time())
    before = len(completions.by_job)
    await sender.next_visit(nv)
    await sender.images(image_arrivals(nv, ALL))
    await completions.wait_for(before + 189, timeout=90)
    return nv.group_id


async def test_a_database_restart_leaves_exactly_one_leader_and_the_next_visit_runs(
    isolated_settings: Settings, prompt_stack_control: Stack, tmp_path: Path
) -> None:
    """The restart drops the leader's lock: it must stop acting, the standby must survive the
    outage and keep waiting, and afterwards exactly one of them leads (a higher epoch)."""
    settings = service_settings(isolated_settings)
    await apply_task_file(settings, sleep_task_file(mean_s=0.05))
    async with (
        hot_standby(settings, tmp_path) as pair,
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        first = await pair.leader()
        epoch = (await first.ready())["epoch"]
        await _visit(sender, completions, "before")
        async with prompt_stack_control.outage("postgres"):
            async with asyncio.timeout(10):  # the leader notices within its ping interval
                while any(await pair.readiness()):
                    await asyncio.sleep(0.05)
            assert all(s.proc.poll() is None for s in pair.services), "both outlive the outage"
        leader = await pair.leader(timeout=60)  # asserts that never two are ready
        assert (await leader.ready())["epoch"] > epoch
        group = await _visit(sender, completions, "after")
        await asyncio.sleep(1.0)  # a duplicate would arrive in this window
    records = completions.for_group(group)
    assert Counter(r["status"] for r in records) == {"finished": 189}
    assert completions.duplicates() == 0


async def test_a_database_restart_between_publish_and_outbox_delete_publishes_once(
    isolated_settings: Settings, prompt_stack_control: Stack, tmp_path: Path
) -> None:
    """The completions are on the topic; the delete of their outbox rows is held (a trigger
    sleeps in it) and the database is killed under it. Nothing the broker acknowledged is
    sent again: each of the jobs has exactly one completion record."""
    settings = service_settings(isolated_settings)
    await apply_task_file(settings, sleep_task_file(mean_s=0.05, detectors="0-19"))
    await install_fault(settings, table="completion_outbox", when="BEFORE DELETE", sleep_s=5.0)
    async with (
        served(settings, tmp_path) as env,
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        nv = next_visit_for(group_id("outbox"), start_utc=time.time())
        await sender.next_visit(nv)
        await sender.images(image_arrivals(nv, range(20)))
        conn = await connect(settings.database_url or "")
        try:
            await wait_db(
                conn, "SELECT count(*) > 0 FROM pg_stat_activity"
                " WHERE query LIKE 'DELETE FROM completion_outbox%' AND wait_event = 'PgSleep'",
            )  # fmt: skip
        finally:
            await conn.close()
        assert await fault_hits(settings, "completion_outbox") == 1
        # The delete runs after the broker acknowledged the batch: it is on the topic.
        await completions.wait_for(1, timeout=10)
        async with prompt_stack_control.outage("postgres"):
            pass
        await completions.wait_for(20, timeout=60)
        conn = await connect(settings.database_url or "")
        try:
            await wait_db(conn, "SELECT count(*) = 0 FROM completion_outbox", timeout=60)
        finally:
            await conn.close()
        await env.service.wait_ready()
        await asyncio.sleep(1.0)  # a resend would arrive in this window
    assert completions.duplicates() == 0
    assert len(completions.records) == 20


async def test_a_resurrection_that_fails_while_images_arrive_loses_none(
    isolated_settings: Settings,
) -> None:
    """The visit's transaction stalls and then fails with a transient error (serialization
    failure) while its images arrive: the images are held meanwhile, the next-visit is retried,
    and every job runs."""
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.01), slots=8) as env:
        nv = next_visit_for(group_id("retried"), start_utc=time.time())
        await install_fault(
            env.settings, table="visits", when="BEFORE INSERT", sqlstate="40001", sleep_s=1.0,
            condition=f"NEW.group_id = '{nv.group_id}'",
        )  # fmt: skip
        await env.sender.next_visit(nv)
        await asyncio.sleep(0.2)  # the transaction is in the trigger now
        await env.sender.images(image_arrivals(nv, ALL))
        await env.completions.wait_for(189, timeout=60)
        # Two inserts of the visit: the one that failed, and the retry that went in.
        assert await fault_hits(env.settings, "visits") == 2
        assert Counter(r["status"] for r in env.completions.records) == {"finished": 189}


def test_a_connection_broken_mid_operation_is_a_transient_database_error() -> None:
    """What asyncpg raised when PostgreSQL was killed while the pool reset a released
    connection (``prompt replay --chaos``): not the statement's fault; before it counted as a
    database error at all, it escaped the writer and ended ``prompt serve``."""
    import asyncpg

    from prompt.store.errors import DB_ERRORS, is_data_error, is_transient

    exc = asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )
    assert isinstance(exc, DB_ERRORS) and is_transient(exc) and not is_data_error(exc)
