"""Detection and measurement of DIA sources on a difference image.

Detection is a matched filter: the PSF-weighted flux estimate at every pixel and its S/N, from
two FFT convolutions (data/variance and 1/variance with the PSF). Peaks above the threshold in
either sign are DIA sources. Each is then measured at its sub-pixel centroid: PSF-fit flux and
error (weighted least squares), S/N, and the same flux on the science image and the template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prompt.pipeline.convolve import convolve, kernel_fft
from prompt.psf import gaussian_psf


@dataclass(frozen=True)
class DiaSource:
    x: float
    y: float
    x_err: float
    y_err: float
    flux: float
    flux_err: float
    snr: float
    peak_snr: float
    science_flux: float
    template_flux: float
    ndata: int

    @property
    def is_negative(self) -> bool:
        return self.flux < 0


def _extrema(snr: np.ndarray, threshold: float, border: int) -> list[tuple[int, int]]:
    n, m = snr.shape
    inner = snr[border : n - border, border : m - border]
    found: list[tuple[int, int]] = []
    for sign in (1.0, -1.0):
        s = inner * sign
        mask = s >= threshold
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dx or dy:
                    other = snr[border + dy : n - border + dy, border + dx : m - border + dx]
                    mask &= s >= other * sign
        ys, xs = np.nonzero(mask)
        found.extend(zip((ys + border).tolist(), (xs + border).tolist(), strict=True))
    return found


def _refine(snr: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Sub-pixel peak by a parabola through the peak and its neighbours in x and in y."""

    def offset(a: float, b: float, c: float) -> float:
        denom = a - 2 * b + c
        return 0.0 if denom == 0 else max(-0.5, min(0.5, 0.5 * (a - c) / denom))

    return (
        x + offset(snr[y, x - 1], snr[y, x], snr[y, x + 1]),
        y + offset(snr[y - 1, x], snr[y, x], snr[y + 1, x]),
    )


def _psf_fluxes(
    images: tuple[np.ndarray, ...], inv_var: np.ndarray, x: float, y: float, sigma: float,
    radius: int,
) -> tuple[list[float], float, int]:  # fmt: skip
    """PSF-fit flux at (x, y) on each image (same PSF, same weights), its error, pixels used."""
    yi, xi = round(y), round(x)
    psf = gaussian_psf(sigma, radius, x - xi, y - yi)
    sl = np.s_[yi - radius : yi + radius + 1, xi - radius : xi + radius + 1]
    weighted = psf * inv_var[sl]
    denom = float((psf * weighted).sum())
    if denom <= 0:
        return [math.nan] * len(images), math.nan, 0
    fluxes = [float((image[sl] * weighted).sum() / denom) for image in images]
    return fluxes, 1.0 / math.sqrt(denom), psf.size


def detect(
    difference: np.ndarray, variance: np.ndarray, science: np.ndarray, template: np.ndarray,
    *, psf_sigma: float, threshold: float = 5.0, border: int = 8, max_sources: int = 200,
) -> list[DiaSource]:  # fmt: skip
    """DIA sources with |S/N| >= threshold, brightest first (at most ``max_sources``)."""
    shape = (difference.shape[0], difference.shape[1])
    radius = max(2, math.ceil(3 * psf_sigma))
    border = max(border, radius + 1)
    psf = gaussian_psf(psf_sigma, radius)
    inv_var = np.where(variance > 0, 1.0 / np.maximum(variance, 1e-12), 0.0)
    flipped = psf[::-1, ::-1]
    num = convolve(np.fft.rfft2(difference * inv_var), kernel_fft(flipped, shape), shape)
    den = convolve(np.fft.rfft2(inv_var), kernel_fft(flipped * flipped, shape), shape)
    snr = num / np.sqrt(np.maximum(den, 1e-30))
    peaks = _extrema(snr, threshold, border)
    peaks.sort(key=lambda p: -abs(snr[p]))
    sources = []
    for y, x in peaks[:max_sources]:
        xc, yc = _refine(snr, y, x)
        (flux, sci, tmpl), err, ndata = _psf_fluxes(
            (difference, science, template), inv_var, xc, yc, psf_sigma, radius
        )
        if not math.isfinite(flux) or err <= 0:
            continue
        s = flux / err
        pos_err = psf_sigma * math.sqrt(2.0) / max(abs(s), 1e-6)
        sources.append(
            DiaSource(xc, yc, pos_err, pos_err, flux, err, s, float(snr[y, x]), sci, tmpl, ndata)
        )
    return sources
