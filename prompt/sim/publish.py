"""Put the synthetic observatory's calibrations and templates into an object store (S3).

The simulator writes its data root on local disk (generation runs in worker processes and is
reused across runs); this uploads what pilots read, with real PUTs, so they load it the way
they will at the summit. Calibrations and templates are immutable per simulator
configuration and key: one already in the store is kept; the index is always written.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from prompt.calib.layout import index_key
from prompt.calib.objectstore import FileStore, ObjectStore
from prompt.sim.scene import SimConfig


def store_prefix(config: SimConfig) -> str:
    """The key prefix a configuration's calibrations go under (same config, same objects)."""
    digest = hashlib.sha256(orjson.dumps(config.key(), option=orjson.OPT_SORT_KEYS))
    return f"sim-{digest.hexdigest()[:12]}"


def publish_calibrations(
    root: Path, store: ObjectStore, config: SimConfig, *, threads: int = 8
) -> tuple[int, int]:
    """PUT the root's calibrations and templates missing from ``store``, then the index.
    Returns (objects put, bytes put)."""
    local = FileStore(root)
    keys = sorted(
        str(path.relative_to(local.root))
        for top in ("calib", "templates")
        for path in (local.root / top).rglob("*.fits")
    )

    def one(key: str) -> int:
        if store.exists(key):
            return -1
        data = local.get(key)
        store.put(key, data)
        return len(data)

    with ThreadPoolExecutor(threads) as pool:
        sizes = [n for n in pool.map(one, keys) if n >= 0]
    index = index_key(config.camera.instrument)
    store.put(index, local.get(index))
    return len(sizes) + 1, sum(sizes)
