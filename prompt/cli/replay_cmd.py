"""``prompt replay``: rehearse a night (synthetic or imported) through the real service."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from prompt.cli.common import fail
from prompt.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="replay an observing night; latency report vs 60 s")
    src = p.add_argument_group("night")
    src.add_argument("--night", type=Path, help="visit table: CSV, OpSim .db or Parquet")
    src.add_argument("--columns", help="column overrides, e.g. start_mjd=mjd,band=filter")
    src.add_argument("--seed", type=int, default=0, help="synthetic night and fault seed")
    src.add_argument("--visits", type=int, help="replay this many visits")
    src.add_argument("--start", help="first visit: index, or ISO UTC time")
    run = p.add_argument_group("run")
    run.add_argument(
        "--speed", type=float, help="1 (real time) ... 50 (default 10; 20 with --soak)"
    )
    run.add_argument(
        "--soak", action="store_true",
        help="a long run for a nightly job: the trend check (latency p99, image lag, service "
        "memory: first tenth of the night vs last) must pass, else exit 4",
    )  # fmt: skip
    run.add_argument(
        "--image-partitions", type=int, default=16,
        help="partitions of the run's image-arrival topic (images keyed by visit)",
    )  # fmt: skip
    run.add_argument(
        "--max-driver-lag-s", type=float, default=1.0,
        help="validity: a visit whose events go out later than planned by more than this at "
        "p99 (night s) was sent late; more than 1%% of visits sent late, or any event over "
        "30 night s late, and the run is invalid (exit 3)",
    )  # fmt: skip
    run.add_argument(
        "--sample-s", type=float, default=2.0,
        help="wall seconds between samples of memory, CPU, lag and broker cost",
    )  # fmt: skip
    run.add_argument(
        "--payload", default="sleep", choices=["sleep", "alert"],
        help="sleep: a stand-in of --run-s; alert: the reference alert pipeline on generated data",
    )  # fmt: skip
    run.add_argument("--run-s", type=float, default=10.0, help="sleep payload run time (night s)")
    run.add_argument("--pilots", type=int, default=2)
    run.add_argument(
        "--slots", type=int, help="warm workers per pilot (default 96 for sleep, 4 for alert: "
        "its jobs are CPU-bound)",
    )  # fmt: skip
    run.add_argument("--data-root", type=Path, default=Path(".prompt/replay/data"),
                     help="alert payload: where the synthetic observatory writes")  # fmt: skip
    run.add_argument(
        "--avro-images", action="store_true",
        help="images as Avro image-arrival events naming file:// raws (calibrations from files) "
        "instead of the default: each raw PUT to S3, then its bucket notification",
    )  # fmt: skip
    run.add_argument("--detectors", default="0-188")
    run.add_argument(
        "--mode",
        choices=["warm", "cold", "both"],
        default="warm",
        help="cold: no resurrection/preload, polling pilots; both: side by side",
    )
    run.add_argument(
        "--dispatch-order", choices=["feasible", "fifo"], default="feasible",
        help="the dispatcher's order under overload (PROMPT_DISPATCH_ORDER): jobs that can "
        "still make their deadline first, or first come first served",
    )  # fmt: skip
    run.add_argument("--poll-s", type=float, default=2.0, help="cold pilots' poll period (night s)")
    faults = p.add_argument_group("faults")
    faults.add_argument("--missing-images", type=float, default=0.0)
    faults.add_argument("--duplicate-events", type=float, default=0.0)
    faults.add_argument("--late-images", type=float, default=0.0)
    faults.add_argument("--canceled-visits", type=float, default=0.0)
    faults.add_argument("--kill-pilots", type=int, default=0)
    faults.add_argument(
        "--capacity-drop", metavar="FRACTION@START-END",
        help="that fraction of the pilots killed for a window of night time after the start, "
        "then started again, e.g. 0.5@10m-15m; budget_met is reported by when images arrived",
    )  # fmt: skip
    faults.add_argument(
        "--chaos", action="store_true",
        help="seeded kill -9 of the leading dispatcher (of two), a pilot, PostgreSQL and the "
        "broker, each restarted; every recovery measured, failover must be <= 5 s (exit 5). "
        "Starts the embedded stack with the broker stored in S3",
    )  # fmt: skip
    faults.add_argument("--chaos-seed", type=int, help="the chaos schedule's seed (default --seed)")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the summary here")
    out.add_argument("--out", type=Path, help="report directory (default .prompt/replay/<time>)")
    out.add_argument(
        "--alerts-out", type=Path, help="alert payload: every alert message value, each as a "
        "4-byte big-endian length then the Confluent-framed bytes",
    )  # fmt: skip
    out.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=run_cmd)


def run_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from loadtest.capacity import parse_capacity_drop
    from loadtest.chaos import ChaosConfig
    from loadtest.checks import LagTolerance
    from loadtest.plan import Faults, Timing
    from loadtest.replay import ReplayConfig, run_replay
    from loadtest.report import write_report
    from loadtest.schedule import load_night, parse_columns, synthetic_night
    from loadtest.summary import summarize_replay, summary_lines
    from prompt.tasks.spec import Detectors

    speed = args.speed if args.speed is not None else (20.0 if args.soak else 10.0)
    if not 1 <= speed <= 50:
        return fail("--speed must be between 1 and 50")
    if args.image_partitions < 1 or args.max_driver_lag_s <= 0 or args.sample_s <= 0:
        return fail("--image-partitions, --max-driver-lag-s and --sample-s must be positive")
    if args.alerts_out and args.payload != "alert":
        return fail("--alerts-out needs --payload alert")
    slots = args.slots or (4 if args.payload == "alert" else 96)
    try:
        night = (
            load_night(args.night, parse_columns(args.columns))
            if args.night
            else synthetic_night(args.seed)
        ).select(args.visits, args.start)
        detectors = tuple(Detectors(include=args.detectors).resolve())
        drop = parse_capacity_drop(args.capacity_drop) if args.capacity_drop else None
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    if drop is not None and args.pilots < 2:
        return fail("--capacity-drop needs --pilots 2 or more (one always stays)")
    if args.chaos:  # the broker is killed: it must keep its topics (see docs)
        settings = settings.with_overrides(broker_storage="s3")
    chaos_seed = args.chaos_seed if args.chaos_seed is not None else args.seed
    out_dir = args.out or Path(".prompt/replay") / time.strftime("%Y%m%d-%H%M%S")
    modes = ["warm", "cold"] if args.mode == "both" else [args.mode]
    summaries: dict[str, dict[str, Any]] = {}
    for mode in modes:
        config = ReplayConfig(
            timing=Timing(speed=speed),
            faults=Faults(
                missing_images=args.missing_images, duplicate_events=args.duplicate_events,
                late_images=args.late_images, canceled_visits=args.canceled_visits,
                kill_pilots=args.kill_pilots, capacity_drop=drop,
            ),
            detectors=detectors, mode=mode, pilots=args.pilots, slots=slots,
            payload=args.payload, run_mean_s=args.run_s, poll_s=args.poll_s, seed=args.seed,
            log_dir=out_dir / "logs", data_root=args.data_root, quiet=args.quiet,
            image_partitions=args.image_partitions, sample_s=args.sample_s,
            lag_tolerance=LagTolerance(p99_s=args.max_driver_lag_s),
            chaos=ChaosConfig(seed=chaos_seed) if args.chaos else None,
            images="avro" if args.avro_images else "s3", dispatch_order=args.dispatch_order,
        )  # fmt: skip
        print(f"replaying {len(night.visits)} visits x {len(detectors)} detectors "
              f"({mode}, {speed}x) ...", flush=True)  # fmt: skip
        try:
            result = asyncio.run(run_replay(settings, night, config))
        except ValueError as exc:
            return fail(str(exc))
        summary = summarize_replay(result)
        if result.storage:
            summary["storage"] = result.storage
        report = write_report(result, summary, out_dir / mode if len(modes) > 1 else out_dir)
        summaries[mode] = summary
        print("\n".join(summary_lines(summary)))
        if result.storage:
            print("storage: " + "  ".join(f"{k} {v}" for k, v in result.storage.items()))
        if args.alerts_out:
            from loadtest.science import write_length_prefixed

            path = args.alerts_out if len(modes) == 1 else args.alerts_out.with_suffix(f".{mode}")
            count = write_length_prefixed(path, result.alerts)
            print(f"alerts: {count} written to {path}")
        print(f"report: file://{report.resolve()}\n", flush=True)
    if len(modes) > 1:
        _side_by_side(summaries)
    if args.json:
        doc = summaries[modes[0]] if len(modes) == 1 else summaries
        args.json.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return exit_code(list(summaries.values()), soak=args.soak)


def exit_code(summaries: list[dict[str, Any]], *, soak: bool) -> int:
    """3: a run is invalid (the harness fell behind its schedule: nothing else is judged);
    1: jobs lost, duplicated or with a wrong status; 5: chaos and a fault not recovered, or
    failover over its limit; 4: soak and the trend check failed."""
    if any(s.get("valid") is False for s in summaries):
        return 3
    if any(s["lost"] or s["duplicates"] or s["wrong_status"] for s in summaries):
        return 1
    if any(s.get("chaos_ok") is False for s in summaries):
        return 5
    if soak and any(not s["trend"]["ok"] for s in summaries):
        return 4
    return 0


def _side_by_side(summaries: dict[str, dict[str, Any]]) -> None:
    warm, cold = summaries["warm"], summaries["cold"]
    rows = [
        ("budget_met", warm["budget_met"], cold["budget_met"]),
        ("latency p50 (night s)", warm["latency_s"]["p50"], cold["latency_s"]["p50"]),
        ("latency p99 (night s)", warm["latency_s"]["p99"], cold["latency_s"]["p99"]),
        ("overhead p50 (wall ms)", warm["overhead_ms"]["p50"], cold["overhead_ms"]["p50"]),
        ("overhead p99 (wall ms)", warm["overhead_ms"]["p99"], cold["overhead_ms"]["p99"]),
        ("late", warm["late"], cold["late"]),
        ("cache_hit_rate", warm["cache_hit_rate"], cold["cache_hit_rate"]),
    ]
    print(f"{'':26}{'warm':>14}{'cold':>14}")
    for name, a, b in rows:
        print(f"{name:26}{a!s:>14}{b!s:>14}")
