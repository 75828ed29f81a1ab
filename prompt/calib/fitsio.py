"""FITS images to and from bytes (astropy), the only image format the store holds."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy.io import fits


def write_image(data: np.ndarray, header: Mapping[str, Any] | None = None) -> bytes:
    hdu = fits.PrimaryHDU(np.ascontiguousarray(data))
    for key, value in (header or {}).items():
        hdu.header[key] = value
    out = io.BytesIO()
    hdu.writeto(out)
    return out.getvalue()


def read_image(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """(float32 array, header as a dict) of the primary HDU."""
    with fits.open(io.BytesIO(data), memmap=False) as hdul:
        hdu = hdul[0]
        array = np.asarray(hdu.data, dtype=np.float32)
        header = {k: v for k, v in hdu.header.items() if k not in ("COMMENT", "HISTORY", "")}
    return array, header
