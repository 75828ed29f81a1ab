"""``prompt replay --chaos``: seeded kill -9 of the active dispatcher, a pilot, PostgreSQL and the
broker during a replay, each restarted as a supervisor would, and each one's recovery measured.

The schedule (:func:`chaos_schedule`) is a pure function of the replay's length and the seed.
At run time (:class:`Chaos`) faults never overlap: a fault waits until the previous one has
recovered and everything is back (both dispatchers up, every pilot registered, servers serving)
plus ``settle_s``; a fault so delayed keeps its planned time in the record next to its actual one.

Recovery, from the kill (the driver polls ``/readyz`` of both dispatchers every 50 ms from just
before a kill until everything has settled, every 0.5 s between faults):

* dispatcher: a dispatcher (the standby) is ready — ``failover_s``;
* PostgreSQL, broker: a dispatcher is ready after the server was started again, and stays ready
  ``steady_s`` (a leader that has not yet seen its lock go would otherwise count);
* pilot: its replacement is registered and the dispatcher counts every pilot again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import structlog

from prompt.aio import cancel_and_wait
from prompt.stack import Stack
from prompt.testing.processes import ServiceProcess, start_dispatcher

log = structlog.get_logger(__name__)

DISPATCHER = "dispatcher"
PILOT = "pilot"
POSTGRES = "postgres"
BROKER = "broker"
KINDS = (DISPATCHER, PILOT, POSTGRES, BROKER)
FAILOVER_LIMIT_S = 5.0
SETTLE_S = 2.0
"""Wall seconds after a fault's recovery during which the driver may still feel it: its
producer catching up after a broker fault (reconnecting, refreshing metadata, flushing what
queued), the CPU still taken by a restarted process's start-up (a replacement pilot starting
its warm workers, a dispatcher importing) on the cores the driver shares with it here."""


@dataclass(frozen=True)
class ChaosConfig:
    seed: int = 0
    gap_s: float = 7.0
    """Wall seconds planned between one fault and the next, at least (one round of the four
    kinds per ``4 * gap_s`` of the replay)."""
    down_s: tuple[float, float] = (1.0, 2.0)
    """A killed dispatcher, PostgreSQL or broker is started again this long after (uniform)."""
    pilot_down_s: float = 1.0
    settle_s: float = 1.0
    """After a recovery, at least this long before the next fault."""
    steady_s: float = 2.0
    recovery_timeout_s: float = 60.0
    poll_s: float = 0.05
    """/readyz of both dispatchers this often from a kill until everything has settled ..."""
    idle_poll_s: float = 0.5
    """... and this often between faults (only to see that never two are ready at once):
    the driver's loop, which keeps the night's schedule, is spared 40 requests a second."""
    pilot_poll_s: float = 0.1
    """The leader's /status (a snapshot of its state: heavier) this often while pilots are
    awaited."""


@dataclass(frozen=True)
class PlannedFault:
    kind: str
    wall: float
    """Wall seconds after the replay's start."""
    down_s: float
    pick: float
    """Uniform in [0, 1): which pilot (of those sorted by id) a pilot fault kills."""


def chaos_schedule(end_wall: float, config: ChaosConfig) -> list[PlannedFault]:
    """Rounds of one fault of each kind (in a seeded order) spread over the first 85 % of the
    replay's events, each in its own slot of at least ``gap_s``; always at least one round."""
    rng = random.Random(f"chaos-{config.seed}")
    start, stop = min(2.0, end_wall * 0.05), end_wall * 0.85
    rounds = max(1, int((stop - start) // (len(KINDS) * config.gap_s)))
    n = rounds * len(KINDS)
    slot = max(config.gap_s, (stop - start) / n)
    kinds: list[str] = []
    for _ in range(rounds):
        order = list(KINDS)
        rng.shuffle(order)
        kinds += order
    faults = []
    for i, kind in enumerate(kinds):
        down = config.pilot_down_s if kind == PILOT else rng.uniform(*config.down_s)
        wall = start + slot * (i + rng.uniform(0.0, 0.3))
        faults.append(PlannedFault(kind, round(wall, 3), round(down, 3), rng.random()))
    return faults


@dataclass
class FaultRecord:
    kind: str
    target: str
    planned_wall_s: float
    wall_s: float
    """When it was killed: wall seconds after the replay's start."""
    utc: float
    night_s: float
    """``wall_s`` in night seconds (times speed)."""
    down_s: float
    restarted_s: float | None = None
    """Kill to the restarted process serving again (servers; dispatchers: alive again)."""
    recovery_s: float | None = None
    """Kill to recovered (see the module's docstring); None: not within the timeout."""
    pilots_back_s: float | None = None
    """Kill to every pilot registered with the leader again."""
    leader_after: str | None = None
    error: str | None = None

    @property
    def window(self) -> tuple[float, float | None]:
        """Wall seconds after the start: from the kill to recovery (None while recovering)."""
        end = None if self.recovery_s is None else self.wall_s + self.recovery_s
        return self.wall_s, end

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


class ReadyWatch:
    """``/readyz`` of every dispatcher every ``poll_s`` while ``fast``, else every ``idle_s``;
    counts looks with two ready at once."""

    def __init__(
        self, services: Callable[[], list[ServiceProcess]], poll_s: float, idle_s: float
    ) -> None:
        self._services = services
        self.poll_s = poll_s
        self.idle_s = idle_s
        self.fast = False
        self.codes: list[int] = []
        """Per dispatcher: the last /readyz status (200 leads, 503 stands by), 0 no answer."""
        self.double_ready = 0
        self.looks = 0
        self._changed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReadyWatch:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
        if self._http is not None:
            await self._http.close()

    @property
    def ready(self) -> list[bool]:
        return [code == 200 for code in self.codes]

    def all_answer(self) -> bool:
        return bool(self.codes) and all(self.codes)

    async def _probe(self, service: ServiceProcess) -> int:
        assert self._http is not None
        try:
            async with self._http.get(f"http://127.0.0.1:{service.http_port}/readyz") as resp:
                return resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0

    async def _run(self) -> None:
        while True:
            self.codes = list(await asyncio.gather(*(self._probe(s) for s in self._services())))
            self.looks += 1
            if sum(self.ready) > 1:
                self.double_ready += 1
                log.warning("two dispatchers ready at once", codes=self.codes)
            self._changed.set()
            await asyncio.sleep(self.poll_s if self.fast else self.idle_s)

    async def next_look(self) -> list[bool]:
        self._changed.clear()
        await self._changed.wait()
        return self.ready

    def leader(self) -> int | None:
        return self.ready.index(True) if any(self.ready) else None

    async def ready_from(self, clock: Callable[[], float], steady_s: float) -> float:
        """The clock when a dispatcher became ready and then stayed ready ``steady_s``."""
        since: float | None = None
        while True:
            ready = any(await self.next_look())
            now = clock()
            if not ready:
                since = None
            elif since is None:
                since = now
            if since is not None and now - since >= steady_s:
                return since


@dataclass
class ChaosTargets:
    """What the faults act on, owned by the driver."""

    stack: Stack
    services: list[ServiceProcess]
    """Two ``prompt serve`` with one name: one leads, one stands by. Restarted in place."""
    pilot_ids: Callable[[], list[str]]
    kill_pilot: Callable[[str], None]
    replace_pilot: Callable[[str], str]
    """Start a replacement for the pilot killed; returns its id."""
    connected_pilots: Callable[[ServiceProcess], Awaitable[set[str]]]
    pilots: int
    log_dir: Any
    settings: Any
    dispatcher_env: dict[str, str] = field(default_factory=dict)
    """Variables a restarted dispatcher gets too (e.g. PROMPT_DISPATCH_ORDER)."""


@dataclass
class Chaos:
    """Runs a schedule against the targets: ``async with Chaos(...).running(clock)``."""

    schedule: list[PlannedFault]
    targets: ChaosTargets
    config: ChaosConfig
    speed: float
    records: list[FaultRecord] = field(default_factory=list)
    watch: ReadyWatch | None = None
    _clock: Callable[[], float] = time.monotonic
    _task: asyncio.Task[None] | None = None

    def disturbed(self, since: float) -> bool:
        """Whether a fault was open (or recovered less than ``SETTLE_S`` before) at any time
        from ``since`` (wall s after the start) to now: a send in that span was delayed by the
        fault — the broker down, or the processes it restarts taking the driver's CPU on this
        one machine (in production the observatory is not on the service's nodes) — not by
        the driver."""
        for r in self.records:
            end = r.window[1]
            if end is None or end + SETTLE_S >= since:
                return True
        return False

    @staticmethod
    def maybe(
        chaos: Chaos | None, clock: Callable[[], float]
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """``chaos.running(clock)``, or nothing to do."""
        return chaos.running(clock) if chaos is not None else contextlib.nullcontext()

    async def standby_up(self, timeout: float = 60.0) -> None:
        """Until every dispatcher answers ``/readyz`` (the standby with 503)."""
        async with asyncio.timeout(timeout):
            for service in self.targets.services:
                while True:
                    if service.proc.poll() is not None:
                        raise RuntimeError(f"prompt serve exited at start-up: {service.log}")
                    with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                        await service.ready()
                        break
                    await asyncio.sleep(0.1)

    async def wait_done(self) -> None:
        """Until every fault of the schedule has been injected and has recovered (or timed
        out): the replay's events may all be sent before the last one's turn."""
        if self._task is not None:
            await asyncio.wait({self._task})

    @contextlib.asynccontextmanager
    async def running(self, clock: Callable[[], float]) -> AsyncIterator[Chaos]:
        self._clock = clock
        c = self.config
        async with ReadyWatch(lambda: self.targets.services, c.poll_s, c.idle_poll_s) as watch:
            self.watch = watch
            self._task = task = asyncio.get_running_loop().create_task(self._run())
            try:
                yield self
            finally:
                if not task.done():
                    log.warning("chaos schedule not finished by the end of the replay")
                await cancel_and_wait(task)
                for service in self.targets.services:  # a restart still due: do it now
                    if service.proc.poll() is not None:
                        self._restart_dispatcher(self.targets.services.index(service))

    async def _run(self) -> None:
        assert self.watch is not None
        self.watch.fast = True
        await self._settled()  # the standby is up before the first fault
        ready_at = 0.0
        for fault in self.schedule:
            self.watch.fast = False
            wake = max(fault.wall, ready_at)
            await asyncio.sleep(max(0.0, wake - self.config.idle_poll_s - self._clock()))
            self.watch.fast = True  # a fresh look at 50 ms before the kill
            await asyncio.sleep(max(0.0, wake - self._clock()))
            record = await self._inject(fault)
            log.info("chaos fault recovered", **record.as_dict())
            try:
                await self._settled(record)
            except TimeoutError:
                record.error = _also(record.error, "not settled (both dispatchers, pilots)")
            ready_at = self._clock() + self.config.settle_s

    async def _inject(self, fault: PlannedFault) -> FaultRecord:
        t = self.targets
        assert self.watch is not None
        now = self._clock()
        record = FaultRecord(
            fault.kind, "", fault.wall, now, time.time(), now * self.speed, fault.down_s
        )
        self.records.append(record)  # visible (recovery None) while it is open
        try:
            async with asyncio.timeout(self.config.recovery_timeout_s):
                if fault.kind == DISPATCHER:
                    await self._dispatcher(record)
                elif fault.kind == PILOT:
                    ids = sorted(t.pilot_ids())
                    victim = ids[int(fault.pick * len(ids))]
                    await self._pilot(record, victim)
                else:
                    await self._server(record, fault.kind)
                await self._pilots_back(record)
        except TimeoutError:
            record.error = f"not recovered within {self.config.recovery_timeout_s} s"
        return record

    def _since(self, record: FaultRecord) -> float:
        return round(self._clock() - record.wall_s, 3)

    async def _dispatcher(self, record: FaultRecord) -> None:
        assert self.watch is not None
        leader = self.watch.leader()
        while leader is None:  # the previous fault settled, so this is brief
            await self.watch.next_look()
            leader = self.watch.leader()
        record.wall_s = self._clock()
        record.utc = time.time()
        record.night_s = record.wall_s * self.speed
        record.target = f"dispatcher-{leader} (leader)"
        await asyncio.to_thread(self.targets.services[leader].kill)
        restart = asyncio.get_running_loop().create_task(self._restart_later(record, leader))
        try:
            await self.watch.next_look()  # a probe sent before the kill may still say ready
            while True:
                ready = await self.watch.next_look()
                if any(ready):
                    record.recovery_s = self._since(record)
                    record.leader_after = f"dispatcher-{ready.index(True)}"
                    break
        finally:
            await restart

    async def _restart_later(self, record: FaultRecord, index: int) -> None:
        await asyncio.sleep(record.down_s)
        # Off the loop: Popen waits for the child's exec, long on a loaded machine.
        await asyncio.to_thread(self._restart_dispatcher, index)
        record.restarted_s = self._since(record)

    def _restart_dispatcher(self, index: int) -> None:
        old = self.targets.services[index]
        self.targets.services[index] = start_dispatcher(
            self.targets.settings, log_dir=self.targets.log_dir, pilot_port=old.pilot_port,
            http_port=old.http_port, log_name=f"dispatcher-{index}",
            extra_env=self.targets.dispatcher_env,
        )  # fmt: skip

    async def _pilot(self, record: FaultRecord, victim: str) -> None:
        t = self.targets
        record.target = victim
        await asyncio.to_thread(t.kill_pilot, victim)
        await asyncio.sleep(record.down_s)
        replacement = await asyncio.to_thread(t.replace_pilot, victim)
        record.restarted_s = self._since(record)
        record.target = f"{victim} (replaced by {replacement})"
        while True:
            connected = await self._leader_pilots()
            if replacement in connected and len(connected) >= t.pilots:
                record.recovery_s = self._since(record)
                return
            await asyncio.sleep(self.config.pilot_poll_s)

    async def _server(self, record: FaultRecord, name: str) -> None:
        assert self.watch is not None
        stack = self.targets.stack
        server = stack.server(name)  # type: ignore[arg-type]
        record.target = f"{name} (pid {server.pid})"
        await asyncio.to_thread(stack.kill, name)  # type: ignore[arg-type]
        await asyncio.sleep(record.down_s)
        # On this thread: a server tied to its parent (a test's stack) dies when the thread
        # that started it ends (PR_SET_PDEATHSIG), so not from a worker thread.
        await stack.start(name)  # type: ignore[arg-type]
        record.restarted_s = self._since(record)
        restarted = self._clock()
        since = await self.watch.ready_from(self._clock, self.config.steady_s)
        record.recovery_s = round(max(since, restarted) - record.wall_s, 3)
        record.leader_after = f"dispatcher-{self.watch.leader()}"

    async def _leader_pilots(self) -> set[str]:
        assert self.watch is not None
        leader = self.watch.leader()
        if leader is None:
            return set()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return await self.targets.connected_pilots(self.targets.services[leader])
        return set()

    async def _pilots_back(self, record: FaultRecord) -> None:
        while len(await self._leader_pilots()) < self.targets.pilots:
            await asyncio.sleep(self.config.pilot_poll_s)
        record.pilots_back_s = self._since(record)

    async def _settled(self, record: FaultRecord | None = None) -> None:
        """Both dispatchers alive and answering (one ready), every pilot back, servers up. A
        dispatcher that exited by itself is a failure of the fault's recovery: it is noted on
        ``record`` and started again, as a supervisor would."""
        assert self.watch is not None
        async with asyncio.timeout(self.config.recovery_timeout_s):
            while True:
                for i, service in enumerate(self.targets.services):
                    code = service.proc.poll()
                    if code is not None and record is not None:
                        record.error = _also(
                            record.error, f"dispatcher-{i} exited by itself ({code}): {service.log}"
                        )
                        await asyncio.to_thread(self._restart_dispatcher, i)
                alive = all(s.proc.poll() is None for s in self.targets.services)
                await self.watch.next_look()
                if alive and self.watch.all_answer() and self.watch.leader() is not None:
                    return


def _also(error: str | None, more: str) -> str:
    return more if not error else f"{error}; {more}"


def failover_s(records: list[FaultRecord]) -> float | None:
    """The slowest dispatcher-kill recovery (None: none measured)."""
    values = [r.recovery_s for r in records if r.kind == DISPATCHER and r.recovery_s is not None]
    return max(values) if values else None
