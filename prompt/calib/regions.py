"""Sky tessellation for templates: fixed fields about one LSSTCam field of view across.

A template is made per (region, filter, detector). Visits are pointed at region centres (as a
survey revisits its fields), so a template is already in the frame of the science image and
the pipeline does not warp (see docs/pipeline.md for what that leaves out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REGION_STEP_DEG = 3.5


@dataclass(frozen=True)
class Region:
    name: str
    ra: float
    dec: float


def region_of(ra: float, dec: float, step: float = REGION_STEP_DEG) -> Region:
    """The region whose centre is nearest to (ra, dec): dec bands, ra steps ~``step`` on sky."""
    band = round((max(-90.0, min(90.0, dec)) + 90.0) / step)
    dec_c = min(90.0, -90.0 + band * step)
    per_band = max(1, math.floor(360.0 * math.cos(math.radians(dec_c)) / step))
    ra_step = 360.0 / per_band
    cell = round((ra % 360.0) / ra_step) % per_band
    return Region(f"{band:03d}.{cell:03d}", round(cell * ra_step, 6), round(dec_c, 6))
