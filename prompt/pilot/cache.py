"""The pilot's calibration cache: LRU by bytes, entries in shared memory.

Entries are loaded by the pilot process (on a preload hint, before the image exists) and mapped
read-only by the worker processes by name, so a warm worker never copies a calibration.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Any, NamedTuple


class CacheKey(NamedTuple):
    instrument: str
    detector: int
    filter: str
    calib_type: str
    validity: str
    """Which version: a validity-range label, or the object key of the calibration or
    template in the store (which names its validity start or sky region)."""

    def label(self) -> str:
        return f"{self.instrument}/{self.detector}/{self.filter}/{self.calib_type}/{self.validity}"


@dataclass
class CacheEntry:
    key: CacheKey
    nbytes: int
    shm: shared_memory.SharedMemory | None
    meta: dict[str, Any] = field(default_factory=dict)

    def handle(self) -> dict[str, Any]:
        """What a worker needs to map the entry."""
        return {
            "shm": self.shm.name if self.shm else None,
            "nbytes": self.nbytes,
            "meta": self.meta,
        }

    def release(self) -> None:
        if self.shm is not None:
            self.shm.close()
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()  # mappings workers hold stay valid until they close them


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0
    loaded_bytes: int = 0


class CalibrationCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.used = 0
        self.stats = CacheStats()
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, entry: CacheEntry) -> None:
        old = self._entries.pop(entry.key, None)
        if old is not None:
            self.used -= old.nbytes
            old.release()
        self._entries[entry.key] = entry
        self.used += entry.nbytes
        self.stats.loads += 1
        self.stats.loaded_bytes += entry.nbytes
        while self.used > self.capacity and len(self._entries) > 1:
            _, victim = self._entries.popitem(last=False)
            self.used -= victim.nbytes
            victim.release()
            self.stats.evictions += 1

    def keys(self) -> list[CacheKey]:
        return list(self._entries)

    def summary(self) -> list[list[Any]]:
        """(instrument, detector, filter) held, for the dispatcher's cache-affinity choice."""
        seen = {(k.instrument, k.detector, k.filter) for k in self._entries}
        return [list(item) for item in sorted(seen)]

    def close(self) -> None:
        for entry in self._entries.values():
            entry.release()
        self._entries.clear()
        self.used = 0
