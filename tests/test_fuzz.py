"""Property tests over hostile input: raw bytes and structurally valid records with extreme
values, through the codec, the limits and the dispatcher.

The run is bounded for `make test` (profile ``ci``); ``HYPOTHESIS_PROFILE=long`` runs many more
examples (see the README's Development section)."""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prompt.bounds import has_control
from prompt.config import Settings, Topics
from prompt.dispatcher.engine.model import Visit, _day_obs
from prompt.events import (
    AvroCodec,
    EventError,
    EventKind,
    ImageArrival,
    LocalSchemaRegistry,
    NextVisit,
    decode_image_message,
    limits,
)
from prompt.kafka import aiokafka_options, ensure_topics
from prompt.stack import Endpoints
from prompt.stack.scratch import scratch_database
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env
from tests.fuzz_strategies import RAW_BYTES, hostile_cancels, hostile_images, hostile_next_visits

REGISTRY = LocalSchemaRegistry()
CODECS = {k: AvroCodec(k, REGISTRY) for k in EventKind}
NO_DEADLINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode(kind: EventKind, value: bytes) -> Any:
    return asyncio.run(CODECS[kind].decode(value))


@NO_DEADLINE
@given(value=RAW_BYTES, kind=st.sampled_from(list(EventKind)))
def test_raw_bytes_decode_or_raise_a_typed_error(value: bytes, kind: EventKind) -> None:
    try:
        if kind is EventKind.IMAGE_ARRIVAL:
            asyncio.run(decode_image_message(CODECS[kind], value))
        else:
            record = _decode(kind, value)
            if kind is EventKind.NEXT_VISIT:
                limits.next_visit(record)
    except EventError:
        pass


@NO_DEADLINE
@given(record=hostile_next_visits())
def test_hostile_next_visits_become_sane_values_or_invalid(record: dict[str, Any]) -> None:
    decoded = _decode(EventKind.NEXT_VISIT, CODECS[EventKind.NEXT_VISIT].encode(record))
    try:
        nv = limits.next_visit(decoded)
    except EventError as exc:
        message = str(exc)
        assert len(message) < 500, "an error names the field; it never echoes the value"
        return
    assert isinstance(nv, NextVisit)
    numbers = [nv.start_time, nv.duration, nv.camera_angle, nv.efd_stamp, *nv.position]
    assert all(math.isfinite(x) for x in numbers)
    assert 0 <= nv.nimages <= limits.MAX_SNAPS and 0 <= nv.duration <= limits.MAX_DURATION_S
    for text in (nv.instrument, nv.group_id, nv.survey, nv.filters):
        assert len(text) <= limits.TEXT_LIMIT and "\x00" not in text
    # What the dispatcher derives from it cannot fail: the observing day, the expiry time.
    assert _day_obs(nv.group_id, time.time()) >= 0
    expires = (nv.start_time - 37.0 if nv.start_time else time.time()) + 2 * nv.duration + 60
    assert math.isfinite(expires)


@NO_DEADLINE
@given(record=hostile_images())
def test_hostile_image_arrivals_are_sane_or_invalid(record: dict[str, Any]) -> None:
    value = CODECS[EventKind.IMAGE_ARRIVAL].encode(record)
    (arrival,) = asyncio.run(decode_image_message(CODECS[EventKind.IMAGE_ARRIVAL], value))
    assert isinstance(arrival, ImageArrival)
    if limits._plainly_valid(arrival):  # the quick pass never lets through what the checks refuse
        assert limits._checked_image(arrival) is arrival
    try:
        limits.image_arrival(arrival)
    except EventError:
        return
    assert 0 <= arrival.snap < limits.MAX_SNAPS and 0 <= arrival.detector < limits.MAX_DETECTORS
    assert "\x00" not in arrival.uri and len(arrival.uri) <= limits.URI_LIMIT


@NO_DEADLINE
@given(record=hostile_cancels())
def test_hostile_cancels_name_a_sane_group_or_are_invalid(record: dict[str, Any]) -> None:
    decoded = _decode(
        EventKind.NEXT_VISIT_CANCELED, CODECS[EventKind.NEXT_VISIT_CANCELED].encode(record)
    )
    try:
        group = limits.cancel_group(decoded)
    except EventError:
        return
    assert len(group) <= limits.GROUP_ID_LIMIT


@NO_DEADLINE
@given(record=hostile_next_visits())
def test_a_visit_of_any_valid_next_visit_can_be_built(record: dict[str, Any]) -> None:
    """The recovery path: a Visit from a stored, checked record never raises."""
    try:
        nv = limits.next_visit(record)
    except EventError:
        return
    Visit(1, nv, None, time.time(), time.time())  # type: ignore[arg-type]


ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()))


@given(text=ANY_TEXT)
def test_the_quick_control_character_check_agrees_with_its_definition(text: str) -> None:
    """``has_control`` decides printable ASCII without its regex; any text gets one answer."""
    assert has_control(text) == (re.search(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]", text) is not None)


def test_remembered_checks_remember_only_what_passed() -> None:
    """Group ids and instrument names that passed are remembered; a bad one fails every time."""
    for _ in range(3):
        assert limits.group_id("2025-02-28T00:00:00.001") == "2025-02-28T00:00:00.001"
        with pytest.raises(EventError, match="impossible date"):
            limits.group_id("2025-02-30T00:00:00.001")
        with pytest.raises(EventError, match="outside 1990-2099"):
            limits.group_id("1899-01-01T00:00:00")
        with pytest.raises(EventError, match="control character"):
            limits.group_id("2025-02-28T00:00:00\x00")
        with pytest.raises(EventError, match="letters, digits"):
            limits.instrument("LSST Cam")
        with pytest.raises(EventError, match="characters long"):
            limits.group_id("x" * (limits.GROUP_ID_LIMIT + 1))


BATCH = st.tuples(
    st.lists(hostile_next_visits(), min_size=5, max_size=15),
    st.lists(hostile_images(), min_size=5, max_size=15),
    st.lists(hostile_cancels(), min_size=1, max_size=5),
    st.lists(RAW_BYTES, min_size=3, max_size=10),
)


@pytest.mark.stack
@settings(
    max_examples=max(3, settings().max_examples // 1000),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(batch=BATCH)
def test_fuzzed_events_through_the_dispatcher(
    prompt_stack: Endpoints, tmp_path_factory: pytest.TempPathFactory, batch: Any
) -> None:
    """A batch of hostile events on every input topic, then a good visit: the dispatcher
    consumes past all of them (nothing wedges), keeps running, and runs the visit."""
    asyncio.run(_through_the_dispatcher(prompt_stack, tmp_path_factory, batch))


async def _through_the_dispatcher(
    stack: Endpoints, tmp: pytest.TempPathFactory, batch: Any
) -> None:
    nvs, images, cancels, raws = batch
    suffix = f"fz{time.monotonic_ns() % 10**9}"
    async with scratch_database(stack.database_url, "fz") as url:
        base = Settings(
            database_url=url, kafka_bootstrap=stack.kafka_bootstrap,
            state_dir=tmp.mktemp("fz"), topics=Topics().suffixed(suffix),
        )  # fmt: skip
        await ensure_topics(base, stack.kafka_bootstrap)
        tasks = sleep_task_file(mean_s=0.01, detectors="0-188")
        async with dispatcher_env(base, tasks, pilots=1, slots=8) as env:
            topics = env.settings.topics
            sent = {topics.next_visit: 0, topics.next_visit_canceled: 0, topics.image_arrival: 0}
            producer = AIOKafkaProducer(
                **aiokafka_options(env.settings, stack.kafka_bootstrap),
                max_request_size=8 * 1024 * 1024, enable_idempotence=False,
            )  # fmt: skip
            await producer.start()

            async def send(topic: str, value: bytes) -> None:
                await producer.send_and_wait(topic, value)
                sent[topic] += 1

            try:
                await _send_all(send, topics, nvs, cancels, images, raws)
            finally:
                await producer.stop()
            intake = env.running.intake
            await env.until(
                lambda: all(intake.positions.get((t, 0), 0) >= n for t, n in sent.items()),
                timeout=60,
            )
            nv = next_visit_for(f"2025-05-01T23:59:59.000-{suffix}", start_utc=time.time())
            await env.sender.next_visit(nv)
            await env.sender.images(image_arrivals(nv, range(189)))

            def good_done() -> bool:
                return len(env.completions.for_group(nv.group_id)) == 189

            await env.until(good_done, timeout=60)
            assert {r["status"] for r in env.completions.for_group(nv.group_id)} == {"finished"}


async def _send_all(
    send: Any, topics: Topics, nvs: Any, cancels: Any, images: Any, raws: Any
) -> None:
    for record in nvs:
        await send(topics.next_visit, CODECS[EventKind.NEXT_VISIT].encode(record))
    for record in cancels:
        codec = CODECS[EventKind.NEXT_VISIT_CANCELED]
        await send(topics.next_visit_canceled, codec.encode(record))
    for record in images:
        await send(topics.image_arrival, CODECS[EventKind.IMAGE_ARRIVAL].encode(record))
    for i, raw in enumerate(raws):
        await send([topics.next_visit, topics.image_arrival][i % 2], raw)
