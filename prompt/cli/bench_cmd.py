"""``prompt bench dispatch``, ``pipeline``, ``alerts``, ``broker`` and ``s3``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import orjson

from prompt.cli.common import print_json
from prompt.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmarks that print numbers")
    kinds = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    d = kinds.add_parser(
        "dispatch", help="image burst -> jobs started, on the embedded stack with real pilots"
    )
    d.add_argument("--visits", type=int, default=20)
    d.add_argument("--detectors", type=int, default=189)
    d.add_argument("--pilots", type=int, default=2, help="pilot processes")
    d.add_argument("--slots", type=int, default=96, help="warm workers per pilot")
    d.add_argument("--sleep-s", type=float, default=0.1, help="sleep payload duration")
    d.add_argument("--warmup", type=int, default=1, help="untimed visits first (reported apart)")
    d.add_argument(
        "--lead-s", type=float, default=0.3,
        help="images no sooner than this after their next-visit (20 s or more at the summit)",
    )  # fmt: skip
    d.add_argument(
        "--floor", action="store_true",
        help="then a bare uvloop push of the same bursts to pilots x slots warm processes: "
        "the floor, and prompt's burst p50 as a multiple of it",
    )  # fmt: skip
    d.add_argument(
        "--cpu", action="store_true",
        help="also the CPU of each process (dispatcher, pilots, workers, database, broker, S3, "
        "the bench) in the 60 ms from each burst's images (Linux /proc schedstat)",
    )  # fmt: skip
    d.add_argument(
        "--pilot-arg", action="append", default=[], metavar="ARG",
        help="passed to every `prompt pilot` (repeatable; e.g. --pilot-arg=--worker-lookahead-ms "
        "--pilot-arg=0 to measure without queueing jobs in busy workers)",
    )  # fmt: skip
    d.add_argument("--json", type=Path, help="also write the result here")
    d.add_argument("--logs", type=Path, default=Path(".prompt/bench-logs"))
    it = kinds.add_parser(
        "intake", help="the dispatcher's CPU per image-arrival, in process (no broker, no pilots)"
    )
    it.add_argument("--bursts", type=int, default=300, help="timed bursts (after 30 untimed)")
    it.add_argument("--detectors", type=int, default=189)
    it.add_argument("--json", type=Path, help="also write the result here")
    pl = kinds.add_parser(
        "pipeline", help="the alert pipeline alone on generated data: ms per detector by stage"
    )
    pl.add_argument("--detectors", type=int, default=189)
    pl.add_argument("--data-root", type=Path, default=Path(".prompt/bench-data"))
    pl.add_argument("--json", type=Path, help="also write the result here")
    al = kinds.add_parser(
        "alerts", help="the pilot's alert producer: aiokafka vs confluent-kafka, same broker"
    )
    al.add_argument("--alert-kb", type=float, default=25.0, help="size of one alert")
    al.add_argument(
        "--batches", default="5,20,50", help="alerts per job, comma-separated (job latency)"
    )
    al.add_argument("--jobs", type=int, default=40, help="sequential jobs per batch and round")
    al.add_argument("--burst-jobs", type=int, default=96, help="jobs publishing at once")
    al.add_argument("--burst-alerts", type=int, default=20, help="alerts per job in a burst")
    al.add_argument("--rounds", type=int, default=3, help="rounds, implementations alternating")
    al.add_argument("--json", type=Path, help="also write the result here")
    b = kinds.add_parser(
        "broker", help="the embedded broker with memory vs S3 storage: produce, consume, fetch cost"
    )
    b.add_argument("--storage", nargs="+", choices=["memory", "s3"], default=["memory", "s3"])
    b.add_argument("--produce", type=int, default=300, help="sequential acknowledged produces")
    b.add_argument("--e2e", type=int, default=200, help="produce -> consume samples")
    b.add_argument("--bursts", type=int, default=10, help="189-record bursts")
    b.add_argument(
        "--fill", default="0,250,500,1000,4000,20000", help="batches in the partition, fetch cost"
    )
    b.add_argument("--idle-s", type=float, default=3.0)
    b.add_argument("--work-dir", type=Path, default=Path(".prompt/bench-broker"))
    b.add_argument("--json", type=Path, help="also write the result here")
    s3 = kinds.add_parser(
        "s3", help="S3 client candidates on SeaweedFS: calibration GETs, 4 at once, header ranges"
    )
    s3.add_argument("--repeat", type=int, default=50, help="samples per access pattern")
    s3.add_argument("--puts", type=int, default=2000, help="header-only PUTs, 32 at once")
    s3.add_argument("--json", type=Path, help="also write the result here")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.bench == "pipeline":
        return _pipeline(args)
    if args.bench == "intake":
        from prompt.bench.intake import IntakeShape, measure_intake

        return _report(measure_intake(IntakeShape(args.bursts, args.detectors)), args.json)
    if args.bench == "alerts":
        return _alerts(args, settings)
    if args.bench == "broker":
        return _broker(args, settings)
    if args.bench == "s3":
        from prompt.bench.s3 import run_s3_bench

        own = None if settings.s3.endpoint_url is None else settings.s3
        return _report(asyncio.run(run_s3_bench(own, args.repeat, args.puts)), args.json)
    from prompt.bench.dispatch import BenchShape, run_bench

    shape = BenchShape(
        visits=args.visits, detectors=args.detectors, pilots=args.pilots, slots=args.slots,
        sleep_s=args.sleep_s, warmup=args.warmup, pilot_args=tuple(args.pilot_arg),
        lead_s=args.lead_s, cpu_window_s=0.06 if args.cpu else 0.0,
    )  # fmt: skip
    if shape.pilots * shape.slots < shape.detectors:
        print(
            f"note: {shape.pilots}x{shape.slots} slots < {shape.detectors} detectors: "
            "dispatch_ms will include waiting for a free slot"
        )
    if args.cpu:
        from prompt.bench.cpu import available

        if not available():
            raise SystemExit("--cpu reads /proc/<pid>/task/<tid>/schedstat: Linux only")
    result = asyncio.run(run_bench(settings, shape, args.logs))
    if args.floor:  # after prompt's processes are gone: the two never share the cores
        from prompt.bench.floor import FloorShape, floor_line, measure_floor, with_floor

        floor = FloorShape(
            processes=shape.pilots * shape.slots, jobs=shape.detectors, bursts=shape.visits,
            warmup=shape.warmup, cpu_window_s=shape.cpu_window_s,
        )  # fmt: skip
        result = with_floor(result, measure_floor(floor))
        # The dispatcher's own CPU for the same bursts, measured next to the floor: the part
        # of prompt's burst that no scheduling, pilot or worker can take away.
        from prompt.bench.intake import IntakeShape, intake_line, measure_intake

        intake = measure_intake(IntakeShape(bursts=100, detectors=shape.detectors))
        result = {**result, "intake": intake}
    print_json(result)
    if args.floor:
        print(floor_line(result))
        print(intake_line(result))
    if "cpu" in result:
        from prompt.bench.cpu import cpu_line
        from prompt.bench.floor import ratio

        print(cpu_line(result["cpu"]))
        if "cpu" in result.get("floor", {}):
            floor_cpu = result["floor"]["cpu"]
            print(cpu_line(floor_cpu, "each floor burst's t0"))
            times = ratio(result["cpu"]["total_ms"]["p50"], floor_cpu["total_ms"]["p50"])
            if times is not None:
                print(f"prompt's CPU per burst = {times:.2f} x the floor's")
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    ok = result["lost"] == 0 and result["duplicates"] == 0
    return 0 if ok else 1


def _pipeline(args: argparse.Namespace) -> int:
    from prompt.bench.pipeline import run_pipeline_bench

    return _report(run_pipeline_bench(args.data_root, args.detectors), args.json)


def _report(result: dict[str, Any], path: Path | None) -> int:
    print_json(result)
    if path:
        path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    from prompt.bench.alerts import AlertBenchShape, run_alert_bench

    shape = AlertBenchShape(
        alert_kb=args.alert_kb, batches=tuple(int(b) for b in args.batches.split(",")),
        jobs=args.jobs, burst_jobs=args.burst_jobs, burst_alerts=args.burst_alerts,
        rounds=args.rounds,
    )  # fmt: skip
    return _report(asyncio.run(run_alert_bench(settings, shape)), args.json)


def _broker(args: argparse.Namespace, settings: Settings) -> int:
    from prompt.bench.broker import BrokerBenchShape, run_broker_bench

    shape = BrokerBenchShape(
        produce=args.produce, e2e=args.e2e, bursts=args.bursts, idle_s=args.idle_s,
        fill=tuple(int(n) for n in args.fill.split(",")),
    )  # fmt: skip
    return _report(
        asyncio.run(run_broker_bench(settings, args.storage, shape, args.work_dir)), args.json
    )
