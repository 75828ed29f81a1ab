"""Object keys of calibrations, templates and truth tables in a data root (bucket-like).

Raws follow the observatory's naming (``prompt.instruments.raw_key``).
"""

from __future__ import annotations


def calib_key(instrument: str, calib_type: str, valid_from: int, detector: int, band: str) -> str:
    suffix = f"_{band}" if band else ""
    return f"calib/{instrument}/{calib_type}/{valid_from}/{detector:03d}{suffix}.fits"


def index_key(instrument: str) -> str:
    return f"calib/{instrument}/index.json"


def template_key(instrument: str, band: str, region: str, detector: int) -> str:
    return f"templates/{instrument}/{band}/{region}/{detector:03d}.fits"


def truth_key(instrument: str, day_obs: int, obs_id: str) -> str:
    return f"truth/{instrument}/{day_obs}/{obs_id}.csv"
