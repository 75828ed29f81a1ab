"""What a replay achieved, judged against what was sent."""

from __future__ import annotations

from collections import Counter
from typing import Any

from loadtest.capacity import PHASES, image_phases
from loadtest.chaos import FAILOVER_LIMIT_S, SETTLE_S, failover_s
from loadtest.checks import TrendLimits, driver_lag_by_visit, tenths, trend, validity
from loadtest.plan import relaxed_for_faults
from loadtest.replay import ReplayResult
from loadtest.science import evaluate
from prompt.stats import percentile, summarize

BUDGET_S = 60.0
STATUSES = ("finished", "failed", "late", "expired", "canceled")


def _by_key(result: ReplayResult) -> dict[tuple[int, int], list[dict[str, Any]]]:
    index_of = {g: i for i, g in result.group_of.items()}
    out: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in result.records:
        vi = index_of.get(r["groupId"])
        if vi is not None:
            out.setdefault((vi, r["detector"]), []).append(r)
    return out


def stage_ms(r: dict[str, Any]) -> dict[str, float]:
    """Wall milliseconds per stage of one completed job (not scaled by speed)."""
    stages: dict[str, float] = {}

    def span(name: str, a: str, b: str) -> None:
        if r.get(a) is not None and r.get(b) is not None:
            stages[name] = (r[b] - r[a]) * 1e3

    span("preload (before image)", "nextVisitReceived", "preloaded")
    span("queue (image -> consumed)", "imageArrived", "imageConsumed")
    span("dispatch (consumed -> started)", "imageConsumed", "started")
    span("run (payload)", "started", "finished")
    span("publish (finished -> completed)", "finished", "completed")
    return stages


def summarize_replay(result: ReplayResult) -> dict[str, Any]:
    speed = result.config.timing.speed
    plan = result.plan
    by_key = _by_key(result)
    statuses = Counter(r["status"] for r in result.records)
    windows = [(f.wall_s, f.wall_s + (f.recovery_s or 0.0)) for f in result.faults]
    if result.capacity is not None:
        windows.append(result.capacity.window)
    expected, relaxed = relaxed_for_faults(plan, windows, speed)
    lost = [k for k in plan.expected if k not in by_key]
    duplicates = sum(len(v) - 1 for v in by_key.values())
    wrong = sorted(
        (k, v[0]["status"]) for k, v in by_key.items() if v[0]["status"] not in expected[k]
    )
    delivered = [k for k in plan.expected if k[0] not in plan.canceled and k not in plan.missing]
    ran = [r for r in result.records if r["latencySeconds"] is not None]
    overhead = [(r["started"] - r["imageArrived"]) * 1e3 for r in ran if r["started"]]
    dispatch = [r["dispatchMs"] for r in ran if r["dispatchMs"] is not None]
    stage_totals: dict[str, list[float]] = {}
    for r in ran:
        for name, ms in stage_ms(r).items():
            stage_totals.setdefault(name, []).append(ms)
    hits = [r["cacheHit"] for r in ran if r["cacheHit"] is not None]
    return {
        "night": result.night.source,
        "mode": result.config.mode,
        "dispatch_order": result.config.dispatch_order,
        "speed": speed,
        "visits": len(result.night.visits),
        "jobs": plan.jobs,
        **{s: statuses.get(s, 0) for s in STATUSES},
        "lost": len(lost),
        "duplicates": duplicates,
        "wrong_status": len(wrong),
        "wrong_status_examples": [f"visit {k[0]} detector {k[1]}: {s}" for k, s in wrong[:10]],
        "budget_met": budget_met(delivered, by_key, speed),
        "latency_s": summarize([r["latencySeconds"] * speed for r in ran], 2),
        "overhead_ms": summarize(overhead, 1),
        "dispatch_ms": summarize(dispatch, 2),
        "stage_ms_mean": {k: round(sum(v) / len(v), 2) for k, v in stage_totals.items()},
        "cache_hit_rate": round(sum(hits) / len(hits), 3) if hits else None,
        "faults": {
            "canceled_visits": len(plan.canceled),
            "missing_images": len(plan.missing),
            "late_images": len(plan.late),
            "pilots_killed": len(result.kills),
        },
        "pilots": len(result.pilot_slots),
        "slots_per_pilot": result.config.slots,
        "wall_s": round(result.finished_wall - result.started_wall, 1),
        **_over_the_night(result),
        "units": "latency_s, driver_lag_s: night seconds (wall x speed); overhead_ms, "
        "dispatch_ms, stage_ms_mean, produce_ms, broker_fetch_ms: real wall milliseconds",
        **(_science(result) if result.config.payload == "alert" else {}),
        **(_chaos(result, relaxed) if result.config.chaos is not None else {}),
        **(_capacity(result, delivered, by_key) if result.capacity is not None else {}),
    }


def budget_met(
    keys: list[tuple[int, int]], by_key: dict[tuple[int, int], list[dict[str, Any]]], speed: float
) -> float | None:
    """The fraction of ``keys`` (delivered jobs) that finished (or ran late) within the budget
    of their image's arrival; None for no keys."""
    within = sum(
        1
        for k in keys
        if k in by_key
        and by_key[k][0]["latencySeconds"] is not None
        and by_key[k][0]["status"] in ("finished", "late")
        and by_key[k][0]["latencySeconds"] * speed <= BUDGET_S
    )
    return round(within / len(keys), 5) if keys else None


def _capacity(
    result: ReplayResult,
    delivered: list[tuple[int, int]],
    by_key: dict[tuple[int, int], list[dict[str, Any]]],
) -> dict[str, Any]:
    """The capacity cut's window and budget_met by when each visit's images arrived."""
    assert result.capacity is not None
    speed = result.config.timing.speed
    phase = image_phases(result.plan, result.capacity.window)
    by_phase = {
        p: budget_met([k for k in delivered if phase.get(k[0]) == p], by_key, speed) for p in PHASES
    }
    later = [k for k in delivered if phase.get(k[0]) in ("during", "after")]
    return {
        "capacity_drop": {
            **result.capacity.as_dict(),
            "visits_by_phase": {p: sum(1 for v in phase.values() if v == p) for p in PHASES},
            "budget_met_by_phase": by_phase,
            "budget_met_during_or_after": budget_met(later, by_key, speed),
            "events_excused_from_driver_lag": len(result.excused_lags),
        }
    }


def _chaos(result: ReplayResult, relaxed: set[tuple[int, int]]) -> dict[str, Any]:
    """Every fault injected and its recovery; what the faults excused."""
    faults = result.faults
    failover = failover_s(faults)
    kinds = {f.kind for f in faults}
    problems = [f"{f.kind} at {f.wall_s:.1f} s: {f.error}" for f in faults if f.error]
    problems += [f"no {k} fault was injected" for k in ("dispatcher", "pilot", "postgres",
                                                         "broker") if k not in kinds]  # fmt: skip
    if result.double_ready:
        problems.append(f"{result.double_ready} looks found two dispatchers ready at once")
    if failover is not None and failover > FAILOVER_LIMIT_S:
        problems.append(f"failover {failover} s over {FAILOVER_LIMIT_S} s")
    excused = [max(0.0, lag) * result.config.timing.speed for _, lag in result.excused_lags]
    return {
        "chaos_faults": [f.as_dict() for f in faults],
        "failover_s": failover,
        "failover_limit_s": FAILOVER_LIMIT_S,
        "recovery_s_by_kind": {
            k: [f.recovery_s for f in faults if f.kind == k] for k in sorted(kinds)
        },
        "chaos_ok": not problems,
        "chaos_problems": problems,
        "double_ready_looks": result.double_ready,
        "jobs_relaxed": len(relaxed),
        "events_excused_from_driver_lag": len(excused),
        "excused_driver_lag_max_s": round(max(excused), 3) if excused else None,
        "slowest_jobs": _slowest(result),
    }


def _slowest(result: ReplayResult, count: int = 5) -> list[dict[str, Any]]:
    """The jobs that took longest from image arrival to completion, with their timeline
    (wall s after the replay's start), to place them against the faults."""
    t0 = result.started_wall
    index_of = {g: i for i, g in result.group_of.items()}
    ran = [r for r in result.records if r["imageArrived"] is not None and r["completed"]]
    ran.sort(key=lambda r: r["completed"] - r["imageArrived"], reverse=True)
    stamps = ("imageArrived", "imageConsumed", "dispatched", "started", "finished", "completed")
    return [
        {
            "visit": index_of.get(r["groupId"]), "detector": r["detector"], "job": r["jobId"],
            "status": r["status"], "attempt": r["attempt"], "pilot": r["pilot"],
            **{k: None if r[k] is None else round(r[k] - t0, 3) for k in stamps},
        }
        for r in ran[:count]
    ]  # fmt: skip


SERVICE_ROLES = ("dispatcher", "pilots")


def _over_the_night(result: ReplayResult) -> dict[str, Any]:
    """Whether the harness kept its schedule, and first tenth against last tenth of the night:
    latency, overhead, lag, memory, broker fetch cost; the sizes the broker ended with."""
    speed = result.config.timing.speed
    by_visit = driver_lag_by_visit(result.driver_lags, speed)
    check = validity(by_visit, result.config.lag_tolerance)
    all_lags = sorted(max(0.0, lag) * speed for _, lag in result.driver_lags)
    visit_start = {v.index: v.start for v in result.night.visits}
    starts = list(visit_start.values()) or [0.0]
    index_of = {g: i for i, g in result.group_of.items()}
    when_latency, when_overhead = [], []
    for r in result.records:
        vi = index_of.get(r["groupId"])
        if vi is None or r["latencySeconds"] is None:
            continue
        when_latency.append((visit_start[vi], r["latencySeconds"] * speed))
        if r["started"] and r["imageArrived"]:
            when_overhead.append((visit_start[vi], (r["started"] - r["imageArrived"]) * 1e3))
    lat = tenths(when_latency, min(starts), max(starts))
    ovh = tenths(when_overhead, min(starts), max(starts))
    samples = result.samples
    end = result.plan.end_wall

    def sampled(get: Any) -> tuple[list[float], list[float]]:
        pairs = [(x.t, v) for x in samples if (v := get(x)) is not None]
        return tenths(pairs, 0.0, end)

    def service_rss(x: Any) -> float | None:
        got = [x.rss_mib[r] for r in SERVICE_ROLES if r in x.rss_mib]
        return sum(got) if len(got) == len(SERVICE_ROLES) else None

    rss = {"service": sampled(service_rss)}
    for role in ("dispatcher", "pilots", "broker", "postgres"):
        rss[role] = sampled(lambda x, role=role: x.rss_mib.get(role))
    image_lag = sampled(lambda x: x.lag.get("image-arrival"))
    fetch = sampled(lambda x: x.fetch_ms)
    produce = tenths(result.produce_ms, 0.0, end)
    trend_check = trend(
        latency=lat, image_lag=image_lag, service_rss=rss["service"], limits=TrendLimits()
    )

    def firstlast(pair: tuple[list[float], list[float]], how: str) -> dict[str, float | None]:
        def one(v: list[float]) -> float | None:
            if not v:
                return None
            return round(percentile(sorted(v), 99) if how == "p99" else sum(v) / len(v), 2)

        return {"first": one(pair[0]), "last": one(pair[1])}

    return {
        "valid": check["valid"],
        "invalid_reasons": check["reasons"],
        "driver_lag_s": {
            **summarize(all_lags, 3),
            "tolerance_p99": check["tolerance_s"]["p99"],
            "tolerance_max": check["tolerance_s"]["max"],
            "late_visits_allowed": check["late_visit_fraction_allowed"],
            "late_visit_count": check["late_visit_count"],
            "late_visits": check["late_visits"],
        },
        "first_last_tenth": {
            "latency_p99_s": firstlast(lat, "p99"),
            "overhead_p99_ms": firstlast(ovh, "p99"),
            "image_lag_p99": firstlast(image_lag, "p99"),
            "broker_fetch_ms_mean": firstlast(fetch, "mean"),
            "produce_ms_p99": firstlast(produce, "p99"),
            **{f"rss_mib_{role}": firstlast(v, "mean") for role, v in rss.items()},
        },
        "trend": trend_check,
        "produce_ms": summarize([ms for _, ms in result.produce_ms], 2),
        "broker_fetch_ms": summarize([x.fetch_ms for x in samples if x.fetch_ms is not None], 2),
        "topic_batches": {
            f"{size.topic}[{size.partition}]": {"records": size.records, "batches": size.batches}
            for size in result.topic_sizes
        },
    }


def timeline(result: ReplayResult) -> dict[str, Any]:
    """The samples and the per-visit driver lag, for report.json (too long for the summary)."""
    by_visit = driver_lag_by_visit(result.driver_lags, result.config.timing.speed)
    return {
        "sample_s": result.config.sample_s,
        "samples": [x.as_dict() for x in result.samples],
        "driver_lag_by_visit": [{"visit": v, **s} for v, s in by_visit.items()],
    }


PIPELINE_STAGES = ("read", "isr", "subtract", "detect", "alerts", "publish")


def _science(result: ReplayResult) -> dict[str, Any]:
    """Alert payload: recall and spurious rate against the truth, alert validity, the
    pipeline's time per stage (ms per detector), and what each visit read from the store."""
    done = [r for r in result.records if r["status"] in ("finished", "late")]
    science = evaluate(result.alerts, result.truth, detector_visits=len(done))
    per_stage: dict[str, list[float]] = {}
    for r in done:
        for name, seconds in (r.get("stageSeconds") or {}).items():
            per_stage.setdefault(name, []).append(seconds * 1e3)
    order = [s for s in (*PIPELINE_STAGES, "preload") if s in per_stage]
    stage_table = {
        name: {"mean": round(sum(v) / len(v), 2), "p50": round(percentile(sorted(v), 50), 2),
               "p95": round(percentile(sorted(v), 95), 2)}
        for name in order
        for v in [per_stage[name]]
    }  # fmt: skip
    loads: dict[str, dict[str, Any]] = {}
    index_of = {g: i for i, g in result.group_of.items()}
    visits = {v.index: v for v in result.night.visits}
    for r in result.records:
        vi = index_of.get(r["groupId"])
        if vi is None:
            continue
        row = loads.setdefault(
            str(vi), {"filter": visits[vi].physical_filter, "calib_loads": 0, "template_loads": 0}
        )
        counts = r.get("counts") or {}
        row["calib_loads"] += counts.get("calib_loads", 0)
        row["template_loads"] += counts.get("template_loads", 0)
    return {
        "recall": science["recall"],
        "spurious_per_detector_visit": science["spurious_per_detector_visit"],
        "science": science,
        "pipeline_stage_ms": stage_table,
        "store_loads_by_visit": loads,
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lat, ovh = summary["latency_s"], summary["overhead_ms"]
    return [
        f"replay ({summary['mode']}, {summary['speed']}x, dispatch order "
        f"{summary['dispatch_order']}) of {summary['night']}",
        f"visits {summary['visits']}  jobs {summary['jobs']}  finished {summary['finished']}  "
        f"failed {summary['failed']}  late {summary['late']}  expired {summary['expired']}  "
        f"canceled {summary['canceled']}",
        f"lost {summary['lost']}  duplicates {summary['duplicates']}  "
        f"wrong status {summary['wrong_status']}  budget_met {summary['budget_met']}",
        f"end-to-end latency (night s)  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  "
        f"max {lat['max']}",
        f"service overhead (wall ms)    p50 {ovh['p50']}  p95 {ovh['p95']}  p99 {ovh['p99']}  "
        f"max {ovh['max']}",
        *_night_lines(summary),
        *_science_lines(summary),
        *_chaos_lines(summary),
        *_capacity_lines(summary),
    ]


def _capacity_lines(summary: dict[str, Any]) -> list[str]:
    if "capacity_drop" not in summary:
        return []
    c = summary["capacity_drop"]
    start, end = c["window_night_s"]
    by = c["budget_met_by_phase"]
    return [
        f"capacity drop {c['fraction']} of the pilots ({', '.join(c['pilots_dropped'])}) "
        f"night {start:g}-{end:g} s (wall {c['dropped_wall_s']} -> {c['restored_wall_s']} s)  "
        f"dispatch order {summary['dispatch_order']}",
        f"budget_met overall {summary['budget_met']}  images during/after the window "
        f"{c['budget_met_during_or_after']}  by phase: before {by['before']}  during "
        f"{by['during']}  after {by['after']}  (visits {c['visits_by_phase']})",
        f"  events excused from driver lag (sent within {SETTLE_S} s of the kill or the "
        f"restart) {c['events_excused_from_driver_lag']}",
    ]


def _chaos_lines(summary: dict[str, Any]) -> list[str]:
    if "chaos_faults" not in summary:
        return []
    lines = [
        f"chaos: {len(summary['chaos_faults'])} faults  failover_s {summary['failover_s']} "
        f"(limit {summary['failover_limit_s']})  jobs relaxed {summary['jobs_relaxed']}  "
        f"events excused from driver lag {summary['events_excused_from_driver_lag']} "
        f"(max {summary['excused_driver_lag_max_s']} night s)  two ready at once "
        f"{summary['double_ready_looks']}"
    ]
    for f in summary["chaos_faults"]:
        lines.append(
            f"  {f['kind']:<10} {f['target']:<34} at {f['wall_s']:7.2f} s wall "
            f"({f['night_s']:7.1f} night s)  down {f['down_s']} s  recovery {f['recovery_s']} s  "
            f"pilots back {f['pilots_back_s']} s" + (f"  ERROR {f['error']}" if f["error"] else "")
        )
    for j in summary["slowest_jobs"][:3]:
        lines.append(
            f"  slow: visit {j['visit']} detector {j['detector']} ({j['status']}, attempt "
            f"{j['attempt']}) image {j['imageArrived']} s -> consumed {j['imageConsumed']} -> "
            f"started {j['started']} -> completed {j['completed']} s wall"
        )
    lines += [f"CHAOS FAILED: {p}" for p in summary["chaos_problems"]]
    return lines


def _night_lines(summary: dict[str, Any]) -> list[str]:
    if "valid" not in summary:
        return []
    lag, fl = summary["driver_lag_s"], summary["first_last_tenth"]

    def pair(key: str) -> str:
        return f"{fl[key]['first']} -> {fl[key]['last']}"

    lines = [
        f"valid {str(summary['valid']).lower()}  driver lag (night s) p50 {lag['p50']}  "
        f"p99 {lag['p99']}  max {lag['max']}  (tolerance p99 {lag['tolerance_p99']} per visit "
        f"for all but {lag['late_visits_allowed']:.0%} of visits, max {lag['tolerance_max']}; "
        f"late visits {lag['late_visit_count']})",
        *(f"INVALID: {reason}" for reason in summary["invalid_reasons"]),
        f"first -> last tenth: latency p99 {pair('latency_p99_s')} s  overhead p99 "
        f"{pair('overhead_p99_ms')} ms  image lag p99 {pair('image_lag_p99')}  broker fetch "
        f"{pair('broker_fetch_ms_mean')} ms",
        f"memory MiB first -> last tenth: service {pair('rss_mib_service')}  dispatcher "
        f"{pair('rss_mib_dispatcher')}  pilots {pair('rss_mib_pilots')}  broker "
        f"{pair('rss_mib_broker')}  postgres {pair('rss_mib_postgres')}",
    ]
    t = summary["trend"]
    failed = [c for c in t["checks"] if not c["ok"]]
    if not t["judged"]:
        lines.append("trend not judged: a tenth of this run holds no sample (too short)")
        return lines
    lines.append(
        "trend " + ("ok" if t["ok"] else "FAILED")
        + "".join(f"  {c['name']} {c['first']} -> {c['last']} (limit {c['limit']} {c['unit']})"
                  for c in failed)
    )  # fmt: skip
    return lines


def _science_lines(summary: dict[str, Any]) -> list[str]:
    if "science" not in summary:
        return []
    sc = summary["science"]
    stages = "  ".join(f"{k} {v['mean']}" for k, v in summary["pipeline_stage_ms"].items())
    loads = "  ".join(
        f"v{k}({v['filter']}) {v['calib_loads']}/{v['template_loads']}"
        for k, v in summary["store_loads_by_visit"].items()
    )
    return [
        f"alerts {sc['alerts']} (valid {sc['alerts_valid']}, {sc['schema']})  "
        f"dia sources per detector-visit {sc['alerts'] / max(1, sc['detector_visits']):.2f}",
        f"recall (S/N >= 10) {sc['recall']} ({sc['recovered_snr_ge_10']}/"
        f"{sc['injected_snr_ge_10']})  by S/N {sc['recall_by_snr']}",
        f"spurious per detector-visit {sc['spurious_per_detector_visit']} ({sc['spurious']} "
        f"in {sc['detector_visits']})",
        f"pipeline ms per detector (mean)  {stages}",
        f"store loads per visit (calibrations/templates)  {loads}",
    ]
