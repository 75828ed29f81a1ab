"""PSF matching by the Alard & Lupton (1998) method, spatially constant kernel.

The kernel that turns the (sharper) template into the science image's PSF is fitted as a linear
combination of Gaussians times polynomials, plus a differential background, by weighted least
squares on stamps around the template's bright stars. The matched template is that combination
of the template convolved with each basis function.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from prompt.pipeline.convolve import kernel_fft

KERNEL_RADIUS = 7
BASIS = ((0.7, 4), (1.5, 3), (3.0, 2))
"""(Gaussian sigma in pixels, polynomial degree), the classic A&L choice scaled to our PSFs."""
STAMP_RADIUS = 10
MAX_STAMPS = 25
_BOX = 2 * (STAMP_RADIUS + KERNEL_RADIUS) + 2
"""Side of the box a stamp is convolved in: the stamp plus the kernel radius on each side."""


class PsfMatchError(RuntimeError):
    """The kernel could not be fitted (no usable stars, singular system)."""


@dataclass(frozen=True)
class Matched:
    template: np.ndarray
    """Template convolved with the kernel, plus the differential background."""
    kernel: np.ndarray
    background: float
    kernel_sum: float
    """Photometric scale science/template."""
    kernel_sigma: float
    """RMS width of the kernel (pixels): sigma_science^2 = sigma_template^2 + this^2."""
    stamps: int


@cache
def _basis(radius: int = KERNEL_RADIUS) -> np.ndarray:
    u = np.arange(-radius, radius + 1, dtype=np.float64)
    uu, vv = np.meshgrid(u, u)
    out: list[np.ndarray] = []
    for sigma, degree in BASIS:
        g = np.exp(-(uu * uu + vv * vv) / (2 * sigma * sigma))
        g /= g.sum()
        for i in range(degree + 1):
            for j in range(degree + 1 - i):
                term = g * (uu / radius) ** i * (vv / radius) ** j
                # as in A&L: only the first function carries flux, the rest integrate to zero
                if out and (i, j) == (0, 0):
                    term = term - out[0] * term.sum()
                out.append(term)
    return np.array(out)


@cache
def _basis_fft(shape: tuple[int, int]) -> np.ndarray:
    return np.array([kernel_fft(b, shape) for b in _basis()])


def _stamp_centres(template: np.ndarray, noise: float) -> list[tuple[int, int]]:
    """Bright, isolated template peaks away from the edges, brightest first."""
    n = template.shape[0]
    edge = KERNEL_RADIUS + STAMP_RADIUS + 1
    inner = template[edge:-edge, edge:-edge]
    peak = np.ones(inner.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx or dy:
                peak &= inner > template[edge + dy : n - edge + dy, edge + dx : n - edge + dx]
    ys, xs = np.nonzero(peak & (inner > 50 * noise))
    order = np.argsort(inner[ys, xs])[::-1]
    chosen: list[tuple[int, int]] = []
    for k in order:
        y, x = int(ys[k]) + edge, int(xs[k]) + edge
        if all(abs(y - cy) > STAMP_RADIUS or abs(x - cx) > STAMP_RADIUS for cy, cx in chosen):
            chosen.append((y, x))
        if len(chosen) == MAX_STAMPS:
            break
    return chosen


def match_template(
    science: np.ndarray, variance: np.ndarray, template: np.ndarray, template_noise: float
) -> Matched:
    shape = (science.shape[0], science.shape[1])
    centres = _stamp_centres(template, template_noise)
    if len(centres) < 3:
        raise PsfMatchError(f"only {len(centres)} template stars bright enough to fit a kernel")
    # Each stamp is convolved with every basis function in a small box (stamp + kernel radius
    # on each side), not the whole image: the fit needs the stamp pixels only.
    r, k = STAMP_RADIUS, KERNEL_RADIUS
    h = r + k
    box = _BOX
    boxes = np.stack([template[y - h : y - h + box, x - h : x - h + box] for y, x in centres])
    bfft = _basis_fft((box, box))
    conv = np.fft.irfft2(np.fft.rfft2(boxes)[:, None] * bfft[None], s=(box, box))
    inner = conv[:, :, k : k + 2 * r + 1, k : k + 2 * r + 1]  # (stamps, basis, 2r+1, 2r+1)
    a = inner.transpose(0, 2, 3, 1).reshape(-1, inner.shape[1])
    a = np.hstack([a, np.ones((a.shape[0], 1))])
    b = np.concatenate([science[y - r : y + r + 1, x - r : x + r + 1].ravel() for y, x in centres])
    var = np.concatenate(
        [variance[y - r : y + r + 1, x - r : x + r + 1].ravel() for y, x in centres]
    )
    w = 1.0 / (var.astype(np.float64) + template_noise**2)
    aw = a * w[:, None]
    try:
        coeffs = np.linalg.solve(aw.T @ a, aw.T @ b)
    except np.linalg.LinAlgError as exc:
        raise PsfMatchError(f"kernel fit failed: {exc}") from exc
    if not np.all(np.isfinite(coeffs)):
        raise PsfMatchError("kernel fit did not converge")
    kernel = np.tensordot(coeffs[:-1], _basis(), axes=1)
    matched = np.fft.irfft2(np.fft.rfft2(template) * kernel_fft(kernel, shape), s=shape)
    matched += coeffs[-1]
    total = float(kernel.sum())
    u = np.arange(-KERNEL_RADIUS, KERNEL_RADIUS + 1)
    uu, vv = np.meshgrid(u, u)
    second = float((kernel * (uu * uu + vv * vv)).sum() / (2 * total)) if total > 0 else 0.0
    return Matched(
        matched.astype(np.float32), kernel, float(coeffs[-1]), total,
        float(np.sqrt(max(second, 0.0))), len(centres),
    )  # fmt: skip


def convolve_variance(variance: float, kernel: np.ndarray) -> float:
    """Per-pixel variance of white noise after convolution with ``kernel``."""
    return float(variance * (kernel * kernel).sum())


def warm_psfmatch() -> None:
    _basis_fft((_BOX, _BOX))
