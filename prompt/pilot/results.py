"""A job's result as the pilot reports it: always one frame, failures with their kind."""

from __future__ import annotations

import time
from typing import Any

from prompt.bounds import bound_log
from prompt.calib.errors import MissingCalibrationError
from prompt.calib.objectstore import ObjectNotFoundError
from prompt.channel import protocol as p
from prompt.channel.messages import FailureKindName, job_result
from prompt.channel.protocol import FrameTooLargeError, Message


def fitting(finished: Message) -> Message:
    """A result that fits in one frame: its log cut first, then, if it still does not fit,
    replaced by a failure saying so (a frame the dispatcher refuses would be lost)."""
    try:
        p.encode(finished)
        return finished
    except FrameTooLargeError as exc:
        cut = {**finished, "log": bound_log(finished.get("log", ""))[-4096:]}
        try:
            p.encode(cut)
            return cut
        except FrameTooLargeError:
            now = time.time()
            failed = failure(f"the job's result cannot be reported: {exc}", "payload_error")
            return {**finished, **failed, "started": finished.get("started", now)}


def failure(error: str, kind: FailureKindName) -> dict[str, Any]:
    return dict(job_result(started=time.time(), error=error, failure=kind))


def calib_failure(exc: BaseException) -> FailureKindName:
    """A calibration that does not exist will not appear on a retry; a store that did not
    answer may answer next time."""
    if isinstance(exc, MissingCalibrationError | ObjectNotFoundError | KeyError | ValueError):
        return "missing_calibration"
    return "calibration_unavailable"
