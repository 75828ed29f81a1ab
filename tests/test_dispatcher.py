"""The dispatcher end to end: real broker, real database, real pilots and worker processes."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from prompt.config import Settings
from prompt.events import ImageArrival, make_notification
from prompt.store import connect
from prompt.tasks import load_task_file
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id
from tests.helpers import read_topic

pytestmark = pytest.mark.stack

ALL = range(189)


def check_timeline(record: dict[str, Any]) -> None:
    """Every stage stamped, in order."""
    stamps = [
        record["nextVisitReceived"],
        record["imageConsumed"],
        record["dispatched"],
        record["started"],
        record["finished"],
        record["completed"],
    ]
    assert all(s is not None for s in stamps), record
    assert stamps == sorted(stamps), record
    assert record["latencySeconds"] == pytest.approx(record["finished"] - record["imageArrived"])


async def test_a_full_visit_completes_each_job_exactly_once(isolated_settings: Settings) -> None:
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.01), slots=8) as env:
        nv = next_visit_for(group_id("full"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.visit_preloaded(nv.group_id)
        await env.sender.images(image_arrivals(nv, ALL))
        await env.completions.wait_for(189)
        await asyncio.sleep(0.5)  # a duplicate would arrive in this window
        records = env.completions.for_group(nv.group_id)
        assert len(records) == 189
        assert sorted(r["detector"] for r in records) == list(ALL)
        assert env.completions.duplicates() == 0
        assert Counter(r["status"] for r in records) == {"finished": 189}
        for r in records:
            check_timeline(r)
            assert r["attempt"] == 1 and r["task"] == "lsstcam-sleep"
        assert sum(p.jobs_run for p in env.pilots) == 189
        await env.running.writer.flush()
        conn = await connect(env.settings.database_url or "")
        try:
            assert await conn.fetchval("SELECT status FROM visits") == "done"
            states = await conn.fetch("SELECT state, count(*) FROM jobs GROUP BY state")
            assert [tuple(r) for r in states] == [("finished", 189)]
            stored = await conn.fetchval(
                "SELECT next_offset FROM consumer_offsets WHERE topic = $1",
                env.settings.topics.image_arrival,
            )
            assert stored == 189, "the image offset is stored with the state it produced"
        finally:
            await conn.close()


async def test_preload_reaches_pilots_first_and_same_filter_hits_cache(
    isolated_settings: Settings,
) -> None:
    # Enough slots that every job runs on the pilot it was assigned (and preloaded) to; when
    # that pilot is busy the dispatcher gives the job to another one, which then misses.
    tasks = sleep_task_file(mean_s=0.01, detectors="0-31")
    async with dispatcher_env(isolated_settings, tasks, slots=16) as env:
        results: dict[str, Counter[bool | None]] = {}
        for tag, band in (("a", "r_57"), ("b", "r_57"), ("c", "g_6")):
            nv = next_visit_for(group_id(tag), start_utc=time.time(), filters=band)
            await env.sender.next_visit(nv)
            await env.visit_preloaded(nv.group_id)
            # Calibrations are in the assigned pilots' caches before any image exists.
            visit = next(v for v in env.book.visits.values() if v.nv.group_id == nv.group_id)
            for job in visit.jobs.values():
                pilot = next(p for p in env.pilots if p.config.pilot_id == job.pilot_id)
                assert any(
                    k.detector == job.detector and k.filter == band
                    for k in pilot.cache.keys()  # noqa: SIM118 (a method, not a dict)
                )
            await env.sender.images(image_arrivals(nv, range(32)))
            await env.completions.wait_for(32 * len(results) + 32)
            results[tag] = Counter(r["cacheHit"] for r in env.completions.for_group(nv.group_id))
        assert results["a"] == {False: 32}, "first visit: calibrations loaded by the preload"
        assert results["b"] == {True: 32}, "same filter again: every job hits the cache"
        assert results["c"] == {False: 32}, "new filter: flats must be loaded"
        assert env.running.metrics.preload.labels("hit")._value.get() == 32


async def test_image_before_next_visit_is_held_then_matched(isolated_settings: Settings) -> None:
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.01)) as env:
        nv = next_visit_for(group_id("early"), start_utc=time.time())
        await env.sender.images(image_arrivals(nv, range(10)))
        await env.until(lambda: env.book.counts["held"] == 10)
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(10, 189)))
        await env.completions.wait_for(189)
        assert Counter(r["status"] for r in env.completions.records) == {"finished": 189}


async def test_duplicate_events_never_make_a_second_job_or_run(isolated_settings: Settings) -> None:
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.05)) as env:
        nv = next_visit_for(group_id("dup"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.next_visit(nv)
        await env.visit_preloaded(nv.group_id)
        arrivals = image_arrivals(nv, ALL)
        await env.sender.images(arrivals)
        await env.sender.images(arrivals[:50])  # repeated notifications
        await env.completions.wait_for(189)
        await env.sender.images(arrivals[50:60])  # repeats after the visit is done
        await env.sender.next_visit(nv)
        await asyncio.sleep(1.0)
        assert len(env.completions.records) == 189
        assert env.completions.duplicates() == 0
        assert sum(p.jobs_run for p in env.pilots) == 189
        assert env.book.counts["duplicates"] >= 1 + 50
        conn = await connect(env.settings.database_url or "")
        try:
            assert await conn.fetchval("SELECT count(*) FROM jobs") == 189
            assert await conn.fetchval("SELECT count(*) FROM visits") == 1
        finally:
            await conn.close()


async def test_two_snap_visit_runs_once_both_snaps_are_in(isolated_settings: Settings) -> None:
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.01)) as env:
        nv = next_visit_for(group_id("snaps"), start_utc=time.time(), nimages=2)
        await env.sender.next_visit(nv)
        await env.visit_preloaded(nv.group_id)
        await env.sender.images(image_arrivals(nv, ALL, snap=0))
        await asyncio.sleep(0.5)
        assert env.completions.records == [], "one snap of two is not a complete image"
        await env.sender.images(image_arrivals(nv, ALL, snap=1))
        await env.completions.wait_for(189)
        assert Counter(r["status"] for r in env.completions.records) == {"finished": 189}


async def test_canceled_visit_cancels_jobs_not_started(isolated_settings: Settings) -> None:
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.01)) as env:
        nv = next_visit_for(group_id("cancel"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.visit_preloaded(nv.group_id)
        await env.sender.images(image_arrivals(nv, range(20)))
        await env.completions.wait_for(20)
        await env.sender.cancel(nv.group_id)
        await env.completions.wait_for(189)
        statuses = Counter(r["status"] for r in env.completions.records)
        assert statuses == {"finished": 20, "canceled": 169}
        canceled = [r for r in env.completions.records if r["status"] == "canceled"]
        assert all(r["error"] == "visit canceled" and r["started"] is None for r in canceled)
        # A cancel that comes before its next-visit: the visit is never resurrected.
        early = next_visit_for(group_id("cancel-early"), start_utc=time.time())
        await env.sender.cancel(early.group_id)
        await env.until(lambda: early.group_id in env.book.canceled)
        await env.sender.next_visit(early)
        await env.sender.images(image_arrivals(early, range(5)))
        await asyncio.sleep(1.0)
        assert len(env.completions.records) == 189
        assert not any(v.nv.group_id == early.group_id for v in env.book.visits.values())


async def test_images_that_never_arrive_expire(isolated_settings: Settings) -> None:
    tasks = sleep_task_file(mean_s=0.01, image_timeout_s=0.5)
    async with dispatcher_env(isolated_settings, tasks) as env:
        nv = next_visit_for(group_id("expire"), start_utc=time.time(), duration=0.5)
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(100)))
        await env.completions.wait_for(189, timeout=30)
        statuses = Counter(r["status"] for r in env.completions.records)
        assert statuses == {"finished": 100, "expired": 89}
        expired = [r for r in env.completions.records if r["status"] == "expired"]
        assert all("image never arrived (0/1 snaps)" in r["error"] for r in expired)
        assert all(r["attempt"] == 0 and r["pilot"] is None for r in expired)


async def test_payload_failure_is_retried_up_to_max_attempts(isolated_settings: Settings) -> None:
    tasks = load_task_file(
        """
- name: flaky
  instrument: LSSTCam
  detectors: {include: "0-19"}
  payload: {kind: python, entry: "prompt.pilot.builtin:flaky",
            params: {sleep_s: 0.01, fail_attempts: [1], fail_detectors: [7]}}
  max_attempts: 3
"""
    )
    async with dispatcher_env(isolated_settings, tasks) as env:
        nv = next_visit_for(group_id("flaky"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(20)))
        await env.completions.wait_for(20)
        by_det = {r["detector"]: r for r in env.completions.records}
        assert by_det[7]["status"] == "failed"
        assert by_det[7]["attempt"] == 3
        assert by_det[7]["error"] == "injected failure on attempt 3"
        for det, r in by_det.items():
            if det != 7:
                assert (r["status"], r["attempt"]) == ("finished", 2)
        assert env.book.counts["retries"] == 19 + 2
        assert env.completions.duplicates() == 0


async def test_job_finishing_after_its_deadline_is_late(isolated_settings: Settings) -> None:
    tasks = sleep_task_file(mean_s=0.6, deadline_s=0.3, detectors="0-9")
    async with dispatcher_env(isolated_settings, tasks) as env:
        nv = next_visit_for(group_id("late"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(10)))
        await env.completions.wait_for(10)
        for r in env.completions.records:
            assert r["status"] == "late"
            assert r["finished"] > r["deadline"] == pytest.approx(r["imageArrived"] + 0.3)


async def test_argv_field_values_are_literal_arguments(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "argv"
    out.mkdir()
    marker = tmp_path / "pwned"
    script = (
        "import sys, pathlib; "
        f"pathlib.Path({str(out)!r}, sys.argv[2]).write_text(repr(sys.argv[1:]))"
    )
    tasks = load_task_file(
        f"""
- name: argv
  instrument: LSSTCam
  detectors: {{include: "0-1"}}
  payload:
    kind: argv
    argv: [{sys.executable!r}, "-c", {script!r}, "visit={{visit}} and detector={{detector}}",
           "{{detector}}"]
"""
    )
    hostile = f"MC; rm -rf / $(touch {marker}) `touch {marker}`"
    async with dispatcher_env(isolated_settings, tasks, pilots=1) as env:
        nv = next_visit_for(group_id("argv"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(
            [
                ImageArrival("LSSTCam", nv.group_id, 0, d, f"s3://b/{d}.fits", obs_id=hostile)
                for d in (0, 1)
            ]
        )
        await env.completions.wait_for(2)
        assert {r["status"] for r in env.completions.records} == {"finished"}
    for d in (0, 1):
        args = (out / str(d)).read_text()
        assert args == repr([f"visit={hostile} and detector={d}", str(d)])
    assert not marker.exists()


async def test_malformed_events_are_dead_lettered_and_service_goes_on(
    isolated_settings: Settings,
) -> None:
    async with dispatcher_env(isolated_settings, sleep_task_file(mean_s=0.01)) as env:
        topics = env.settings.topics
        bad = [
            (topics.next_visit, b"\x00\x00\x00\x00\x63garbage", "unknown_schema"),
            (topics.next_visit, b"not avro", "framing"),
            (topics.next_visit_canceled, b"\x00\x00\x00\x00\x02\xff", "payload"),
            (topics.image_arrival, b"{not json", "notification"),
            (topics.image_arrival, make_notification("b", "LSSTCam/x.fits", event_time=1),
             "notification"),
            (topics.image_arrival,
             make_notification("b", "LSSTCam/20250501/MC_O_20250501_000001/"
                                    "MC_O_20250501_000001_R22_S11.fits", event_time=1),
             "notification"),  # no raw root configured to read group/snap from
        ]  # fmt: skip
        for topic, value, _ in bad:
            await env.sender.raw(topic, value)
        no_group = env.sender.nv_codec.encode(next_visit_for("", start_utc=time.time()).to_record())
        await env.sender.raw(topics.next_visit, no_group)
        nv = next_visit_for(group_id("after-bad"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, ALL))
        await env.completions.wait_for(189)

        dlq = await read_topic(env.settings, topics.dead_letter, len(bad) + 1)
        reasons = [dict(m.headers)["prompt.reason"].decode() for m in dlq]
        assert sorted(reasons) == sorted([r for *_, r in bad] + ["invalid"])
        # Control and image topics are consumed concurrently: find by source, not by order.
        (first,) = [
            m for m in dlq
            if dict(m.headers)["prompt.source.topic"].decode() == topics.next_visit
            and dict(m.headers)["prompt.source.offset"] == b"0"
        ]  # fmt: skip
        assert b"schema id 99" in dict(first.headers)["prompt.error"]
        assert first.value == bad[0][1], "the original bytes are kept"
        metric = env.running.metrics.dead_lettered
        assert metric.labels("image-arrival", "notification")._value.get() == 3
        assert metric.labels("next-visit", "invalid")._value.get() == 1
