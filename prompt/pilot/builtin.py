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


def hostile(ctx: JobContext) -> dict[str, Any]:
    """What a misbehaving payload returns, for fault tests: ``log_text`` ("{NUL}" in it is
    a NUL byte) repeated ``log_repeat`` times as its log, ``counts_n`` counts, and, with
    ``error_chars``, a failure whose message is that long (on the detectors in
    ``fail_detectors``, if given)."""
    p = ctx.params
    text = str(p.get("log_text", "")).replace("{NUL}", "\x00")
    log = text * max(1, int(p.get("log_repeat", 1)))
    targets = p.get("fail_detectors")
    if p.get("error_chars") and (targets is None or ctx.fields["detector"] in targets):
        raise PayloadFailed("E" * int(p["error_chars"]), log=log)
    counts = {f"c{i}": i for i in range(int(p.get("counts_n", 0)))}
    return {"log": log, "counts": counts}
