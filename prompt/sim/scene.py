"""What the sky and the detectors are, as functions of (seed, ...): stars per region and
detector, the variable and transient sources of a visit, and each detector's true bias, dark,
flat and gain. The same numbers make the calibration files, the templates and the raws."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from prompt.sim.camera import SimCamera

BANDS = ("u", "g", "r", "i", "z", "y")
SKY_E_PER_30S = {"u": 60.0, "g": 250.0, "r": 500.0, "i": 800.0, "z": 1200.0, "y": 1500.0}


@dataclass(frozen=True)
class SimConfig:
    seed: int = 0
    camera: SimCamera = field(default_factory=SimCamera)
    stars: int = 120
    """Catalogue stars per detector footprint."""
    star_flux_e: tuple[float, float] = (2e3, 3e5)
    """Flux range of stars in a 30 s exposure (power law N(>F) ~ F^-1.5)."""
    transients: int = 3
    """Injected new point sources per detector and visit."""
    variables: int = 1
    """Catalogue stars per detector and visit whose flux differs from the template's."""
    snr_range: tuple[float, float] = (4.0, 40.0)
    """Truth S/N of injected sources (uniform): some are below the detection limit, on purpose."""
    read_noise_e: float = 8.0
    template_psf_px: float = 1.0
    template_depth: int = 16
    """Exposures in a template coadd: its noise is the science noise / sqrt(depth)."""
    seeing_px: tuple[float, float] = (1.4, 2.2)
    """Science PSF sigma range (pixels), drawn per visit."""
    edge_px: int = 8
    """Injected sources are kept this far from the edges (a PSF stamp fits)."""

    def key(self) -> dict[str, object]:
        return {
            "seed": self.seed, "size": self.camera.size, "instrument": self.camera.instrument,
            "stars": self.stars, "star_flux_e": list(self.star_flux_e),
            "transients": self.transients, "variables": self.variables,
            "snr_range": list(self.snr_range), "read_noise_e": self.read_noise_e,
            "template_psf_px": self.template_psf_px, "template_depth": self.template_depth,
            "seeing_px": list(self.seeing_px), "edge_px": self.edge_px,
        }  # fmt: skip


def _rng(config: SimConfig, *parts: int | str) -> np.random.Generator:
    ints = [config.seed] + [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    return np.random.default_rng(ints)


@dataclass(frozen=True)
class DetectorTruth:
    gain: float
    """e- per ADU."""
    read_noise_adu: float
    bias: np.ndarray
    dark: np.ndarray
    """ADU per second."""


# The calibrations, the raws of every visit and the tests all ask for the same detector's
# truth: computed once per process (a worker makes one detector at a time), read-only.
@lru_cache(maxsize=8)
def detector_truth(config: SimConfig, detector: int, epoch: int) -> DetectorTruth:
    """True bias and dark of a detector for one calibration epoch (month)."""
    n = config.camera.size
    rng = _rng(config, "detector", detector, epoch)
    gain = float(rng.uniform(1.2, 1.8))
    level = rng.uniform(900.0, 1100.0)
    columns = rng.normal(0.0, 3.0, n)
    rows = np.linspace(0.0, rng.uniform(-5, 5), n)
    bias = (level + columns[None, :] + rows[:, None]).astype(np.float32)
    dark = np.full((n, n), 0.002, np.float32)
    hot = rng.integers(0, n, size=(2, max(1, n * n // 2000)))
    dark[hot[0], hot[1]] = rng.uniform(0.5, 5.0, hot.shape[1])
    bias.setflags(write=False)
    dark.setflags(write=False)
    return DetectorTruth(gain, config.read_noise_e / gain, bias, dark)


@lru_cache(maxsize=8)
def flat_truth(config: SimConfig, detector: int, band: str, epoch: int) -> np.ndarray:
    """Relative sensitivity: vignetting across the focal plane, pixel response, dust rings."""
    n = config.camera.size
    rng = _rng(config, "flat", detector, band, epoch)
    dx, dy = config.camera.offset(detector)
    grid = (np.arange(n) + 0.5) / n - 0.5
    fx, fy = dx + grid[None, :], dy + grid[:, None]
    flat = 1.0 - 0.003 * (fx * fx + fy * fy)
    flat = flat * rng.normal(1.0, 0.01, (n, n))
    yy, xx = np.mgrid[0:n, 0:n]
    for _ in range(2):
        cx, cy, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(4, 12)
        ring = np.abs(np.hypot(xx - cx, yy - cy) - r) < 1.5
        flat[ring] *= 0.96
    out = np.asarray(flat, dtype=np.float32)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Stars:
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    """e- in a 30 s exposure."""


def catalogue(config: SimConfig, region: str, detector: int) -> Stars:
    """The static stars in a detector's footprint in a sky region (same for every band)."""
    n = config.camera.size
    rng = _rng(config, "stars", region, detector)
    lo, hi = config.star_flux_e
    u = rng.uniform(0, 1, config.stars)
    flux = lo * (1 - u * (1 - (lo / hi) ** 1.5)) ** (-1 / 1.5)
    return Stars(rng.uniform(-4, n + 3, config.stars), rng.uniform(-4, n + 3, config.stars), flux)


def seeing(config: SimConfig, day_obs: int, seq_num: int, detector: int) -> float:
    visit = _rng(config, "seeing", day_obs, seq_num).uniform(*config.seeing_px)
    return float(visit + _rng(config, "seeing", day_obs, seq_num, detector).normal(0, 0.03))


def background_per_pixel(config: SimConfig, band: str, exp_time: float, snaps: int) -> float:
    """Science variance per pixel (e-^2) from sky and read noise."""
    return SKY_E_PER_30S[band] * exp_time / 30.0 + snaps * config.read_noise_e**2


def template_noise(config: SimConfig, band: str) -> float:
    return math.sqrt(background_per_pixel(config, band, 30.0, 1) / config.template_depth)


def expected_snr(
    config: SimConfig, band: str, exp_time: float, snaps: int, psf: float, flux: float,
    science_flux: float, throughput: float = 1.0,
) -> float:  # fmt: skip
    """S/N of a PSF-fit flux difference: sky, read noise, the source's own photons, and the
    template's noise after it is convolved to the science PSF. ``throughput`` is the flat at
    the source: fewer photons are collected where the focal plane is vignetted."""
    nea = 4 * math.pi * psf * psf
    kernel_var = max(psf * psf - config.template_psf_px**2, 0.25)
    template_var = template_noise(config, band) ** 2 * min(1.0, 1 / (4 * math.pi * kernel_var))
    t = throughput
    sky = SKY_E_PER_30S[band] * exp_time / 30.0
    var_collected = nea * (sky * t + snaps * config.read_noise_e**2) + max(science_flux, 0.0) * t
    var = var_collected / (t * t) + nea * template_var
    return abs(flux) / math.sqrt(var)


def flux_for_snr(
    config: SimConfig, band: str, exp_time: float, snaps: int, psf: float, snr: float,
    science_base: float = 0.0, throughput: float = 1.0,
) -> float:  # fmt: skip
    """Positive flux whose :func:`expected_snr` is ``snr`` on top of ``science_base``."""
    lo, hi = 0.0, 1e9
    for _ in range(80):
        mid = (lo + hi) / 2
        got = expected_snr(config, band, exp_time, snaps, psf, mid, science_base + mid, throughput)
        lo, hi = (mid, hi) if got < snr else (lo, mid)
    return (lo + hi) / 2
