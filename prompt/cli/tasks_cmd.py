"""``prompt tasks apply|list``: the dormant task templates."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from prompt.cli.common import fail, print_json
from prompt.config import Settings
from prompt.stack import StackNotRunningError, resolve_database_url
from prompt.store import connect

if TYPE_CHECKING:
    from prompt.tasks import TaskFile


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tasks", help="pre-built task templates")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    apply = actions.add_parser("apply", help="store tasks from YAML (identical = no-op)")
    apply.add_argument("file", type=Path)
    actions.add_parser("list", help="active tasks, in matching order")
    p.set_defaults(handler=run)


async def _apply(url: str, spec: TaskFile) -> int:
    from prompt.tasks import apply_tasks

    conn = await connect(url)
    try:
        for r in await apply_tasks(conn, spec):
            print(f"{r.name}: {r.action} (version {r.version})")
    finally:
        await conn.close()
    return 0


async def _list(url: str) -> int:
    from prompt.tasks import load_active_tasks

    conn = await connect(url)
    try:
        tasks = await load_active_tasks(conn)
    finally:
        await conn.close()
    print_json(
        [
            {
                "name": t.name,
                "version": t.version,
                "instrument": t.spec.instrument,
                "detectors": len(t.detectors),
                "selectors": t.spec.selectors.model_dump(),
                "payload": t.spec.payload.kind,
            }
            for t in tasks
        ]
    )
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        url = resolve_database_url(settings)
    except StackNotRunningError as exc:
        return fail(str(exc))
    if args.action == "apply":
        from prompt.tasks import load_task_file

        try:
            spec = load_task_file(args.file.read_text())
        except (OSError, ValueError) as exc:
            return fail(f"{args.file}: {exc}")
        return asyncio.run(_apply(url, spec))
    return asyncio.run(_list(url))
