"""``report.json`` and a self-contained ``report.html`` (plots embedded as PNG data URIs)."""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Any

import orjson

from loadtest.replay import ReplayResult
from loadtest.sampler import ROLES
from loadtest.summary import BUDGET_S, stage_ms, summary_lines, timeline
from prompt.extras import import_optional
from prompt.stats import percentile

PLOTS = (
    "latency_histogram",
    "latency_over_night",
    "visit_timeline",
    "stage_breakdown",
    "cache_hits",
    "pilot_utilisation",
    "driver_lag",
    "consumer_lag",
    "memory_over_night",
    "cpu_over_night",
    "broker_and_loop",
)


def _figure_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(result: ReplayResult) -> dict[str, str]:
    import_optional("matplotlib").use("Agg")
    plt = import_optional("matplotlib.pyplot")

    speed = result.config.timing.speed
    ran = [r for r in result.records if r["latencySeconds"] is not None]
    index_of = {g: i for i, g in result.group_of.items()}
    visit_start = {v.index: v.start for v in result.night.visits}
    out: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(7, 3.2))
    lat = [r["latencySeconds"] * speed for r in ran]
    ax.hist(lat, bins=60, color="#4477aa")
    ax.axvline(BUDGET_S, color="#cc3311", lw=2, label="60 s budget")
    ax.set(xlabel="image arrival -> payload finished (night s)", ylabel="jobs",
           title="End-to-end latency")  # fmt: skip
    ax.legend()
    out["latency_histogram"] = _figure_png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = [visit_start[index_of[r["groupId"]]] / 3600 for r in ran if r["groupId"] in index_of]
    ys = [r["latencySeconds"] * speed for r in ran if r["groupId"] in index_of]
    ax.scatter(xs, ys, s=2, alpha=0.4, color="#4477aa")
    per_x: dict[float, list[float]] = {}
    for x, y in zip(xs, ys, strict=True):
        per_x.setdefault(x, []).append(y)
    p99 = sorted((x, percentile(sorted(v), 99)) for x, v in per_x.items())
    ax.plot([x for x, _ in p99], [y for _, y in p99], lw=0.8, color="#222222",
            label="p99 per visit")  # fmt: skip
    ax.axhline(BUDGET_S, color="#cc3311", lw=1.5)
    ax.legend(fontsize=7, loc="upper right")
    ax.set(xlabel="hours since the first visit", ylabel="latency (night s)",
           title="Latency over the night")  # fmt: skip
    out["latency_over_night"] = _figure_png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    per_visit: dict[int, list[dict[str, Any]]] = {}
    for r in result.records:
        if r["groupId"] in index_of:
            per_visit.setdefault(index_of[r["groupId"]], []).append(r)
    for vi, rs in sorted(per_visit.items()):
        arrived = [r["imageArrived"] for r in rs if r["imageArrived"]]
        done = [r["completed"] for r in rs]
        if arrived:
            first = min(arrived)
            ax.vlines(vi, 0, (max(done) - first) * speed, color="#228833", lw=1)
            ax.plot(vi, (sorted(done)[len(done) // 2] - first) * speed, ".", color="#004411", ms=3)
    ax.axhline(BUDGET_S, color="#cc3311", lw=1.5)
    ax.set(xlabel="visit", ylabel="first image -> completions (night s)",
           title="Per-visit completion timeline (line: last job; dot: median)")  # fmt: skip
    out["visit_timeline"] = _figure_png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    sums: dict[str, list[float]] = {}
    for r in ran:
        for name, ms in stage_ms(r).items():
            sums.setdefault(name, []).append(ms)
    names = list(sums)
    means = [sum(sums[n]) / len(sums[n]) for n in names]
    ax.barh(names, means, color="#66ccee")
    ax.set_xscale("log")
    ax.set(xlabel="mean wall ms (log)", title="Where the time goes, per job")
    for y, m in enumerate(means):
        ax.text(m, y, f" {m:.1f}", va="center", fontsize=8)
    out["stage_breakdown"] = _figure_png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    rates = []
    for vi, rs in sorted(per_visit.items()):
        hits = [bool(r["cacheHit"]) for r in rs if r["cacheHit"] is not None]
        if hits:
            rates.append((vi, sum(hits) / len(hits)))
    if rates:
        ax.plot([v for v, _ in rates], [h for _, h in rates], ".-", ms=3, color="#aa3377")
    ax.set(xlabel="visit", ylabel="cache-hit rate", ylim=(-0.05, 1.05),
           title="Calibration cache hits per visit")  # fmt: skip
    out["cache_hits"] = _figure_png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    t0 = result.started_wall
    span = max(1.0, result.finished_wall - t0)
    bins = 200
    width = span / bins
    for pilot in sorted({r["pilot"] for r in ran if r["pilot"]}):
        busy = [0.0] * bins
        for r in ran:
            if r["pilot"] != pilot or r["started"] is None:
                continue
            a, b = r["started"] - t0, r["finished"] - t0
            for i in range(max(0, int(a / width)), min(bins, int(b / width) + 1)):
                lo, hi = i * width, (i + 1) * width
                busy[i] += max(0.0, min(b, hi) - max(a, lo)) / width
        slots = result.pilot_slots.get(pilot, result.config.slots)
        ax.plot([(i + 0.5) * width * speed / 3600 for i in range(bins)],
                [b / slots for b in busy], lw=1, label=pilot[-12:])  # fmt: skip
    ax.set(xlabel="night hours since replay start", ylabel="busy slots / slots",
           title="Pilot utilisation")  # fmt: skip
    ax.legend(fontsize=7)
    out["pilot_utilisation"] = _figure_png(fig)
    plt.close(fig)
    out.update(_night_plots(result, plt))
    return out


def _night_plots(result: ReplayResult, plt: Any) -> dict[str, str]:
    """The harness's schedule and the machine over the night (x: night hours since start)."""
    speed = result.config.timing.speed
    hours = 3600 / speed
    out: dict[str, str] = {}
    tl = timeline(result)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    rows = tl["driver_lag_by_visit"]
    ax.plot([r["visit"] for r in rows], [r["max_s"] for r in rows], lw=1, color="#cc6677",
            label="max")  # fmt: skip
    ax.plot([r["visit"] for r in rows], [r["p99_s"] for r in rows], lw=1, color="#332288",
            label="p99")  # fmt: skip
    tol = result.config.lag_tolerance
    ax.axhline(tol.p99_s, color="#332288", ls=":", lw=1, label=f"p99 tolerance {tol.p99_s} s")
    ax.axhline(tol.max_s, color="#cc6677", ls=":", lw=1, label=f"max tolerance {tol.max_s} s")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0)
    ax.set(xlabel="visit", ylabel="sent - planned (night s)",
           title="Driver lag per visit (the harness keeping its schedule)")  # fmt: skip
    ax.legend(fontsize=7)
    out["driver_lag"] = _figure_png(fig)
    plt.close(fig)

    samples = result.samples
    xs = [x.t / hours for x in samples]

    def series(ax: Any, values: list[float | None], label: str) -> None:
        pts = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=label)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    series(ax, [x.lag.get("image-arrival") for x in samples], "image-arrival")
    series(ax, [x.lag.get("control") for x in samples], "next-visit + canceled")
    ax.set(xlabel="night hours since start", ylabel="messages",
           title="Dispatcher consumer lag (scraped from /metrics)")  # fmt: skip
    ax.legend(fontsize=7)
    out["consumer_lag"] = _figure_png(fig)
    plt.close(fig)

    for name, attr, ylabel, title in (
        ("memory_over_night", "rss_mib", "MiB (PSS)", "Memory by role (pilots: with workers)"),
        ("cpu_over_night", "cpu_pct", "% of one core", "CPU by role"),
    ):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for role in ROLES:
            series(ax, [getattr(x, attr).get(role) for x in samples], role)
        ax.set(xlabel="night hours since start", ylabel=ylabel, title=title)
        ax.legend(fontsize=7)
        out[name] = _figure_png(fig)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    series(ax, [x.fetch_ms for x in samples], "broker: fetch newest image record")
    pts = [(t / hours, ms) for t, ms in result.produce_ms]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", ms=2,
                label="broker: next-visit produce (acked)")  # fmt: skip
    series(ax, [x.loop_lag_max_ms for x in samples], "dispatcher: event-loop stall (max 10 s)")
    series(ax, [x.commit_ms_mean for x in samples], "dispatcher: state commit (mean)")
    ax.set_yscale("log")
    ax.set(xlabel="night hours since start", ylabel="wall ms",
           title="Broker request cost, event-loop stalls, database commits")  # fmt: skip
    ax.legend(fontsize=7)
    out["broker_and_loop"] = _figure_png(fig)
    plt.close(fig)
    return out


def write_report(result: ReplayResult, summary: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {**summary, "timeline": timeline(result)}
    (out_dir / "report.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    plots = _plots(result)
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in summary.items()
    )
    figures = "".join(
        f'<figure id="{name}"><img alt="{name}" src="data:image/png;base64,{plots[name]}">'
        f"<figcaption>{name.replace('_', ' ')}</figcaption></figure>"
        for name in PLOTS
    )
    lines = "<br>".join(html.escape(line) for line in summary_lines(summary))
    validity = (
        '<p class="invalid" id="validity">INVALID RUN: the harness did not keep its schedule, '
        "so these figures do not judge the service: "
        + html.escape("; ".join(summary.get("invalid_reasons", []))) + "</p>"
        if summary.get("valid") is False
        else '<p class="valid" id="validity">valid: every event was sent within the driver-lag '
        "tolerance</p>"
    )  # fmt: skip
    chaos = _chaos_table(summary)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>prompt replay report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.summary {{ font-family: monospace; background: #f4f4f4; padding: 1em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.2em 0.8em; text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }}
.invalid {{ background: #fdd; color: #800; padding: 0.6em; font-weight: bold; }}
.valid {{ color: #264; }}
</style></head><body>
<h1>prompt replay report</h1>
{validity}
<p class="summary">{lines}</p>
{chaos}
{figures}
<h2>Summary</h2><table>{rows}</table>
<script>
// Marks how many plots decoded, so a headless browser check can read it from the DOM.
window.addEventListener("load", () => {{
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.plotsRendered = String(ok);
}});
</script>
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path


CHAOS_COLUMNS = (
    ("kind", "kind"), ("target", "target"), ("wall_s", "killed at (wall s)"),
    ("night_s", "killed at (night s)"), ("utc", "killed at (UTC)"), ("down_s", "down (s)"),
    ("restarted_s", "restarted after (s)"), ("recovery_s", "recovered after (s)"),
    ("pilots_back_s", "pilots back after (s)"), ("leader_after", "leader after"),
    ("error", "error"),
)  # fmt: skip


def _chaos_table(summary: dict[str, Any]) -> str:
    """Every fault injected and its recovery (a chaos replay only)."""
    if "chaos_faults" not in summary:
        return ""

    def cell(key: str, value: Any) -> str:
        if key == "utc" and isinstance(value, float):
            value = (
                time.strftime("%H:%M:%S", time.gmtime(value)) + f".{int(value * 1000) % 1000:03d}"
            )
        return f"<td>{html.escape('' if value is None else str(value))}</td>"

    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in CHAOS_COLUMNS)
    rows = "".join(
        "<tr>" + "".join(cell(key, f.get(key)) for key, _ in CHAOS_COLUMNS) + "</tr>"
        for f in summary["chaos_faults"]
    )
    verdict = "ok" if summary["chaos_ok"] else "FAILED: " + "; ".join(summary["chaos_problems"])
    return (
        f'<h2 id="chaos">Faults (chaos): failover {summary["failover_s"]} s, limit '
        f"{summary['failover_limit_s']} s — {html.escape(verdict)}</h2>"
        f"<table><tr>{head}</tr>{rows}</table>"
    )
