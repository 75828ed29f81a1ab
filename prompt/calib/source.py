"""The pilot's calibration source over an object store: bias, dark, flat and the template.

``keys_for`` picks, from the calibration index, the entry valid on the job's day_obs (the
validity start is part of the cache key, so a new calibration is a new entry), and the
template of the job's sky region. ``load`` reads the FITS object into shared memory.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from prompt.calib.errors import MissingCalibrationError
from prompt.calib.fitsio import read_image
from prompt.calib.index import CalibIndex
from prompt.calib.layout import index_key, template_key
from prompt.calib.objectstore import ObjectStore, ObjectStoreError
from prompt.calib.regions import region_of
from prompt.pilot.cache import CacheEntry, CacheKey

CALIB_TYPES = ("bias", "dark", "flat")
TEMPLATE = "template"
__all__ = ["MissingCalibrationError", "StoreCalibrations"]

HEADER_KEYS = ("GAIN", "RDNOISE", "PSFSIG", "NOISE", "REGION", "BAND", "VALIDFR", "VALIDTO")


class StoreCalibrations:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._index: dict[str, CalibIndex] = {}
        self._lock = threading.Lock()
        self.loads: Counter[str] = Counter()
        """Objects read from the store, by calib type."""

    def _index_for(self, instrument: str, refresh: bool = False) -> CalibIndex:
        index = self._index.get(instrument)
        if index is None or refresh:
            try:
                index = CalibIndex.from_json(self.store.get(index_key(instrument)))
            except ObjectStoreError:
                index = CalibIndex([])
            self._index[instrument] = index
        return index

    def keys_for(self, fields: Mapping[str, Any]) -> list[CacheKey]:
        instrument = str(fields["instrument"])
        detector = int(fields["detector"])
        physical = str(fields["filter"])
        band = physical.split("_", 1)[0]
        day_obs = int(fields["day_obs"])
        keys = []
        for calib_type in CALIB_TYPES:
            want = band if calib_type == "flat" else ""
            entry = self._index_for(instrument).find(calib_type, detector, want, day_obs)
            if entry is None:  # calibrations may have been certified since the index was read
                entry = self._index_for(instrument, refresh=True).find(
                    calib_type, detector, want, day_obs
                )
            if entry is None:
                raise MissingCalibrationError(
                    f"no {calib_type} for {instrument} detector {detector}"
                    f"{' band ' + want if want else ''} valid on {day_obs}"
                )
            # The cache key names the visit's filter as the dispatcher knows it (physical), so
            # the pilot's cache summary matches its cache-affinity lookups.
            keys.append(
                CacheKey(instrument, detector, physical if want else "", calib_type, entry.key)
            )
        region = region_of(float(fields["ra"]), float(fields["dec"]))
        keys.append(
            CacheKey(
                instrument, detector, physical, TEMPLATE,
                template_key(instrument, band, region.name, detector),
            )
        )  # fmt: skip
        return keys

    def load(self, key: CacheKey) -> CacheEntry:
        array, header = read_image(self.store.get(key.validity))
        with self._lock:
            self.loads[key.calib_type] += 1
        shm = shared_memory.SharedMemory(create=True, size=max(array.nbytes, 1))
        np.ndarray(array.shape, np.float32, buffer=shm.buf)[:] = array
        meta = {k.lower(): header[k] for k in HEADER_KEYS if k in header}
        meta.update(shape=list(array.shape), dtype="float32", key=key.validity)
        return CacheEntry(key, array.nbytes, shm, meta)
