"""Which calibration is valid when: an index of entries with validity ranges (day_obs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson


@dataclass(frozen=True)
class CalibEntry:
    calib_type: str
    detector: int
    band: str
    """Filter band for flats; empty for bias and dark."""
    valid_from: int
    valid_to: int
    """Inclusive day_obs range."""
    key: str


class CalibIndex:
    def __init__(self, entries: list[CalibEntry]) -> None:
        self.entries = entries
        self._by: dict[tuple[str, int, str], list[CalibEntry]] = {}
        for e in entries:
            self._by.setdefault((e.calib_type, e.detector, e.band), []).append(e)

    def find(self, calib_type: str, detector: int, band: str, day_obs: int) -> CalibEntry | None:
        """The newest entry valid on ``day_obs``, or None."""
        best = None
        for e in self._by.get((calib_type, detector, band), []):
            if e.valid_from <= day_obs <= e.valid_to and (
                best is None or e.valid_from > best.valid_from
            ):
                best = e
        return best

    def to_json(self) -> bytes:
        return orjson.dumps([asdict(e) for e in self.entries], option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> CalibIndex:
        return cls([CalibEntry(**item) for item in orjson.loads(data)])
