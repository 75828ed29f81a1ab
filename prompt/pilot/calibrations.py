"""Where the pilot loads calibrations from. Sources are pluggable; the cache does not care."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, Protocol

from prompt.pilot.cache import CacheEntry, CacheKey


class CalibrationSource(Protocol):
    def keys_for(self, fields: Mapping[str, Any]) -> list[CacheKey]:
        """The calibrations (and template) a job needs, from its fields (instrument, detector,
        filter, day_obs, ra, dec): the same for a preload hint and for the job itself."""

    def load(self, key: CacheKey) -> CacheEntry:
        """Load one entry (blocking I/O: call it in a thread)."""


@dataclass(frozen=True)
class SyntheticCalibrations:
    """Stand-in calibrations of a given size and load time, for the ``sleep`` payload and for
    measuring the service without real data: the bytes are real shared memory, the cost is
    the configured load time."""

    nbytes: int = 64 * 1024
    load_s: float = 0.05
    types: tuple[str, ...] = ("bias", "dark", "flat")

    def keys_for(self, fields: Mapping[str, Any]) -> list[CacheKey]:
        validity = str(int(fields["day_obs"]) // 100)  # monthly calibrations
        instrument, detector, filter = (
            fields["instrument"],
            int(fields["detector"]),
            fields["filter"],
        )
        return [
            CacheKey(instrument, detector, filter if t == "flat" else "", t, validity)
            for t in self.types
        ]

    def load(self, key: CacheKey) -> CacheEntry:
        if self.load_s:
            time.sleep(self.load_s)
        shm = shared_memory.SharedMemory(create=True, size=max(self.nbytes, 1))
        return CacheEntry(key, self.nbytes, shm, {"synthetic": True})
