"""FFT convolution of an image with small kernels, sharing one transform of the image."""

from __future__ import annotations

import numpy as np


def kernel_fft(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """rfft2 of a (2r+1)^2 kernel placed with its centre at pixel (0, 0), wrapped."""
    padded = np.zeros(shape, np.float64)
    r = kernel.shape[0] // 2
    padded[: r + 1, : r + 1] = kernel[r:, r:]
    padded[: r + 1, -r:] = kernel[r:, :r]
    padded[-r:, : r + 1] = kernel[:r, r:]
    padded[-r:, -r:] = kernel[:r, :r]
    return np.fft.rfft2(padded)


def convolve(image_fft: np.ndarray, kfft: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Circular convolution; the caller ignores a border of the kernel's radius."""
    return np.fft.irfft2(image_fft * kfft, s=shape)
