"""``prompt pilot``: a warm pilot connected to the dispatcher."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import TYPE_CHECKING

import structlog

from prompt.cli.common import fail, run_service
from prompt.config import S3Settings, Settings

if TYPE_CHECKING:
    from prompt.pilot.alerts import AlertPublisher


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pilot", help="run a pilot: warm workers + calibration cache")
    p.add_argument("--dispatcher", default=None, help="HOST:PORT of the dispatcher's pilot channel")
    p.add_argument("--slots", type=int, default=2, help="jobs run at once (warm worker processes)")
    p.add_argument("--pilot-id", help="stable id (default host-pid)")
    p.add_argument("--label", action="append", default=[], help="capability label (repeatable)")
    p.add_argument("--cache-mb", type=float, default=2048, help="calibration cache size")
    p.add_argument(
        "--calib-root", help="calibration store, s3://bucket/prefix or file:///data (default "
        "PROMPT_CALIB_ROOT; "
        "unset: synthetic stand-in calibrations)",
    )  # fmt: skip
    p.add_argument("--calib-kb", type=float, default=64, help="synthetic calibration size")
    p.add_argument("--calib-load-ms", type=float, default=50, help="synthetic calib load time")
    p.add_argument("--heartbeat-s", type=float, default=1.0)
    p.add_argument(
        "--reconnect-max-s", type=float, default=5.0,
        help="longest pause between attempts to reach a dispatcher; keep it under the "
        "dispatcher's heartbeat timeout (PROMPT_HEARTBEAT_TIMEOUT_S), within which a new "
        "leader waits for the pilots that held jobs",
    )  # fmt: skip
    p.add_argument(
        "--drain-timeout-s", type=float, default=300.0,
        help="on SIGTERM, wait at most this long for running jobs and the acknowledgement of "
        "their results, then stop the workers and exit (the dispatcher retries what was left); "
        "keep it under the pod's terminationGracePeriodSeconds",
    )  # fmt: skip
    p.add_argument("--worker-nice", type=int, default=5, help="CPU niceness of workers vs pilot")
    p.add_argument(
        "--worker-lookahead-ms", type=float, default=20.0,
        help="when every worker is busy, queue a job in the pipe of the worker that frees first "
        "if the jobs before it there are expected to take at most this long (0: never)",
    )  # fmt: skip
    p.add_argument(
        "--started-notice-ms", type=float, default=20.0,
        help="send the dispatcher the started notices of a burst this long after its first "
        "(0: each at once); a job's notice always precedes its result",
    )  # fmt: skip
    p.add_argument("--poll-s", type=float, help="poll for work every N s (cold baseline only)")
    p.add_argument(
        "--warm-import", action="append", default=[], help="module workers import at start"
    )
    p.set_defaults(handler=run)


def _share_s3(settings: Settings) -> S3Settings | None:
    """The S3 server (``PROMPT_S3_*`` or the embedded stack's), also put in this process's
    environment: the worker processes, started later, inherit it and read ``s3://`` raws
    with it."""
    from prompt.s3 import s3_env
    from prompt.stack import resolve_s3

    s3 = resolve_s3(settings)
    if s3 is not None:
        os.environ.update(s3_env(s3))
    return s3


def run(args: argparse.Namespace, settings: Settings) -> int:
    from prompt.channel.tls import TLSConfigError, is_loopback, pilot_context
    from prompt.pilot import (
        CalibrationSource,
        Pilot,
        PilotConfig,
        PilotRefusedError,
        SyntheticCalibrations,
    )

    if settings.pilot_token is None:
        return fail(
            "PROMPT_PILOT_TOKEN (or PROMPT_PILOT_TOKEN_FILE) must be set (the dispatcher's "
            "shared token)"
        )
    try:
        ssl_context = pilot_context(settings)
    except TLSConfigError as exc:
        return fail(str(exc))
    dispatcher = args.dispatcher or f"{settings.pilot_host}:{settings.pilot_port}"
    extra = {"pilot_id": args.pilot_id} if args.pilot_id else {}
    config = PilotConfig(
        dispatcher=dispatcher,
        token=settings.pilot_token.get_secret_value(),
        ssl_context=ssl_context,
        tls_server_name=settings.pilot_tls_server_name,
        slots=args.slots,
        labels=tuple(args.label),
        heartbeat_s=args.heartbeat_s,
        reconnect_max_s=args.reconnect_max_s,
        drain_timeout_s=args.drain_timeout_s,
        cache_bytes=int(args.cache_mb * 1024 * 1024),
        warm_imports=tuple(args.warm_import),
        worker_nice=args.worker_nice,
        worker_lookahead_s=args.worker_lookahead_ms / 1000,
        started_notice_s=args.started_notice_ms / 1000,
        poll_s=args.poll_s,
        **extra,
    )
    calib_root = args.calib_root or settings.calib_root
    s3 = _share_s3(settings)
    source: CalibrationSource
    if calib_root:
        from prompt.calib.objectstore import ObjectStoreError, open_store
        from prompt.calib.source import StoreCalibrations

        try:
            source = StoreCalibrations(open_store(calib_root, s3))
        except ObjectStoreError as exc:
            return fail(str(exc))
    else:
        source = SyntheticCalibrations(
            nbytes=int(args.calib_kb * 1024), load_s=args.calib_load_ms / 1000
        )
    alerts = _alert_publisher(settings)
    if ssl_context is None and not all(is_loopback(h) for h, _ in config.addresses):
        structlog.get_logger(__name__).warning(
            "pilot channel is plain TCP to a non-loopback address: the token and jobs cross the "
            "network in clear; set PROMPT_PILOT_TLS_CA", dispatcher=dispatcher,
        )  # fmt: skip

    async def main(stop: asyncio.Event) -> None:
        from prompt.pilot.health import pilot_http

        pilot = Pilot(config, source, alerts)
        async with pilot_http(pilot, stop, settings.pilot_http_host, settings.pilot_http_port):
            await pilot.run(stop)

    try:
        return run_service(main)
    except PilotRefusedError as exc:
        return fail(f"pilot stopped: {exc}")


def _alert_publisher(settings: Settings) -> AlertPublisher | None:
    """The alert topic's producer, if this pilot knows a broker (else alert jobs fail)."""
    from prompt.pilot.alerts import alert_publisher
    from prompt.stack import StackNotRunningError, resolve_kafka_bootstrap

    try:
        bootstrap = resolve_kafka_bootstrap(settings)
    except StackNotRunningError:
        return None
    return alert_publisher(settings, bootstrap)
