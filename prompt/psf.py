"""The point-spread function model shared by the simulator and the pipeline: a circular
Gaussian integrated over each pixel."""

from __future__ import annotations

import numpy as np

_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + _P * a)
    poly = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4]))))
    return np.asarray(sign * (1.0 - poly * np.exp(-a * a)))


def pixel_profile(centre: float, sigma: float, first: int, n: int) -> np.ndarray:
    """Fraction of a 1-D Gaussian's flux in pixels first..first+n-1 (pixel i spans i±0.5)."""
    edges = np.arange(first, first + n + 1, dtype=np.float64) - 0.5
    cdf = 0.5 * (1.0 + erf((edges - centre) / (np.sqrt(2.0) * sigma)))
    return np.diff(cdf)


def gaussian_psf(sigma: float, radius: int, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Unit-sum PSF on a (2r+1)^2 grid, centred at (r + dx, r + dy)."""
    n = 2 * radius + 1
    psf = np.outer(pixel_profile(radius + dy, sigma, 0, n), pixel_profile(radius + dx, sigma, 0, n))
    return np.asarray(psf / psf.sum())
