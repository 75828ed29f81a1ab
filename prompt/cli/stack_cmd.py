"""``prompt stack up|down|status|kill|start|restart``: the embedded PostgreSQL, broker and S3."""

from __future__ import annotations

import argparse
import asyncio
import time

from prompt.cli.common import fail, print_json
from prompt.config import Settings
from prompt.s3 import S3Error
from prompt.stack import Endpoints, Stack
from prompt.stack.postgres import PostgresSetupError

SERVERS = ("postgres", "broker", "s3")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stack", help="start/stop the embedded dev stack (PostgreSQL, broker, S3)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("up", help="start servers, create topics and buckets, apply migrations")
    down = actions.add_parser("down", help="stop what 'up' started; no process is left")
    down.add_argument("--purge", action="store_true", help="also delete all the stack's data")
    actions.add_parser("status", help="print endpoints and process state as JSON")
    kill = actions.add_parser("kill", help="SIGKILL one server (a crash); 'start' brings it back")
    kill.add_argument("server", choices=SERVERS)
    start = actions.add_parser("start", help="start a stopped server on its port, with its data")
    start.add_argument("server", choices=SERVERS)
    restart = actions.add_parser("restart", help="kill -9 (or --graceful stop) and start again")
    restart.add_argument("server", choices=SERVERS)
    restart.add_argument("--graceful", action="store_true", help="stop cleanly instead of kill")
    p.set_defaults(handler=run)


def env_lines(endpoints: Endpoints) -> list[str]:
    """The variables that point other shells at this stack (secrets only by file)."""
    lines = [
        f"PROMPT_DATABASE_URL={endpoints.database_url}",
        f"PROMPT_KAFKA_BOOTSTRAP={endpoints.kafka_bootstrap}",
    ]
    s3 = endpoints.s3
    if s3 is not None:
        lines.append(f"PROMPT_S3_ENDPOINT_URL={s3.endpoint_url}")
        if s3.access_key_id:
            lines.append(f"PROMPT_S3_ACCESS_KEY_ID={s3.access_key_id}")
        if s3.secret_access_key_file:
            lines.append(f"PROMPT_S3_SECRET_ACCESS_KEY_FILE={s3.secret_access_key_file}")
        lines.append(f"PROMPT_S3_REGION={s3.region}")
    return lines


def run(args: argparse.Namespace, settings: Settings) -> int:
    stack = Stack(settings)
    if args.action == "up":
        try:
            endpoints = asyncio.run(stack.up())
        except (PostgresSetupError, S3Error, ValueError) as exc:  # what the user must fix
            return fail(str(exc))
        print("\n".join(env_lines(endpoints)))
        return 0
    if args.action == "down":
        stopped = stack.down(purge=args.purge)
        print("stack stopped" if stopped else "no stack was running")
        return 0
    if args.action == "status":
        status = stack.status()
        print_json(status)
        return 0 if status["running"] else 1
    try:
        t0 = time.monotonic()
        if args.action == "kill":
            stack.kill(args.server)
        elif args.action == "start":
            asyncio.run(stack.start(args.server))
        else:
            asyncio.run(stack.restart(args.server, hard=not args.graceful))
    except (RuntimeError, TimeoutError) as exc:  # not running, not ours, did not come up
        return fail(str(exc))
    pid = stack.server(args.server).pid
    print(f"{args.server}: {args.action} done in {time.monotonic() - t0:.2f} s (pid {pid})")
    return 0
