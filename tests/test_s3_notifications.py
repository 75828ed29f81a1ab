"""Bucket notifications resolved from S3: a ranged read of the raw's header, never the image."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest

from prompt.calib.fitsio import write_image
from prompt.calib.s3store import S3Store
from prompt.config import S3Settings, Settings
from prompt.events import NotificationError, make_notification, parse_notification
from prompt.events.raw_metadata import RawMetadataResolver, S3RawHeaders
from prompt.instruments import raw_key
from prompt.stack import Endpoints
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import next_visit_for
from tests.env import dispatcher_env, group_id

pytestmark = pytest.mark.stack

DAY_OBS = 20250501


def _raw(group: str, extra_cards: int = 0) -> bytes:
    """A raw as the camera writes it: a header with GROUPID, then a 512x512 image."""
    header: dict[str, Any] = {"GROUPID": group, "CURINDEX": 1, "EXPTIME": 30.0}
    header.update({f"HIERARCH X{i:04d}": i for i in range(extra_cards)})
    return write_image(np.zeros((512, 512), np.float32), header)


def _s3(prompt_stack: Endpoints) -> S3Settings:
    assert prompt_stack.s3 is not None
    return prompt_stack.s3


async def test_group_and_snap_from_a_ranged_header_read(prompt_stack: Endpoints) -> None:
    s3 = _s3(prompt_stack)
    raws = S3Store(s3, s3.bucket_raws)
    seq = int(uuid.uuid4().int % 90000)
    keys = [raw_key("LSSTCam", DAY_OBS, seq, d) for d in (94, 95)]
    for key in keys:
        await raws.put_async(key, _raw("2025-05-01T23:33:14.762"))
    headers = S3RawHeaders(s3)
    resolver = RawMetadataResolver(headers)
    notes = [
        parse_notification(make_notification(s3.bucket_raws, k, event_time=1.0))[0] for k in keys
    ]
    first = await resolver.resolve(notes[0])
    assert (first.group_id, first.snap, first.detector) == ("2025-05-01T23:33:14.762", 0, 94)
    assert first.uri == f"s3://{s3.bucket_raws}/{keys[0]}"
    assert (headers.reads, headers.bytes_fetched) == (1, 2 * 2880), "two header blocks, no pixels"
    second = await resolver.resolve(notes[1])  # same exposure: cached
    assert second.detector == 95 and headers.reads == 1


async def test_a_long_header_costs_one_more_read(prompt_stack: Endpoints) -> None:
    s3 = _s3(prompt_stack)
    key = raw_key("LSSTCam", DAY_OBS, int(uuid.uuid4().int % 90000), 10)
    data = _raw("long-header", extra_cards=100)  # 100 more cards: past the first 2 blocks
    await S3Store(s3, s3.bucket_raws).put_async(key, data)
    headers = S3RawHeaders(s3)
    (raw,) = parse_notification(make_notification(s3.bucket_raws, key, event_time=1.0))
    arrival = await RawMetadataResolver(headers).resolve(raw)
    assert arrival.group_id == "long-header"
    assert headers.reads == 2
    assert headers.bytes_fetched == 36 * 2880 < len(data)


async def test_a_notified_raw_missing_from_the_bucket_is_a_notification_error(
    prompt_stack: Endpoints,
) -> None:
    s3 = _s3(prompt_stack)
    key = raw_key("LSSTCam", DAY_OBS, 99999, 3)
    (raw,) = parse_notification(make_notification(s3.bucket_raws, key, event_time=1.0))
    with pytest.raises(NotificationError, match="not in the bucket"):
        await RawMetadataResolver(S3RawHeaders(s3)).resolve(raw)


async def test_dispatcher_resolves_notifications_from_s3(isolated_settings: Settings) -> None:
    settings = isolated_settings.with_overrides(raws_in_s3=True)
    s3 = settings.s3
    raws = S3Store(s3, s3.bucket_raws)
    detectors = range(8)
    async with dispatcher_env(settings, sleep_task_file(mean_s=0.01, detectors="0-7")) as env:
        nv = next_visit_for(group_id("s3note"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.visit_preloaded(nv.group_id)
        seq = int(uuid.uuid4().int % 90000)
        for d in detectors:
            key = raw_key("LSSTCam", DAY_OBS, seq, d)
            await raws.put_async(key, _raw(nv.group_id))  # the notification follows the PUT
            note = make_notification(s3.bucket_raws, key, event_time=time.time())
            await env.sender.raw(settings.topics.image_arrival, note)
        await env.completions.wait_for(len(detectors))
        records = env.completions.for_group(nv.group_id)
        assert sorted(r["detector"] for r in records) == list(detectors)
        assert {r["status"] for r in records} == {"finished"}
        metrics = env.running.metrics
        assert metrics.raw_header_reads._value.get() == 1, "one exposure: one ranged read"
        assert metrics.raw_header_bytes._value.get() == 2 * 2880
