"""What the machine and the service do over a replay, sampled every few wall seconds.

Per role (dispatcher; pilots with their workers; broker; PostgreSQL with its backends): memory
(PSS: each shared page counted once across the processes that map it, so pilots' workers mapping
the same calibrations and PostgreSQL's backends sharing its buffers are not counted many times)
and CPU. From the dispatcher's ``/metrics``: consumer lag, event-loop stalls, state-commit time.
From the broker: the cost of fetching the newest image-arrival record (what each of the
dispatcher's image fetches pays) — see :mod:`loadtest.brokerprobe`.

psutil and the probe run off the driver's event loop where they could block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from prompt.aio import cancel_and_wait

ROLES = ("dispatcher", "pilots", "broker", "postgres")
MiB = 1024 * 1024


@dataclass
class Sample:
    t: float
    """Wall seconds since the replay's first event was due."""
    rss_mib: dict[str, float] = field(default_factory=dict)
    cpu_pct: dict[str, float] = field(default_factory=dict)
    """Percent of one core over the interval before this sample."""
    lag: dict[str, float] = field(default_factory=dict)
    """Messages not yet consumed, per topic kind (``image-arrival``, ``control``)."""
    loop_lag_max_ms: float | None = None
    commit_ms_mean: float | None = None
    """Mean state-commit transaction time over the interval."""
    fetch_ms: float | None = None
    """Broker: one fetch of the newest image-arrival record."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 2),
            "rss_mib": {k: round(v, 1) for k, v in self.rss_mib.items()},
            "cpu_pct": {k: round(v, 1) for k, v in self.cpu_pct.items()},
            "lag": self.lag,
            "loop_lag_max_ms": _r(self.loop_lag_max_ms),
            "commit_ms_mean": _r(self.commit_ms_mean),
            "fetch_ms": _r(self.fetch_ms),
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _memory_mib(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
    return total / MiB


def _cpu_s(procs: list[psutil.Process], seen: dict[int, float]) -> float:
    """CPU seconds used since the last call by these processes (new ones: since they began)."""
    used = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            now = t.user + t.system
            used += now - seen.get(p.pid, 0.0)
            seen[p.pid] = now
    return used


def parse_metrics(text: str, image_topic: str) -> dict[str, float]:
    """The figures the sampler keeps from a ``/metrics`` page."""
    out: dict[str, float] = {"lag_image": 0.0, "lag_control": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "prompt_consumer_lag_messages":
                key = "lag_image" if s.labels.get("topic") == image_topic else "lag_control"
                out[key] += s.value
            elif s.name == "prompt_event_loop_lag_max_seconds":
                out["loop_lag_max_s"] = s.value
            elif s.name == "prompt_state_commit_seconds_sum":
                out["commit_sum_s"] = s.value
            elif s.name == "prompt_state_commit_seconds_count":
                out["commit_count"] = s.value
    return out


class Sampler:
    """``async with Sampler(...)``: samples every ``interval_s`` until the block ends."""

    def __init__(
        self,
        *,
        interval_s: float,
        clock: Callable[[], float],
        pids: Callable[[], dict[str, list[int]]],
        metrics_url: str | Callable[[], str] | None,  # callable: the leader's, as it changes
        image_topic: str,
        fetch_ms: Callable[[], Any] | None = None,
        memory_every: int = 5,
    ) -> None:
        self.interval_s = interval_s
        self.memory_every = memory_every
        """Memory (PSS: the kernel walks every mapping of ~200 processes, tens of ms on a busy
        machine) only every this many samples; CPU, lag and the probe every sample."""
        self._n = 0
        self.samples: list[Sample] = []
        self._clock = clock
        self._pids = pids
        self._metrics_url = metrics_url
        self._image_topic = image_topic
        self._fetch_ms = fetch_ms
        self._cpu_seen: dict[str, dict[int, float]] = {r: {} for r in ROLES}
        self._last_wall = time.monotonic()
        self._last_commit: tuple[float, float] | None = None
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sampler:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        await asyncio.to_thread(self._processes)  # CPU baseline
        self._n = 0  # the first sample proper has memory too
        self._last_wall = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        await asyncio.sleep(min(self.interval_s, 0.5))  # a first look near the start
        while True:
            self.samples.append(await self.sample())
            await asyncio.sleep(self.interval_s)

    async def sample(self) -> Sample:
        s = Sample(t=self._clock())
        s.rss_mib, s.cpu_pct = await asyncio.to_thread(self._processes)
        await self._scrape(s)
        if self._fetch_ms is not None:
            with contextlib.suppress(Exception):  # a probe failure must not end the replay
                s.fetch_ms = await self._fetch_ms()
        return s

    def _processes(self) -> tuple[dict[str, float], dict[str, float]]:
        with_memory = self._n % self.memory_every == 0
        self._n += 1
        now = time.monotonic()
        elapsed = max(1e-6, now - self._last_wall)
        self._last_wall = now
        rss: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for role, pids in self._pids().items():
            procs = [p for pid in pids for p in _tree(pid)]
            if not procs:
                continue
            if with_memory:
                rss[role] = _memory_mib(procs)
            cpu[role] = 100 * _cpu_s(procs, self._cpu_seen.setdefault(role, {})) / elapsed
        return rss, cpu

    async def _scrape(self, s: Sample) -> None:
        if self._metrics_url is None or self._http is None:
            return
        url = self._metrics_url() if callable(self._metrics_url) else self._metrics_url
        try:
            async with self._http.get(url) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return
        m = await asyncio.to_thread(parse_metrics, text, self._image_topic)
        s.lag = {"image-arrival": m["lag_image"], "control": m["lag_control"]}
        if "loop_lag_max_s" in m:
            s.loop_lag_max_ms = m["loop_lag_max_s"] * 1e3
        if "commit_sum_s" in m:
            now = (m["commit_sum_s"], m["commit_count"])
            if self._last_commit is not None and now[1] > self._last_commit[1]:
                d_sum, d_n = now[0] - self._last_commit[0], now[1] - self._last_commit[1]
                s.commit_ms_mean = 1e3 * d_sum / d_n
            self._last_commit = now
