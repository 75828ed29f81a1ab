"""The pilot's calibrations: what a job needs, each loaded once (in a thread) even when asked
for twice at once, and preloaded on the dispatcher's hints before the images exist."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from prompt.pilot.cache import CacheKey, CalibrationCache
from prompt.pilot.calibrations import CalibrationSource

log = structlog.get_logger(__name__)

_REMEMBERED = 10_000
"""Jobs whose loads and preload outcome are kept until the job runs (older ones are dropped)."""

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


@dataclass
class JobLoads:
    """What the pilot read from the calibration store for one job, and when."""

    loads: Counter[str] = field(default_factory=Counter)
    preload_s: float | None = None


class CalibrationLoader:
    def __init__(
        self,
        source: CalibrationSource,
        cache: CalibrationCache,
        spawn: Spawn,
        preload_concurrency: int,
    ) -> None:
        self.source = source
        self.cache = cache
        self._spawn = spawn
        self._concurrency = preload_concurrency
        self.preloaded: OrderedDict[int, bool] = OrderedDict()  # job -> all calibs were cached
        self._preloading: dict[int, asyncio.Task[None]] = {}
        self._locks: dict[CacheKey, asyncio.Lock] = {}
        self._job_loads: OrderedDict[int, JobLoads] = OrderedDict()

    def keys(self, fields: dict[str, Any]) -> list[CacheKey]:
        return self.source.keys_for(fields)

    def cached(self, keys: list[CacheKey]) -> bool:
        return all(k in self.cache for k in keys)

    def preloading(self, job: int) -> asyncio.Task[None] | None:
        """The preload still running for this job, if any."""
        return self._preloading.get(job)

    def take_preload_hit(self, job: int) -> bool | None:
        """Whether this job's preload found everything cached (None: it had no preload)."""
        return self.preloaded.pop(job, None)

    def take_loads(self, job: int) -> JobLoads:
        return self._job_loads.pop(job, None) or JobLoads()

    def _loads_for(self, job: int) -> JobLoads:
        loads = self._job_loads.get(job)
        if loads is None:
            loads = self._job_loads[job] = JobLoads()
            while len(self._job_loads) > _REMEMBERED:
                self._job_loads.popitem(last=False)
        return loads

    async def ensure(self, keys: list[CacheKey], job: int) -> dict[str, dict[str, Any]]:
        """Load what is missing (in a thread); one load per key even if asked twice at once."""
        handles: dict[str, dict[str, Any]] = {}
        for key in keys:
            entry = self.cache.get(key)
            if entry is None:
                lock = self._locks.setdefault(key, asyncio.Lock())
                async with lock:
                    entry = self.cache.get(key)
                    if entry is None:
                        entry = await asyncio.to_thread(self.source.load, key)
                        self.cache.put(entry)
                        self._loads_for(job).loads[key.calib_type] += 1
                self._locks.pop(key, None)
            handles[key.calib_type] = entry.handle()
        return handles

    async def preload(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Load every hinted calibration now, several at once; say per job whether all of
        them were cached already."""
        limit = asyncio.Semaphore(self._concurrency)

        async def one(item: dict[str, Any]) -> dict[str, Any]:
            job = int(item["job"])
            try:
                keys = self.keys(item)
            except Exception as exc:  # reported again, as the job's error, when it runs
                log.warning("preload: no calibrations", job=job, error=str(exc))
                return {"job": job, "hit": False}
            hit = self.cached(keys)
            async with limit:
                started = time.perf_counter()
                task = self._spawn(self.ensure(keys, job))
                self._preloading[job] = task
                try:
                    await task
                except Exception as exc:
                    log.warning("preload failed", job=job, error=repr(exc))
                    hit = False
                finally:
                    self._preloading.pop(job, None)
                    self._loads_for(job).preload_s = time.perf_counter() - started
            self.preloaded[job] = hit
            return {"job": job, "hit": hit}

        results = await asyncio.gather(*(one(item) for item in items))
        while len(self.preloaded) > _REMEMBERED:
            self.preloaded.popitem(last=False)
        return list(results)
