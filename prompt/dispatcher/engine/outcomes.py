"""Why a job attempt failed, as a type: whether a retry can help follows from the kind.

A pilot that vanished, a timeout, a crashed worker: the same job may well succeed elsewhere
or later. A payload that rejects its input, a calibration that does not exist, a job too large
to send: it fails the same way every time, so it fails at once with the reason. Metric labels,
completion records and logs all carry the kind.
"""

from __future__ import annotations

import enum


class FailureKind(enum.StrEnum):
    PILOT_LOST = "pilot_lost"
    TIMEOUT = "timeout"
    WORKER_CRASHED = "worker_crashed"
    PAYLOAD_ERROR = "payload_error"
    """The payload failed without saying why: retried, as it may be a passing condition."""
    DELIVERY_FAILED = "delivery_failed"
    """The pilot could not deliver the job's alerts."""
    CALIBRATION_UNAVAILABLE = "calibration_unavailable"
    """The calibration store did not answer."""
    REJECTED_INPUT = "rejected_input"
    MISSING_CALIBRATION = "missing_calibration"
    UNSENDABLE = "unsendable"
    """The job does not fit in a frame of the pilot channel."""

    @property
    def retriable(self) -> bool:
        return self not in _FINAL

    @classmethod
    def parse(cls, value: object) -> FailureKind:
        """A kind named by a pilot; anything unknown counts as a retriable payload error."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.PAYLOAD_ERROR


_FINAL = frozenset(
    {FailureKind.REJECTED_INPUT, FailureKind.MISSING_CALIBRATION, FailureKind.UNSENDABLE}
)
