"""Pilots: warm worker processes with a calibration cache, fed over one connection."""

from prompt.pilot.agent import Pilot
from prompt.pilot.cache import CacheKey, CalibrationCache
from prompt.pilot.calibrations import CalibrationSource, SyntheticCalibrations
from prompt.pilot.config import PilotConfig
from prompt.pilot.connect import PilotRefusedError

__all__ = [
    "CacheKey",
    "CalibrationCache",
    "CalibrationSource",
    "Pilot",
    "PilotConfig",
    "PilotRefusedError",
    "SyntheticCalibrations",
]
