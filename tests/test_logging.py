"""In JSON mode every line a process writes is JSON, including the records of the libraries
(aiokafka, asyncpg, aiohttp, asyncio, warnings) and a crash's traceback."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from prompt.config import Settings
from prompt.kafka import ensure_topics
from prompt.stack import Endpoints, Stack
from prompt.testing.processes import start_dispatcher
from tests.env import service_settings

LINE_KEYS = {"event", "level", "timestamp"}


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(record, dict) and record.keys() >= LINE_KEYS, line
        records.append(record)
    return records


async def wait_for_logger(log: Path, name: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while f'"logger": "{name}"' not in await asyncio.to_thread(log.read_text):
            await asyncio.sleep(0.1)


@pytest.mark.stack
async def test_dispatcher_process_writes_only_json_lines(
    isolated_settings: Settings,
    prompt_stack: Endpoints,
    prompt_stack_control: Stack,
    tmp_path: Path,
) -> None:
    settings = service_settings(isolated_settings)
    service = start_dispatcher(settings, log_dir=tmp_path)
    database = (settings.database_url or "").rsplit("/", 1)[1]
    admin = await asyncpg.connect(prompt_stack.database_url)
    try:
        await service.wait_ready()  # GET /readyz: aiohttp's access log
        # The broker goes away for a moment: aiokafka logs that it cannot connect.
        await prompt_stack_control.restart("broker")
        await ensure_topics(settings, settings.kafka_bootstrap or "")
        await wait_for_logger(service.log, "aiokafka")
        with socket.create_connection(("127.0.0.1", service.http_port), timeout=5) as sock:
            sock.sendall(b"NOT HTTP \x00\r\n\r\n")  # a 400 from aiohttp's parser
            assert sock.recv(64).startswith(b"HTTP/1.0 400")
        # asyncpg: the pool loses its idle connections and cannot reconnect for a while, so
        # it logs (with a traceback) that it is restoring its minimum size. The connection
        # holding the leader lock is left alone.
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1"
            " AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')",
            database,
        )
        assert killed >= 1
        await wait_for_logger(service.log, "asyncpg.pool")
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
        service.stop_if_running()
    records = json_lines(await asyncio.to_thread(service.log.read_text))
    loggers = {r.get("logger") for r in records}
    assert {"aiokafka", "aiohttp.access", "asyncpg.pool"} <= loggers
    assert any(r["logger"] == "asyncpg.pool" and "Traceback" in r.get("exception", "")
               for r in records if r.get("logger"))  # fmt: skip
    assert any('" 400 ' in r["event"] for r in records if r.get("logger") == "aiohttp.access")
    assert any(r["event"] == "dispatcher stopped" for r in records)


def test_json_mode_renders_asyncio_warnings_and_crashes_as_json() -> None:
    """The event loop's own error report, a warning and an uncaught exception."""
    code = """
import asyncio, warnings
import uvloop
from prompt.logging import configure_logging
configure_logging("json")

async def main():
    async def fail():
        raise ValueError("never retrieved")
    task = asyncio.get_running_loop().create_task(fail())
    await asyncio.sleep(0.01)
    del task  # its exception was never retrieved: the loop logs it on collection

uvloop.run(main())
import gc; gc.collect()
warnings.warn("a library warning")
raise RuntimeError("crash")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == b""
    records = json_lines(done.stderr.decode())
    by_logger = {r.get("logger"): r for r in records}
    assert "never retrieved" in by_logger["asyncio"]["exception"]
    assert "a library warning" in by_logger["py.warnings"]["event"]
    crash = records[-1]
    assert crash["event"] == "uncaught exception" and crash["level"] == "critical"
    assert "RuntimeError: crash" in crash["exception"]


def test_console_mode_stays_readable() -> None:
    code = """
import logging, structlog
from prompt.logging import configure_logging
configure_logging("console")
structlog.get_logger().info("native", visit=3)
logging.getLogger("aiokafka").warning("broker gone")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 2 and not lines[0].startswith("{")
    assert "native" in lines[0] and "visit" in lines[0]
    assert "broker gone" in lines[1] and "aiokafka" in lines[1]
