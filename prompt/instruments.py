"""Instrument facts the code must match: detector numbering and raw naming (see rubin.md)."""

from __future__ import annotations

from typing import Final

LSSTCAM_SCIENCE_RAFTS: Final = [
    "R01",
    "R02",
    "R03",
    "R10",
    "R11",
    "R12",
    "R13",
    "R14",
    "R20",
    "R21",
    "R22",
    "R23",
    "R24",
    "R30",
    "R31",
    "R32",
    "R33",
    "R34",
    "R41",
    "R42",
    "R43",
]
LSSTCAM_SENSORS: Final = ["S00", "S01", "S02", "S10", "S11", "S12", "S20", "S21", "S22"]
LSSTCAM_CORNER_RAFTS: Final = ("R00", "R04", "R40", "R44")
LSSTCAM_CORNER_SENSORS: Final = ("SG0", "SG1", "SW0", "SW1")

OBS_ID_PREFIXES: Final = {"MC": "LSSTCam", "CC": "LSSTComCam", "AT": "LATISS"}

_LSSTCAM: dict[str, int] = {}
for _r, _raft in enumerate(LSSTCAM_SCIENCE_RAFTS):
    for _s, _sensor in enumerate(LSSTCAM_SENSORS):
        _LSSTCAM[f"{_raft}_{_sensor}"] = 9 * _r + _s
for _r, _raft in enumerate(LSSTCAM_CORNER_RAFTS):
    for _s, _sensor in enumerate(LSSTCAM_CORNER_SENSORS):
        _LSSTCAM[f"{_raft}_{_sensor}"] = 189 + 4 * _r + _s
_LSSTCAM_NAMES = {v: k for k, v in _LSSTCAM.items()}
_COMCAM = {f"R22_{s}": i for i, s in enumerate(LSSTCAM_SENSORS)}


def detector_number(instrument: str, raft_sensor: str) -> int | None:
    """Detector id for a ``RNN_SNN`` name, or None if the instrument has no such detector."""
    if instrument == "LSSTCam":
        return _LSSTCAM.get(raft_sensor)
    if instrument == "LSSTComCam":
        return _COMCAM.get(raft_sensor)
    if instrument == "LATISS":
        return 0 if raft_sensor.endswith("_S00") else None
    return None


def detector_name(instrument: str, detector: int) -> str:
    """``RNN_SNN`` name of a detector (LSSTCam), or the zero-padded number for others."""
    if instrument == "LSSTCam" and detector in _LSSTCAM_NAMES:
        return _LSSTCAM_NAMES[detector]
    return f"{detector:03d}"


def obs_id(instrument: str, day_obs: int, seq_num: int, controller: str = "O") -> str:
    """``MC_O_20250501_000001``-style exposure id."""
    prefix = {v: k for k, v in OBS_ID_PREFIXES.items()}.get(instrument, "XX")
    return f"{prefix}_{controller}_{day_obs}_{seq_num:06d}"


def raw_key(instrument: str, day_obs: int, seq_num: int, detector: int) -> str:
    """Object key of a raw: ``{instrument}/{day_obs}/{obs_id}/{obs_id}_{RNN_SNN}.fits``."""
    oid = obs_id(instrument, day_obs, seq_num)
    return f"{instrument}/{day_obs}/{oid}/{oid}_{detector_name(instrument, detector)}.fits"
