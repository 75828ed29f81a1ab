"""``prompt status``: visits in flight, jobs per state, pilots — read from the database, so it
works whether or not the dispatcher answers."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from prompt.cli.common import fail, print_json
from prompt.config import Settings
from prompt.stack import StackNotRunningError, resolve_database_url
from prompt.store import connect


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="visits in flight, jobs per state, pilots")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--job", type=int, help="one job: its state, timestamps, error and payload log")
    p.set_defaults(handler=run)


async def collect(url: str) -> dict[str, Any]:
    conn = await connect(url)
    try:
        visits = await conn.fetch(
            """SELECT v.instrument, v.group_id, t.name AS task, v.received_at,
                      count(j.id) FILTER (WHERE j.state NOT IN
                          ('finished','failed','late','expired','canceled')) AS open_jobs,
                      count(j.id) AS jobs
               FROM visits v LEFT JOIN tasks t ON t.id = v.task_id
               LEFT JOIN jobs j ON j.visit_id = v.id
               WHERE v.status = 'active' GROUP BY v.id, t.name ORDER BY v.id"""
        )
        states = await conn.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        pilots = await conn.fetch(
            "SELECT id, host, slots, state, last_seen FROM pilots ORDER BY id"
        )
        visit_status = await conn.fetch("SELECT status, count(*) AS n FROM visits GROUP BY status")
    finally:
        await conn.close()
    now = time.time()
    return {
        "visits_in_flight": [dict(r) for r in visits],
        "visits_by_status": {r["status"]: r["n"] for r in visit_status},
        "jobs_by_state": {r["state"]: r["n"] for r in states},
        "pilots": [{**dict(r), "seen_s_ago": round(now - r["last_seen"], 1)} for r in pilots],
    }


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


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        url = resolve_database_url(settings)
    except StackNotRunningError as exc:
        return fail(str(exc))
    if args.job is not None:
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
    status = asyncio.run(collect(url))
    if args.json:
        print_json(status)
        return 0
    print(f"visits: {status['visits_by_status']}")
    print(f"jobs:   {status['jobs_by_state']}")
    print(f"in flight ({len(status['visits_in_flight'])}):")
    for v in status["visits_in_flight"]:
        open_jobs = f"{v['open_jobs']}/{v['jobs']}"
        print(f"  {v['instrument']} {v['group_id']} task={v['task']} open={open_jobs}")
    print(f"pilots ({len(status['pilots'])}):")
    for p in status["pilots"]:
        print(f"  {p['id']} {p['state']} slots={p['slots']} seen {p['seen_s_ago']} s ago")
    return 0
