"""``prompt bench intake``: the dispatcher's CPU per image, in process, nothing else running.

The real intake (``Intake.take_images``: decode, limits, engine, job frame corked for a pilot,
the hand-offs) is fed bursts of Avro image-arrival records as a fetch batch would bring them,
for visits already resurrected, with two pilots that have room for every job (the push path,
no queueing). Pilot channels only count frames; the state writer only records (nothing is
committed). CPU time of this thread per burst, so it holds on a loaded machine too: the part of
a burst that no scheduling, pilot or worker can remove, to set against the floor of
``prompt bench dispatch --floor``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, cast

from aiokafka.structs import TopicPartition

from prompt.dispatcher.deadletters import DeadLetters
from prompt.dispatcher.engine import Engine, EngineConfig, Resurrect
from prompt.dispatcher.health import Health
from prompt.dispatcher.intake import Intake
from prompt.dispatcher.runtime import Runtime
from prompt.dispatcher.writer import StateWriter
from prompt.events import AvroCodec, EventKind, LocalSchemaRegistry
from prompt.metrics import DispatcherMetrics
from prompt.runtime import freeze_startup_objects
from prompt.stats import summarize
from prompt.tasks import Task, TaskSpec
from prompt.testing.traffic import image_arrivals, next_visit_for

TOPIC = "prompt.image-arrival"


@dataclass(frozen=True)
class IntakeShape:
    bursts: int = 300
    detectors: int = 189
    warmup: int = 30
    """Bursts left out of the figures (caches, the first use of every code path)."""


@dataclass(frozen=True)
class _Record:
    """What the intake reads of a consumer record."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None


class _Channel:
    def __init__(self) -> None:
        self.frames = 0

    def send_frame(self, frame: bytes) -> None:
        self.frames += 1

    def flush(self) -> None:
        pass


@dataclass
class _Consumers:
    topics: dict[str, str]
    positions: dict[tuple[str, int], int]


def _task(detectors: int) -> Task:
    spec = TaskSpec.model_validate({
        "name": "bench-intake", "instrument": "LSSTCam",
        "detectors": {"include": f"0-{detectors - 1}"}, "payload": {"kind": "sleep"},
    })  # fmt: skip
    return Task(1, 1, 1, spec, tuple(spec.detectors.resolve()))


async def run_intake_bench(shape: IntakeShape) -> dict[str, Any]:
    metrics = DispatcherMetrics()
    registry = LocalSchemaRegistry()
    task = _task(shape.detectors)
    engine = Engine(
        EngineConfig(), scheduling_name="push", codec=AvroCodec(EventKind.COMPLETION, registry),
        metrics=metrics, tasks=[task],
    )  # fmt: skip
    writer = StateWriter(cast(Any, None), "bench", cast(Any, None), lambda _outbox: None)
    runtime = Runtime(engine, cast(Any, None), cast(Any, None), writer, "bench", metrics)
    channels = {name: _Channel() for name in ("pilot-0", "pilot-1")}
    for name, channel in channels.items():
        runtime.channels[name] = cast(Any, channel)
        runtime.apply(engine.registered(name, slots=10**9, labels=frozenset(), host="bench",
                                        cache=set(), draining=False, claimed=[]))  # fmt: skip
    image_codec = AvroCodec(EventKind.IMAGE_ARRIVAL, registry)
    consumers = _Consumers({"image-arrival": TOPIC}, {})
    intake = Intake(
        consumers=cast(Any, consumers), runtime=runtime, writer=writer,
        codecs={"image-arrival": image_codec}, dead_letters=cast(Any, DeadLetters(
            cast(Any, None), "dead-letter", metrics)),
        metrics=metrics, health=Health(), resolver=None,
    )  # fmt: skip
    freeze_startup_objects()  # the collector tuned as in ``prompt serve``
    job_ids = iter(range(1, 1 << 62))
    cpu_ms: list[float] = []
    offset = 0
    for b in range(shape.warmup + shape.bursts):
        start = time.time() + 20.0
        group = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start)) + f".{b % 1000:03d}-{b}"
        nv = next_visit_for(group, start_utc=start)
        decision = engine.announce(nv, nv.to_record(), time.time())
        assert isinstance(decision, Resurrect), decision
        jobs = [(next(job_ids), d) for d in range(shape.detectors)]
        _, effects = engine.resurrected(
            nv, task, b + 1, jobs, time.time(), decision.expires_at
        )  # fmt: skip
        runtime.apply(effects)
        records = []
        for arrival in image_arrivals(nv, range(shape.detectors)):
            value = image_codec.encode(arrival.to_record())
            records.append(_Record(TOPIC, 0, offset, value, group.encode()))
            offset += 1
        batch = cast(Any, {TopicPartition(TOPIC, 0): records})
        t0 = time.thread_time()
        await intake.take_images(batch)
        cpu_ms.append((time.thread_time() - t0) * 1e3)
    frames = sum(c.frames for c in channels.values())
    if frames < (shape.warmup + shape.bursts) * shape.detectors:
        raise RuntimeError(f"only {frames} job frames for {shape.bursts} bursts")
    timed = cpu_ms[shape.warmup :]
    per_image_us = [ms * 1e3 / shape.detectors for ms in timed]
    return {
        "shape": vars(shape),
        "burst_cpu_ms": summarize(timed, 2),
        "per_image_cpu_us": summarize(per_image_us, 2),
        "how": "Intake.take_images on one fetch batch per burst, thread CPU time; decode, limits, "
        "engine, job frame corked (pilot channels count frames); nothing committed",
    }


def intake_line(result: dict[str, Any]) -> str:
    """For ``bench dispatch --floor``: the intake's CPU per burst against the floor."""
    cpu = result["intake"]["burst_cpu_ms"]["p50"]
    floor = result["floor"]["burst_ms"]["p50"]
    ratio = f"{cpu / floor:.2f} x the floor" if floor > 0 else "no floor"
    return f"dispatcher intake alone (prompt bench intake): {cpu} ms CPU per burst = {ratio}"


def measure_intake(shape: IntakeShape) -> dict[str, Any]:
    return asyncio.run(run_intake_bench(shape))
