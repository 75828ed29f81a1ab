"""Built-in Python payloads for rehearsals and fault injection (``kind: python``)."""

from __future__ import annotations

import os
import time
from typing import Any

from prompt.pilot.payloads import JobContext, PayloadFailed


def flaky(ctx: JobContext) -> dict[str, Any]:
    """Sleep ``sleep_s``, then fail on the attempts listed in ``fail_attempts`` (or on every
    attempt for the detectors in ``fail_detectors``); ``crash_attempts`` kills the worker."""
    p = ctx.params
    time.sleep(float(p.get("sleep_s", 0.0)))
    if ctx.attempt in p.get("crash_attempts", []):
        os._exit(70)
    if ctx.attempt in p.get("fail_attempts", []) or ctx.fields["detector"] in p.get(
        "fail_detectors", []
    ):
        raise PayloadFailed(f"injected failure on attempt {ctx.attempt}")
    return {"counts": {"attempt": ctx.attempt}, "stages": {"sleep": float(p.get("sleep_s", 0))}}
