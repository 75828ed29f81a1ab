"""``prompt stack up|status|down`` start real servers and leave no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
import pytest

from prompt.config import Settings
from prompt.stack import Stack, owned_stack
from prompt.stack.processes import alive
from tests.helpers import run_prompt

pytestmark = pytest.mark.stack


def _processes_using(state_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(state_dir) in cmd or (
            proc.info["cmdline"]
            and ("tansu" in cmd or "weed" in cmd)
            and str(state_dir) in proc.cwd()
        ):
            found.append(proc)
    return found


def _env(stdout: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.decode().splitlines() if "=" in line)


def test_stack_up_then_down_leaves_no_process(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    up = run_prompt("--state-dir", str(state), "stack", "up")
    assert up.returncode == 0, up.stderr.decode()
    env = _env(up.stdout)
    assert env["PROMPT_DATABASE_URL"].startswith("postgresql://")
    assert env["PROMPT_S3_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    secret_file = Path(env["PROMPT_S3_SECRET_ACCESS_KEY_FILE"])
    assert secret_file.stat().st_mode & 0o077 == 0
    assert secret_file.read_text().strip() not in up.stdout.decode()

    status = run_prompt("--state-dir", str(state), "stack", "status")
    assert status.returncode == 0
    info = orjson.loads(status.stdout)
    pg_pid, broker_pid, s3_pid = (info[k]["pid"] for k in ("postgres", "broker", "s3"))
    assert alive(pg_pid) and alive(broker_pid) and alive(s3_pid)
    assert info["s3_endpoint_url"] == env["PROMPT_S3_ENDPOINT_URL"]
    pg_family = [pg_pid, *(c.pid for c in psutil.Process(pg_pid).children(recursive=True))]
    # Everything the S3 server listens on is on loopback, on the ports the stack chose.
    listening = [c.laddr for c in psutil.Process(s3_pid).net_connections() if c.status == "LISTEN"]
    assert listening and all(a.ip == "127.0.0.1" for a in listening)
    assert {a.port for a in listening} <= set(info["s3"]["ports"].values())

    # The servers really work: migrations applied, topics created.
    async def check() -> None:
        conn = await asyncpg.connect(info["database_url"])
        try:
            assert await conn.fetchval("SELECT max(version) FROM schema_migrations") >= 1
        finally:
            await conn.close()

    asyncio.run(check())
    again = run_prompt("--state-dir", str(state), "stack", "up")  # idempotent
    assert again.returncode == 0
    assert (
        orjson.loads(run_prompt("--state-dir", str(state), "stack", "status").stdout)["postgres"][
            "pid"
        ]
        == pg_pid
    )

    down = run_prompt("--state-dir", str(state), "stack", "down")
    assert down.returncode == 0
    assert b"stack stopped" in down.stdout
    assert not any(alive(p) for p in (*pg_family, broker_pid, s3_pid))
    assert _processes_using(state) == []
    grpc_ports = [port for name, port in info["s3"]["ports"].items() if name.endswith(".grpc")]
    assert not [
        p for p in Path("/tmp").glob("seaweedfs-*.sock") if int(p.stem.split("-")[-1]) in grpc_ports
    ]
    after = run_prompt("--state-dir", str(state), "stack", "status")
    assert after.returncode == 1
    assert orjson.loads(after.stdout)["running"] is False
    outside = [Path(info["postgres"][k]) for k in ("private_dir",) if k in info["postgres"]]
    assert run_prompt("--state-dir", str(state), "stack", "down", "--purge").returncode == 0
    assert not state.exists() and not any(p.exists() for p in outside)


def test_commands_say_how_to_get_a_database(tmp_path: Path) -> None:
    res = run_prompt("--state-dir", str(tmp_path / "none"), "db", "upgrade")
    assert res.returncode == 2
    assert b"PROMPT_DATABASE_URL" in res.stderr
    assert b"stack up" in res.stderr


def test_db_upgrade_against_external_url(isolated_settings: object) -> None:
    assert isinstance(isolated_settings, Settings)
    res = run_prompt(
        "db", "upgrade", env={"PROMPT_DATABASE_URL": isolated_settings.database_url or ""}
    )
    assert res.returncode == 0, res.stderr.decode()
    assert b"already up to date" in res.stdout


def test_prompt_dev_leaves_running_the_stack_it_did_not_start(tmp_path: Path) -> None:
    """One rule (``owned_stack``): a tool stops only the stack it started. ``prompt dev`` on
    a stack that was already up leaves it up; the outer user, which started it, stops it."""
    state = tmp_path / "stack"
    settings = Settings(state_dir=state)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with owned_stack(settings):
            before = Stack(settings).status()
            assert before["running"]
            await asyncio.to_thread(run_dev_until_up_then_stop, state, tmp_path / "dev.out")
            after = Stack(settings).status()
        return before, after

    before, after = asyncio.run(scenario())
    assert after["running"], "prompt dev stopped a stack it had not started"
    pids = [before[k]["pid"] for k in ("postgres", "broker", "s3")]
    assert pids == [after[k]["pid"] for k in ("postgres", "broker", "s3")]
    assert not Stack(settings).status()["running"], "the stack's starter stopped it"
    assert not any(alive(p) for p in pids)
    assert _processes_using(state) == []
    Stack(settings).down(purge=True)


def run_dev_until_up_then_stop(state: Path, out_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPT_")}
    env.update(PROMPT_HTTP_PORT="0", PROMPT_PILOT_PORT="0", PROMPT_LOG_FORMAT="json")
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prompt", "--state-dir", str(state), "dev", "--pilots", "1"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while b"prompt dev is up" not in out_path.read_bytes():
            assert proc.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, "prompt dev did not come up in 90 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, out_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
