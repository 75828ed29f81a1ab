"""Time scales, defined once."""

from __future__ import annotations

from typing import Final

TAI_MINUS_UTC_S: Final = 37.0
"""TAI - UTC in seconds (leap seconds; 37 since 2017-01-01). SAL timestamps such as the
next-visit's ``startTime`` are TAI; the service's clocks are UTC (unix time)."""
MJD_UNIX_EPOCH: Final = 40587.0
"""The Modified Julian Date of 1970-01-01."""
