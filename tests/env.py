"""A dispatcher with pilots on the test's isolated database and topics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from prompt.config import Settings
from prompt.dispatcher.engine import JobState
from prompt.pilot import CalibrationSource, Pilot, PilotConfig, SyntheticCalibrations
from prompt.pilot.alerts import AlertPublisher
from prompt.stack.processes import free_port
from prompt.tasks import TaskFile
from prompt.testing.processes import (
    InProcessDispatcher,
    PilotProcess,
    ServiceProcess,
    start_dispatcher,
    start_pilot,
    wait_for_pilots,
)
from prompt.testing.tasks import apply_task_file
from prompt.testing.traffic import CompletionCollector, EventSender

OPERATOR_TOKEN = "operator-test-token"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def service_settings(settings: Settings, **changes: Any) -> Settings:
    base = {
        "pilot_port": 0,
        "http_port": 0,
        "pilot_token": SecretStr("test-token"),
        "operator_token": SecretStr(OPERATOR_TOKEN),
        # Long enough that a loaded 2-core runner does not declare an in-process pilot (it
        # shares the test's event loop) lost; tests of loss detection wait for the condition.
        "heartbeat_timeout_s": 3.0,
        "drain_timeout_s": 10.0,
        "start_from": "earliest",
    }
    return settings.with_overrides(**{**base, **changes})


@dataclass
class Env:
    settings: Settings
    running: Any
    sender: EventSender
    completions: CompletionCollector
    pilots: list[Pilot] = field(default_factory=list)
    pilot_stops: list[asyncio.Event] = field(default_factory=list)
    pilot_tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def book(self) -> Any:
        """The engine's state (tests look inside; the service never does)."""
        return self.running.engine.book

    async def add_pilot(
        self,
        pilot_id: str,
        slots: int = 4,
        load_s: float = 0.005,
        source: CalibrationSource | None = None,
        alerts: AlertPublisher | None = None,
        warm_imports: tuple[str, ...] = (),
    ) -> Pilot:
        config = PilotConfig(
            dispatcher=f"127.0.0.1:{self.running.pilot_port}",
            token="test-token",
            pilot_id=pilot_id,
            slots=slots,
            heartbeat_s=0.25,
            reconnect_max_s=0.5,
            warm_imports=warm_imports,
        )
        pilot = Pilot(config, source or SyntheticCalibrations(nbytes=4096, load_s=load_s), alerts)
        stop = asyncio.Event()
        self.pilots.append(pilot)
        self.pilot_stops.append(stop)
        self.pilot_tasks.append(asyncio.get_running_loop().create_task(pilot.run(stop)))
        await wait_for_pilots(self.running, len(self.book.pilots.connected()) + 1)
        return pilot

    async def until(self, check: Any, timeout: float = 30.0, what: str = "condition") -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)

    async def visit_preloaded(self, group: str, timeout: float = 30.0) -> None:
        def done() -> bool:
            for visit in self.book.visits.values():
                if visit.nv.group_id == group:
                    return all(j.preloaded is not None for j in visit.jobs.values())
            return False

        await self.until(done, timeout)


@contextlib.asynccontextmanager
async def dispatcher_env(
    settings: Settings, tasks: TaskFile, *, pilots: int = 2, slots: int = 4, **pilot_kw: Any
) -> AsyncIterator[Env]:
    settings = service_settings(settings)
    await apply_task_file(settings, tasks)
    async with (
        InProcessDispatcher(settings) as running,
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        env = Env(settings, running, sender, completions)
        try:
            for i in range(pilots):
                await env.add_pilot(f"pilot-{i}", slots=slots, **pilot_kw)
            yield env
        finally:
            for stop in env.pilot_stops:
                stop.set()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await asyncio.gather(*env.pilot_tasks, return_exceptions=True)


@dataclass
class WithPilotProcesses:
    """An in-process dispatcher (the test looks inside it) and real ``prompt pilot``
    processes (the test kills or stops them)."""

    running: Any
    sender: EventSender
    completions: CompletionCollector
    pilots: list[PilotProcess]

    @property
    def book(self) -> Any:
        return self.running.engine.book

    async def until_running(self, count: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while sum(j.state is JobState.RUNNING for j in self.book.jobs.values()) < count:
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def pilot_processes(
    settings: Settings, tasks: TaskFile, log_dir: Path, *, pilots: int = 2, slots: int = 10
) -> AsyncIterator[WithPilotProcesses]:
    """``settings`` as made by :func:`service_settings`; pilots ``p0``, ``p1`` ... ."""
    await apply_task_file(settings, tasks)
    async with (
        InProcessDispatcher(settings) as running,
        EventSender(settings) as sender,
        CompletionCollector(settings) as completions,
    ):
        procs = [
            start_pilot(settings, running.pilot_port, f"p{i}", slots=slots, log_dir=log_dir)
            for i in range(pilots)
        ]
        try:
            await wait_for_pilots(running, pilots)
            yield WithPilotProcesses(running, sender, completions, procs)
        finally:
            for p in procs:
                if p.proc.poll() is None:  # a stopped pilot must continue to hear SIGTERM
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.proc.pid, signal.SIGCONT)
                p.stop_if_running()


def group_id(tag: str) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{tag}"


@dataclass
class Served:
    """``prompt serve`` and pilots as real processes; the dispatcher can be stopped (SIGTERM or
    SIGKILL) and started again on the same ports, as an operator or a crash would."""

    settings: Settings
    log_dir: Path
    ports: dict[str, Any]  # pilot_port, http_port: keyword arguments of start_dispatcher
    service: ServiceProcess
    pilots: list[PilotProcess] = field(default_factory=list)
    extra_env: dict[str, str] | None = None

    def stop(self, how: str) -> None:
        if how == "sigkill":
            self.service.kill()
        else:
            assert self.service.terminate() == 0

    async def start(self) -> None:
        self.service = start_dispatcher(
            self.settings, log_dir=self.log_dir, extra_env=self.extra_env, **self.ports
        )
        await self.service.wait_ready()


@contextlib.asynccontextmanager
async def served(
    settings: Settings,
    log_dir: Path,
    *,
    pilots: int = 2,
    slots: int = 16,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Served]:
    """``extra_env`` is added to every child's environment."""
    ports: dict[str, Any] = {"pilot_port": free_port(), "http_port": free_port()}
    service = start_dispatcher(settings, log_dir=log_dir, extra_env=extra_env, **ports)
    env = Served(settings, log_dir, ports, service, extra_env=extra_env)
    try:
        await env.service.wait_ready()
        env.pilots = [
            start_pilot(
                settings,
                env.service.pilot_port,
                f"p{i}",
                slots=slots,
                log_dir=log_dir,
                extra_env=extra_env,
            )
            for i in range(pilots)
        ]
        await env.service.wait_pilots(pilots)
        yield env
    finally:
        for pilot in env.pilots:
            pilot.stop_if_running()
        env.service.stop_if_running()


@dataclass
class Pair:
    """Two ``prompt serve`` processes with the same name (one leads, one stands by) and
    pilots that know both addresses, as in a deployment with a hot standby."""

    settings: Settings
    log_dir: Path
    services: list[ServiceProcess]
    pilots: list[PilotProcess] = field(default_factory=list)

    async def readiness(self) -> list[bool]:
        out = []
        for service in self.services:
            try:
                out.append(bool((await service.ready()).get("ready")))
            except (OSError, aiohttp.ClientError, ValueError):
                out.append(False)
        return out

    async def leader(self, timeout: float = 60.0) -> ServiceProcess:
        """The one ready dispatcher, once there is one (never two: asserted on each look)."""
        async with asyncio.timeout(timeout):
            while True:
                ready = await self.readiness()
                assert sum(ready) <= 1, f"two dispatchers ready at once: {ready}"
                if any(ready):
                    return self.services[ready.index(True)]
                await asyncio.sleep(0.05)

    def restart_dead(self) -> None:
        """Start again, on its ports, any dispatcher that died (a supervisor's job)."""
        for i, service in enumerate(self.services):
            if service.proc.poll() is not None:
                self.services[i] = start_dispatcher(
                    self.settings, log_dir=self.log_dir, pilot_port=service.pilot_port,
                    http_port=service.http_port, log_name=f"dispatcher-{i}",
                )  # fmt: skip


@contextlib.asynccontextmanager
async def hot_standby(
    settings: Settings, log_dir: Path, *, pilots: int = 2, slots: int = 16
) -> AsyncIterator[Pair]:
    services = [
        start_dispatcher(settings, log_dir=log_dir, log_name=f"dispatcher-{i}") for i in range(2)
    ]
    pair = Pair(settings, log_dir, services)
    try:
        leader = await pair.leader()
        addresses = ",".join(f"127.0.0.1:{s.pilot_port}" for s in services)
        pair.pilots = [
            start_pilot(settings, addresses, f"p{i}", slots=slots, log_dir=log_dir)
            for i in range(pilots)
        ]
        await leader.wait_pilots(pilots)
        yield pair
    finally:
        for pilot in pair.pilots:
            pilot.stop_if_running()
        for service in pair.services:
            service.stop_if_running()
