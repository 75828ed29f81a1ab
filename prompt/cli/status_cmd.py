"""``prompt status``: the running dispatcher's own read model (its ``/status`` snapshot:
visits, jobs per state, queues, pilots), so the command and the HTTP endpoint never disagree.
``--job ID`` reads one job's stored row, log included, from the database."""

from __future__ import annotations

import argparse
import asyncio
import urllib.error
import urllib.request
from typing import Any

import orjson

from prompt.cli.common import fail, print_json
from prompt.config import Settings
from prompt.stack import StackNotRunningError, resolve_database_url
from prompt.store import connect

TIMEOUT_S = 5.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="the running dispatcher's visits, jobs per state, pilots")
    p.add_argument("--json", action="store_true", help="the /status document, as served")
    p.add_argument(
        "--url",
        help="the dispatcher's HTTP address (default: http://PROMPT_HTTP_HOST:PROMPT_HTTP_PORT)",
    )
    p.add_argument("--job", type=int, help="one job: its state, timestamps, error and payload log")
    p.set_defaults(handler=run)


def dispatcher_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
    return f"http://{host}:{settings.http_port}"


class NoDispatcherError(Exception):
    """No dispatcher answered ``/status`` at the address (down, standing by, or elsewhere)."""


def fetch_status(url: str) -> dict[str, Any]:
    """The ``/status`` snapshot of the dispatcher at ``url``."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/status", timeout=TIMEOUT_S) as resp:
            doc: dict[str, Any] = orjson.loads(resp.read())
            return doc
    except urllib.error.HTTPError as exc:
        body = exc.read()[:200].decode("utf-8", "replace")
        raise NoDispatcherError(f"{url} answered {exc.code}: {body}") from exc
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NoDispatcherError(f"no dispatcher answers at {url} ({reason})") from exc


async def job_detail(url: str, job_id: int) -> dict[str, Any] | None:
    conn = await connect(url)
    try:
        row = await conn.fetchrow(
            """SELECT j.*, v.instrument, v.group_id, t.name AS task FROM jobs j
               JOIN visits v ON v.id = j.visit_id LEFT JOIN tasks t ON t.id = v.task_id
               WHERE j.id = $1""",
            job_id,
        )
    finally:
        await conn.close()
    return None if row is None else dict(row)


def show_job(args: argparse.Namespace, settings: Settings) -> int:
    try:
        url = resolve_database_url(settings)
    except StackNotRunningError as exc:
        return fail(str(exc))
    job = asyncio.run(job_detail(url, args.job))
    if job is None:
        return fail(f"no job {args.job}")
    result = job.pop("result") or {}
    if args.json:
        print_json({**job, "result": result})
        return 0
    for key, val in job.items():
        print(f"{key:18} {val}")
    print(f"{'counts':18} {result.get('counts')}\n{'stages':18} {result.get('stages')}")
    print("--- payload output (last 64 KiB) ---")
    print(result.get("log") or "(no output)")
    return 0


def print_snapshot(status: dict[str, Any]) -> None:
    budget = status.get("oldest_budget_s")
    print(f"scheduling: {status['scheduling']}")
    print(f"jobs:       {status['jobs_by_state']}")
    print(f"queues:     ready {status['ready_queue']}, held images {status['held_images']}"
          + ("" if budget is None else f", tightest budget {budget:.1f} s"))  # fmt: skip
    visits = status["visits"]
    live = [v for v in visits if v["status"] == "in flight"]
    print(f"in flight ({len(live)}):")
    for v in live:
        print(f"  {v['instrument']} {v['group']} task={v['task']} open={v['open']}/{v['jobs']}")
    done = [v for v in visits if v["status"] != "in flight"]
    print(f"recent ({len(done)}):")
    for v in done:
        print(f"  {v['instrument']} {v['group']} task={v['task']} {v['status']} {v['counts']}")
    print(f"pilots ({len(status['pilots'])}):")
    for p in status["pilots"]:
        state = "draining" if p["draining"] else "connected" if p["connected"] else "gone"
        print(f"  {p['id']} {state} slots={p['slots']} running={p['running']}")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.job is not None:
        return show_job(args, settings)
    url = args.url or dispatcher_url(settings)
    try:
        status = fetch_status(url)
    except NoDispatcherError as exc:
        return fail(
            f"{exc}: start one with `prompt serve` (or `prompt dev`), or name its HTTP address "
            "with --url or PROMPT_HTTP_PORT; one job's stored state: prompt status --job ID",
            code=1,
        )
    if args.json:
        print_json(status)
    else:
        print_snapshot(status)
    return 0
