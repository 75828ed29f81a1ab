"""Instrument signature removal: bias, dark, gain and flat, with a variance plane."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Exposure:
    image: np.ndarray
    """Electrons, flat-fielded."""
    variance: np.ndarray
    """Electrons squared, per pixel."""


def isr(
    raw: np.ndarray, bias: np.ndarray, dark: np.ndarray, flat: np.ndarray, *,
    exptime: float, gain: float, read_noise_adu: float,
) -> Exposure:  # fmt: skip
    """``(raw - bias - dark * t) * gain / flat``; variance from the photons (before the flat)
    and the read noise, propagated through the flat."""
    adu = raw - bias - dark * np.float32(exptime)
    electrons = adu * np.float32(gain)
    inv_flat = np.float32(1.0) / flat
    image = electrons * inv_flat
    rn_e = np.float32(read_noise_adu * gain)
    variance = (np.maximum(electrons, 0) + rn_e * rn_e) * inv_flat * inv_flat
    return Exposure(image.astype(np.float32), variance.astype(np.float32))


def combine(snaps: list[Exposure]) -> Exposure:
    """The sum of a visit's snaps."""
    if len(snaps) == 1:
        return snaps[0]
    return Exposure(
        np.sum([s.image for s in snaps], axis=0), np.sum([s.variance for s in snaps], axis=0)
    )
