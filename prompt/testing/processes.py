"""A dispatcher and pilots as real child processes on this machine (or a dispatcher in-process).

Shared by ``prompt dev``, ``prompt bench dispatch``, the load-test replay and the tests, so they
all exercise the same real components: Kafka, PostgreSQL, the dispatcher, pilot processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prompt.config import Settings
from prompt.s3 import s3_env
from prompt.stack import resolve_endpoints


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child ``prompt`` process see the same settings."""
    endpoints = resolve_endpoints(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPT_")}
    env.update(
        PROMPT_DATABASE_URL=endpoints.database_url,
        PROMPT_KAFKA_BOOTSTRAP=endpoints.kafka_bootstrap,
        PROMPT_DISPATCHER_NAME=settings.dispatcher_name,
        PROMPT_HEARTBEAT_TIMEOUT_S=str(settings.heartbeat_timeout_s),
        PROMPT_KAFKA_FETCH_MAX_WAIT_MS=str(settings.kafka_fetch_max_wait_ms),
        PROMPT_DISPATCH_MODE=settings.dispatch_mode,
        PROMPT_POLL_S=str(settings.poll_s),
        PROMPT_AFFINITY_WAIT_S=str(settings.affinity_wait_s),
        PROMPT_DISPATCH_ORDER=settings.dispatch_order,
        PROMPT_BACKLOG_PER_PILOT=str(settings.backlog_per_pilot),
        PROMPT_LOG_FORMAT="json",
        PROMPT_LOG_LEVEL=settings.log_level,
    )
    if settings.pilot_token is not None:
        env["PROMPT_PILOT_TOKEN"] = settings.pilot_token.get_secret_value()
    if settings.operator_token is not None:
        env["PROMPT_OPERATOR_TOKEN"] = settings.operator_token.get_secret_value()
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name.startswith("pilot_tls_") and value is not None:
            env[f"PROMPT_{name.upper()}"] = str(value)
    if endpoints.s3 is not None:
        env.update(s3_env(endpoints.s3))
    if settings.raws_in_s3:
        env["PROMPT_RAWS_IN_S3"] = "true"
    if settings.raw_root is not None:
        env["PROMPT_RAW_ROOT"] = str(settings.raw_root)
    if settings.calib_root is not None:
        env["PROMPT_CALIB_ROOT"] = settings.calib_root
    for name, topic in settings.topics.model_dump().items():
        env[f"PROMPT_TOPIC_{name.upper()}"] = topic
    return env


@dataclass
class ChildProcess:
    """A ``prompt`` child process in its own process group."""

    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL to the whole group: the process and its workers die without a word."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait: the graceful stop."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        return self.proc.wait(timeout)

    def stop_if_running(self, timeout: float = 60) -> None:
        """SIGTERM; if it has not exited within ``timeout``, SIGKILL the whole group (a stuck
        child must not abort the caller's clean-up and outlive it)."""
        if self.proc.poll() is None:
            try:
                self.terminate(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class ServiceProcess(ChildProcess):
    """A ``prompt serve`` child process."""

    pilot_port: int = 0
    http_port: int = 0

    async def status(self) -> dict[str, Any]:
        import aiohttp

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.http_port}/status") as resp,
        ):
            result: dict[str, Any] = await resp.json()
            return result

    async def ready(self) -> dict[str, Any]:
        """``/readyz``: whether it leads with every part making progress, and why not."""
        import aiohttp

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.http_port}/readyz") as resp,
        ):
            result: dict[str, Any] = await resp.json()
            return result

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until ``/readyz`` says ready (a standby never is)."""
        import aiohttp

        async with asyncio.timeout(timeout):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"prompt serve exited ({self.proc.returncode}): {self.log}")
                try:
                    async with (
                        aiohttp.ClientSession() as http,
                        http.get(f"http://127.0.0.1:{self.http_port}/readyz") as resp,
                    ):
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def wait_pilots(self, count: int, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while sum(p["connected"] for p in (await self.status())["pilots"]) < count:
                await asyncio.sleep(0.1)


def start_dispatcher(
    settings: Settings,
    *,
    log_dir: Path,
    pilot_port: int | None = None,
    http_port: int | None = None,
    extra_env: dict[str, str] | None = None,
    log_name: str = "dispatcher",
) -> ServiceProcess:
    """A ``prompt serve`` process (ports fixed by the caller to restart one in place);
    ``extra_env`` adds variables settings do not express (e.g. ``PROMPT_PILOT_TOKEN_FILE``)."""
    from prompt.stack.processes import free_port

    pilot_port = pilot_port or free_port()
    http_port = http_port or free_port()
    env = {**settings_env(settings), **(extra_env or {})}
    env.update(PROMPT_PILOT_PORT=str(pilot_port), PROMPT_HTTP_PORT=str(http_port))
    env.update(extra_env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{log_name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prompt", "serve"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    return ServiceProcess(proc, log, pilot_port=pilot_port, http_port=http_port)


@dataclass
class PilotProcess(ChildProcess):
    pilot_id: str = ""


def start_pilot(
    settings: Settings,
    dispatcher: int | str,
    pilot_id: str,
    *,
    slots: int = 2,
    log_dir: Path,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> PilotProcess:
    """A real ``prompt pilot`` process in its own process group (killable with its workers).
    ``dispatcher``: the pilot port on this host, or ``HOST:PORT[,HOST:PORT...]``."""
    assert settings.pilot_token is not None
    address = f"127.0.0.1:{dispatcher}" if isinstance(dispatcher, int) else dispatcher
    # The broker and alert topic too: pilots publish alerts.
    env = {**settings_env(settings), **(extra_env or {})}
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{pilot_id}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prompt", "pilot",
             "--dispatcher", address, "--pilot-id", pilot_id,
             "--slots", str(slots), *extra_args],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    return PilotProcess(proc, log, pilot_id=pilot_id)


class InProcessDispatcher:
    """``prompt serve`` running as a task of the current event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self._ready: asyncio.Future[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Any:
        from prompt.dispatcher.service import serve

        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        ready = self._ready

        def on_ready(running: Any) -> None:
            if not ready.done():
                ready.set_result(running)

        self._task = loop.create_task(serve(self.settings, self.stop, on_ready=on_ready))
        done, _ = await asyncio.wait({self._task, self._ready}, return_when="FIRST_COMPLETED")
        if self._task in done:
            self._task.result()
            raise RuntimeError("dispatcher exited before it was ready")
        return self._ready.result()

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self._task is not None:
            await self._task


async def wait_for_pilots(running: Any, count: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while len(running.engine.book.pilots.connected()) < count:
            await asyncio.sleep(0.02)
