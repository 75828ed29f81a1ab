"""``prompt stack up|down|status``: the embedded PostgreSQL + Kafka-protocol broker."""

from __future__ import annotations

import argparse
import asyncio

from prompt.cli.common import print_json
from prompt.config import Settings
from prompt.stack import Stack


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stack", help="start/stop the embedded dev stack (PostgreSQL + broker)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("up", help="start servers, create topics, apply migrations")
    down = actions.add_parser("down", help="stop what 'up' started; no process is left")
    down.add_argument("--purge", action="store_true", help="also delete the state directory")
    actions.add_parser("status", help="print endpoints and process state as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    stack = Stack(settings)
    if args.action == "up":
        endpoints = asyncio.run(stack.up())
        print(f"PROMPT_DATABASE_URL={endpoints.database_url}")
        print(f"PROMPT_KAFKA_BOOTSTRAP={endpoints.kafka_bootstrap}")
        return 0
    if args.action == "down":
        stopped = stack.down(purge=args.purge)
        print("stack stopped" if stopped else "no stack was running")
        return 0
    status = stack.status()
    print_json(status)
    return 0 if status["running"] else 1
