"""One detector of one visit through the pipeline, on arrays: the part that is pure science,
kept apart from where the arrays come from (cache, store) and where alerts go."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prompt.pipeline.detect import DiaSource, detect
from prompt.pipeline.isr import Exposure, combine, isr
from prompt.pipeline.psfmatch import Matched, convolve_variance, match_template


@dataclass(frozen=True)
class Calibs:
    bias: np.ndarray
    dark: np.ndarray
    flat: np.ndarray
    gain: float
    read_noise_adu: float
    template: np.ndarray
    template_psf: float
    template_noise: float


@dataclass
class Result:
    science: Exposure
    matched: Matched
    difference: np.ndarray
    variance: np.ndarray
    psf_sigma: float
    sources: list[DiaSource]
    stages: dict[str, float] = field(default_factory=dict)


def process(
    raws: list[tuple[np.ndarray, float]], calibs: Calibs, *, threshold: float = 5.0,
    max_sources: int = 200,
) -> Result:  # fmt: skip
    """``raws``: (array, exposure time) per snap."""
    stages: dict[str, float] = {}
    t = time.perf_counter()
    science = combine([
        isr(raw, calibs.bias, calibs.dark, calibs.flat, exptime=exptime, gain=calibs.gain,
            read_noise_adu=calibs.read_noise_adu)
        for raw, exptime in raws
    ])  # fmt: skip
    t, stages["isr"] = _lap(t)
    matched = match_template(
        science.image, science.variance, calibs.template, calibs.template_noise
    )
    difference = science.image - matched.template
    variance = science.variance + np.float32(
        convolve_variance(calibs.template_noise**2, matched.kernel)
    )
    psf_sigma = math.sqrt(calibs.template_psf**2 + matched.kernel_sigma**2)
    t, stages["subtract"] = _lap(t)
    sources = detect(
        difference, variance, science.image, matched.template, psf_sigma=psf_sigma,
        threshold=threshold, max_sources=max_sources,
    )  # fmt: skip
    t, stages["detect"] = _lap(t)
    return Result(science, matched, difference, variance, psf_sigma, sources, stages)


def _lap(t: float) -> tuple[float, float]:
    now = time.perf_counter()
    return now, now - t


def describe(result: Result) -> dict[str, Any]:
    m = result.matched
    return {
        "psf_sigma": round(result.psf_sigma, 3), "kernel_sum": round(m.kernel_sum, 4),
        "background": round(m.background, 2), "stamps": m.stamps,
        "dia_sources": len(result.sources),
    }  # fmt: skip
