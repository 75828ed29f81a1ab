"""Sky coordinates of pixels, shared by the simulator (truth) and the pipeline (alerts)."""

from __future__ import annotations

import math
from typing import Any


def pixel_to_sky(header: dict[str, Any], x: float, y: float) -> tuple[float, float]:
    """Gnomonic (TAN) projection of 0-based pixel (x, y) for a header without distortion.

    A few lines of spherical trigonometry instead of building an astropy WCS per image: the
    pipeline converts a handful of positions per detector.
    """
    u = header["CD1_1"] * (x + 1 - header["CRPIX1"]) + header["CD1_2"] * (y + 1 - header["CRPIX2"])
    v = header["CD2_1"] * (x + 1 - header["CRPIX1"]) + header["CD2_2"] * (y + 1 - header["CRPIX2"])
    xi, eta = math.radians(u), math.radians(v)
    ra0, dec0 = math.radians(header["CRVAL1"]), math.radians(header["CRVAL2"])
    denom = math.cos(dec0) - eta * math.sin(dec0)
    ra = ra0 + math.atan2(xi, denom)
    dec = math.atan2(math.sin(dec0) + eta * math.cos(dec0), math.hypot(xi, denom))
    return math.degrees(ra) % 360.0, math.degrees(dec)
