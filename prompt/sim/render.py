"""Point sources added to an image with the shared PSF model."""

from __future__ import annotations

import numpy as np

from prompt.psf import pixel_profile


def add_sources(
    image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, sigma: float
) -> None:
    """Add sources (0-based pixel centres) in place; stamps are clipped at the edges."""
    radius = int(np.ceil(5 * sigma))
    ny, nx = image.shape
    n = 2 * radius + 1
    for xc, yc, f in zip(x, y, flux, strict=True):
        x0, y0 = round(xc) - radius, round(yc) - radius
        stamp = f * np.outer(pixel_profile(yc, sigma, y0, n), pixel_profile(xc, sigma, x0, n))
        xs, ys = max(0, x0), max(0, y0)
        xe, ye = min(nx, x0 + n), min(ny, y0 + n)
        if xs < xe and ys < ye:
            image[ys:ye, xs:xe] += stamp[ys - y0 : ye - y0, xs - x0 : xe - x0]
