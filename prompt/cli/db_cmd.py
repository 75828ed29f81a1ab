"""``prompt db upgrade|version``."""

from __future__ import annotations

import argparse
import asyncio

from prompt.cli.common import fail
from prompt.config import Settings
from prompt.stack import StackNotRunningError, resolve_database_url
from prompt.store import connect, current_version, upgrade


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="database schema")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("upgrade", help="apply pending migrations (idempotent)")
    actions.add_parser("version", help="print the applied schema version")
    p.set_defaults(handler=run)


async def _run(action: str, url: str) -> None:
    conn = await connect(url)
    try:
        if action == "upgrade":
            applied = await upgrade(conn)
            print(f"applied {applied}" if applied else "already up to date")
        print(f"schema version {await current_version(conn)}")
    finally:
        await conn.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        url = resolve_database_url(settings)
    except StackNotRunningError as exc:
        return fail(str(exc))
    asyncio.run(_run(args.action, url))
    return 0
