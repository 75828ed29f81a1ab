"""One odd record must not wedge the service: each poison below goes to the dead-letter topic
with its reason (or, if it is a payload's output, is stored cleaned and bounded), and a good
189-detector visit sent after it completes within 60 s. Real broker, database and pilots."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from typing import Any

import pytest

from prompt.config import Settings
from prompt.events import ImageArrival
from prompt.events.wire import frame
from prompt.store import connect
from prompt.testing.tasks import apply_task_file, lsstcam_task_file, sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import Env, dispatcher_env, group_id, service_settings
from tests.faults import install_fault, produce_big
from tests.helpers import read_topic

pytestmark = pytest.mark.stack

ALL = range(189)


async def good_visit_completes(env: Env, tag: str) -> None:
    """The service is not wedged: a full visit sent now completes, each job once, in 60 s."""
    nv = next_visit_for(group_id(tag), start_utc=time.time())
    before = len(env.completions.by_job)
    await env.sender.next_visit(nv)
    await env.sender.images(image_arrivals(nv, ALL))
    await env.completions.wait_for(before + 189, timeout=60)
    records = env.completions.for_group(nv.group_id)
    assert Counter(r["status"] for r in records) == {"finished": 189}
    assert env.completions.duplicates() == 0


async def dead_letters(env: Env, count: int) -> list[dict[str, Any]]:
    msgs = await read_topic(env.settings, env.settings.topics.dead_letter, count)
    return [
        {**{k: v.decode() for k, v in m.headers}, "value": m.value}
        for m in msgs
    ]  # fmt: skip


def _nv(tag: str, **changes: Any) -> dict[str, Any]:
    return next_visit_for(group_id(tag), start_utc=time.time()).to_record() | changes


async def test_poison_next_visits_are_dead_lettered_and_later_visits_run(
    isolated_settings: Settings,
) -> None:
    poison = [
        _nv("nul", survey="BLOCK\x00365"),
        _nv("nul-private", private_identity="Script\x00Queue"),
        _nv("nan", startTime=math.nan),
        _nv("far", startTime=1e18),
        _nv("neg", duration=-30.0),
        _nv("snaps", nimages=10**9),
        _nv("dec", position=[10.0, 120.0]),
        _nv("", groupId="0001-01-01T00:00:00.000"),
        _nv("inf-angle", cameraAngle=math.inf),
    ]
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.01), slots=8) as env:
        codec = env.sender.nv_codec
        for record in poison:
            await env.sender.raw(env.settings.topics.next_visit, codec.encode(record))
        huge = _nv("huge", groupId="2025-05-01T00:00:00.000" + "x" * 10_000_000)
        await produce_big(env.settings, env.settings.topics.next_visit, codec.encode(huge))
        await good_visit_completes(env, "after-poison-nv")
        letters = await dead_letters(env, len(poison) + 1)
        assert {d["prompt.reason"] for d in letters} == {"invalid"}
        errors = [d["prompt.error"] for d in letters]
        assert any("survey holds a control character" in e for e in errors)
        assert any("groupId is 10000023 characters long" in e for e in errors)
        assert all(len(e) < 1000 for e in errors), "errors name the field, not the value"
        big = next(d for d in letters if "10000023" in d["prompt.error"])
        assert int(big["prompt.original.size"]) > 10_000_000
        assert big["prompt.truncated"] == "true" and len(big["value"]) <= 512 * 1024
        assert env.running.metrics.dead_lettered.labels("next-visit", "invalid")._value.get() == 10


async def test_a_record_the_database_refuses_is_dead_lettered_and_its_images_wait(
    isolated_settings: Settings,
) -> None:
    """Valid by every check the service makes, refused by the database anyway (a trigger
    raising a data exception): dead-lettered as 'rejected'; the images sent meanwhile stay
    held, and the corrected next-visit sent later runs them all."""
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.01), slots=8) as env:
        nv = next_visit_for(group_id("refused"), start_utc=time.time())
        await install_fault(
            env.settings, table="visits", when="BEFORE INSERT", sqlstate="22023", sleep_s=1.0,
            condition=f"NEW.group_id = '{nv.group_id}'",
        )  # fmt: skip
        await env.sender.next_visit(nv)
        await asyncio.sleep(0.2)  # the resurrection transaction is now stalled in the trigger
        await env.sender.images(image_arrivals(nv, ALL))
        (letter,) = await dead_letters(env, 1)
        assert letter["prompt.reason"] == "rejected"
        assert "injected fault on visits" in letter["prompt.error"]
        await env.until(lambda: len(env.book.held) == 189)
        await env.sender.next_visit(nv)  # the observatory sends it again; now it goes in
        await env.completions.wait_for(189, timeout=60)
        assert Counter(r["status"] for r in env.completions.records) == {"finished": 189}
        await good_visit_completes(env, "after-refused")


async def test_poison_images_are_dead_lettered_and_the_dispatcher_does_not_crash_loop(
    isolated_settings: Settings,
) -> None:
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.01), slots=8) as env:
        topic = env.settings.topics.image_arrival
        nv = next_visit_for(group_id("nul-uri"), start_utc=time.time())
        bad = ImageArrival("LSSTCam", nv.group_id, 0, 5, "s3://b/a\x00b.fits")
        await env.sender.raw(topic, env.sender.image_codec.encode(bad.to_record()))
        await produce_big(env.settings, topic, frame(99, b"\xff" * (2 * 1024 * 1024)))
        await good_visit_completes(env, "after-poison-images")
        letters = await dead_letters(env, 2)
        by_reason = {d["prompt.reason"]: d for d in letters}
        assert set(by_reason) == {"invalid", "unknown_schema"}
        assert "uri holds a control character" in by_reason["invalid"]["prompt.error"]
        undecodable = by_reason["unknown_schema"]
        assert undecodable["prompt.original.size"] == str(2 * 1024 * 1024 + 5)
        assert undecodable["prompt.truncated"] == "true"
        assert len(undecodable["value"]) == 512 * 1024
        assert len(undecodable["prompt.original.sha256"]) == 64


async def test_hostile_payload_output_is_stored_bounded_and_clean(
    isolated_settings: Settings,
) -> None:
    """A payload printing NUL bytes and megabytes, and one failing with a 2 MB message: their
    completions go out (bounded under the broker's limit), state commits go on."""
    tasks = lsstcam_task_file(
        name="hostile", detectors="0-3", max_attempts=1,
        payload={"kind": "python", "entry": "prompt.pilot.builtin:hostile",
                 "params": {"log_text": "out{NUL}put ", "log_repeat": 300_000, "counts_n": 5000,
                            "error_chars": 2_000_000, "fail_detectors": [2, 3]}},
    )  # fmt: skip
    async with dispatcher_env(isolated_settings, tasks, slots=8) as env:
        for i in range(3):  # the first visit and two more: nothing stops committing
            nv = next_visit_for(group_id(f"hostile{i}"), start_utc=time.time())
            await env.sender.next_visit(nv)
            await env.sender.images(image_arrivals(nv, range(4)))
            await env.completions.wait_for(4 * (i + 1), timeout=60)
        records = env.completions.records
        failed = [r for r in records if r["status"] == "failed"]
        assert len(failed) == 6 and {r["detector"] for r in failed} == {2, 3}
        for r in failed:
            assert len(r["error"]) <= 4096 and "characters cut" in r["error"]
        finished = [r for r in records if r["status"] == "finished"]
        assert len(finished) == 6 and all(len(r["counts"]) <= 64 for r in finished)
        await env.running.writer.flush()
        conn = await connect(env.settings.database_url or "")
        try:
            logs = await conn.fetch(
                "SELECT result->>'log' AS log FROM jobs WHERE detector IN (0, 1)"
            )
        finally:
            await conn.close()
        assert logs and all(
            len(r["log"]) <= 64 * 1024 and "\x00" not in r["log"] and "out\ufffdput" in r["log"]
            for r in logs
        )


async def test_a_state_row_the_database_refuses_is_isolated(isolated_settings: Settings) -> None:
    """The database refuses one job's row (a trigger raising a data exception when its state
    becomes finished, in the batch and again alone): the writer stores that row without its
    result, the rest of the batch lands, and commits go on."""
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.01), slots=8) as env:
        await install_fault(
            env.settings, table="jobs", when="BEFORE UPDATE", sqlstate="22P05", times=2,
            condition="NEW.detector = 7 AND NEW.state = 'finished' AND NEW.result IS NOT NULL",
        )  # fmt: skip
        nv = next_visit_for(group_id("row"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, ALL))
        await env.completions.wait_for(189, timeout=60)
        await env.running.writer.flush()
        conn = await connect(env.settings.database_url or "")
        try:
            rows = await conn.fetch("SELECT detector, state, result, error FROM jobs")
        finally:
            await conn.close()
        assert Counter(r["state"] for r in rows) == {"finished": 189}
        (row7,) = [r for r in rows if r["detector"] == 7]
        assert row7["result"] is None and "state not storable" in row7["error"]
        assert env.running.metrics.rows_rejected.labels("jobs")._value.get() == 0
        await good_visit_completes(env, "after-row")


async def test_recovery_survives_unusable_stored_rows_and_expiry_goes_on(
    isolated_settings: Settings,
) -> None:
    """A visit stored before records were checked (NaN expiry, a year-1 group id) must neither
    crash recovery on every restart nor stop the expiry of later visits."""
    tasks = sleep_task_file(mean_s=0.01, detectors="0-3", image_timeout_s=0.5)
    conn = await connect(isolated_settings.database_url or "")
    try:
        await apply_task_file(service_settings(isolated_settings), tasks)
        task_id = await conn.fetchval("SELECT id FROM tasks")
        record = _nv("x", groupId="0001-01-01T00:00:00.000", startTime=0.0)
        visit = await conn.fetchval(
            "INSERT INTO visits (instrument, group_id, task_id, next_visit, received_at,"
            " expires_at) VALUES ('LSSTCam', '0001-01-01T00:00:00.000', $1, $2, 0, 'NaN')"
            " RETURNING id",
            task_id, record,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO jobs (visit_id, detector, max_attempts) SELECT $1, d, 1"
            " FROM generate_series(0, 3) d",
            visit,
        )
    finally:
        await conn.close()
    async with dispatcher_env(isolated_settings, tasks, pilots=1) as env:
        assert not env.book.visits, "the unusable visit stays out of memory"
        nv = next_visit_for(group_id("never"), start_utc=time.time(), duration=0.1)
        await env.sender.next_visit(nv)
        await env.completions.wait_for(4, timeout=30)
        assert {r["status"] for r in env.completions.records} == {"expired"}
