"""Detector geometry of the synthetic camera: LSSTCam's 189 science detectors, each imaged at a
small size, with the pixel scale enlarged so a detector covers its real ~13.7' on the sky."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prompt.instruments import detector_name

LSSTCAM_PIXELS = 4096
LSSTCAM_SCALE_ARCSEC = 0.2


@dataclass(frozen=True)
class SimCamera:
    instrument: str = "LSSTCam"
    size: int = 256

    @property
    def pixel_scale_arcsec(self) -> float:
        return LSSTCAM_SCALE_ARCSEC * LSSTCAM_PIXELS / self.size

    def offset(self, detector: int) -> tuple[float, float]:
        """Detector centre in detector widths from the boresight (R22_S11 at 0, 0)."""
        name = detector_name(self.instrument, detector)  # e.g. R22_S11
        ry, rx, sy, sx = int(name[1]), int(name[2]), int(name[5]), int(name[6])
        return 3 * rx + sx - 7.0, 3 * ry + sy - 7.0

    def wcs_header(self, detector: int, ra: float, dec: float) -> dict[str, Any]:
        """A TAN WCS with the boresight at (ra, dec), north up (rotation is not simulated)."""
        dx, dy = self.offset(detector)
        scale = self.pixel_scale_arcsec / 3600.0
        centre = (self.size + 1) / 2.0  # FITS pixels are 1-based
        return {
            "CTYPE1": "RA---TAN",
            "CTYPE2": "DEC--TAN",
            "CRVAL1": ra,
            "CRVAL2": dec,
            "CRPIX1": centre - dx * self.size,
            "CRPIX2": centre - dy * self.size,
            "CD1_1": -scale,
            "CD1_2": 0.0,
            "CD2_1": 0.0,
            "CD2_2": scale,
        }
