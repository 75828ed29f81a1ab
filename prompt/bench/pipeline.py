"""``prompt bench pipeline``: the alert pipeline alone, one process, per-stage milliseconds.

Generates one visit of synthetic data, then runs the payload detector by detector as a warm
worker would (calibrations read into shared memory first, as the pilot's cache holds them), so
the numbers are the pipeline's own cost without the service or other processes around it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from prompt.calib.objectstore import FileStore
from prompt.calib.regions import region_of
from prompt.calib.source import StoreCalibrations
from prompt.instruments import raw_key
from prompt.pilot.payloads import JobContext
from prompt.pipeline import task
from prompt.sim import SimConfig, SimVisit, generate


def run_pipeline_bench(root: Path, detectors: int, seed: int = 0) -> dict[str, Any]:
    region = region_of(150.0, -30.0)
    visit = SimVisit(20261123, 1, "bench", "r_57", region.ra, region.dec)
    generate(root, [visit], range(detectors), SimConfig(seed=seed))
    source = StoreCalibrations(FileStore(root))
    task.warm()
    stages: dict[str, list[float]] = {}
    alerts = 0
    for detector in range(detectors):
        uri = f"file://{root.resolve()}/{raw_key('LSSTCam', visit.day_obs, 1, detector)}"
        fields = {
            "instrument": "LSSTCam", "detector": detector, "filter": visit.physical_filter,
            "band": visit.band, "day_obs": visit.day_obs, "ra": visit.ra, "dec": visit.dec,
            "uri": uri, "uris": [uri], "survey": "bench",
        }  # fmt: skip
        entries = [source.load(key) for key in source.keys_for(fields)]
        ctx = JobContext(
            job=detector, attempt=1, fields=fields, params={},
            calibs={e.key.calib_type: e.handle() for e in entries},
        )  # fmt: skip
        started = time.perf_counter()
        out = task.run(ctx)
        total = time.perf_counter() - started
        ctx.close()
        for entry in entries:
            entry.release()
        alerts += out["counts"]["alerts"]
        for name, seconds in {**out["stages"], "total": total}.items():
            stages.setdefault(name, []).append(seconds * 1e3)
    summary = {
        name: {"mean": round(statistics.mean(v), 2), "p50": round(statistics.median(v), 2),
               "max": round(max(v), 2)}
        for name, v in stages.items()
    }  # fmt: skip
    return {
        "detectors": detectors,
        "image_px": SimConfig().camera.size,
        "alerts": alerts,
        "stage_ms": summary,
    }
