"""The embedded stack: private PostgreSQL + Kafka-protocol broker, topics, migrations.

``PROMPT_DATABASE_URL`` / ``PROMPT_KAFKA_BOOTSTRAP`` replace either part with an external
server. What was started is recorded in ``state_dir/stack.json`` so that other commands
(``prompt db upgrade``, ``prompt serve`` ...) find it and ``prompt stack down`` stops it.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import structlog
from aiokafka.admin import AIOKafkaAdminClient

from prompt.config import Settings
from prompt.kafka import aiokafka_options, ensure_topics
from prompt.stack.broker import EmbeddedBroker
from prompt.stack.postgres import EmbeddedPostgres
from prompt.stack.processes import alive, free_port, stop_pid
from prompt.store import connect, upgrade

log = structlog.get_logger(__name__)

STATE_FILE = "stack.json"


class StackNotRunningError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    kafka_bootstrap: str


@dataclass
class StackState:
    database_url: str
    kafka_bootstrap: str
    postgres_pid: int | None = None
    broker_pid: int | None = None
    started_at: float = 0.0

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        return cls(**orjson.loads(path.read_bytes()))

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / (STATE_FILE + ".tmp")
        tmp.write_bytes(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))
        tmp.replace(state_dir / STATE_FILE)

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.database_url, self.kafka_bootstrap)

    def processes_alive(self) -> bool:
        return all(alive(p) for p in (self.postgres_pid, self.broker_pid) if p)


def _running_state(settings: Settings) -> StackState | None:
    state = StackState.load(settings.state_dir)
    return state if state is not None and state.processes_alive() else None


def resolve_database_url(settings: Settings) -> str:
    """``PROMPT_DATABASE_URL``, else the running embedded stack's PostgreSQL."""
    if settings.database_url:
        return settings.database_url
    state = _running_state(settings)
    if state is None:
        raise StackNotRunningError(
            "no PostgreSQL: set PROMPT_DATABASE_URL or start the embedded stack "
            f"(prompt --state-dir {settings.state_dir} stack up)"
        )
    return state.database_url


def resolve_kafka_bootstrap(settings: Settings) -> str:
    """``PROMPT_KAFKA_BOOTSTRAP``, else the running embedded stack's broker."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    state = _running_state(settings)
    if state is None:
        raise StackNotRunningError(
            "no Kafka: set PROMPT_KAFKA_BOOTSTRAP or start the embedded stack "
            f"(prompt --state-dir {settings.state_dir} stack up)"
        )
    return state.kafka_bootstrap


def resolve_endpoints(settings: Settings) -> Endpoints:
    return Endpoints(resolve_database_url(settings), resolve_kafka_bootstrap(settings))


async def wait_for_postgres(url: str, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=2)
            try:
                await conn.fetchval("SELECT 1")
                return
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"PostgreSQL at {url} not ready after {within_s:.0f} s: {exc!r}"
                ) from exc
            await asyncio.sleep(0.1)


async def wait_for_kafka(settings: Settings, bootstrap: str, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        admin = AIOKafkaAdminClient(**aiokafka_options(settings, bootstrap))
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Kafka at {bootstrap} not ready after {within_s:.0f} s: {exc!r}"
                ) from exc
            await asyncio.sleep(0.2)
        finally:
            await admin.close()


async def prepare(settings: Settings, endpoints: Endpoints) -> None:
    """Wait for both servers, create the topics, apply migrations."""
    await asyncio.gather(
        wait_for_postgres(endpoints.database_url),
        wait_for_kafka(settings, endpoints.kafka_bootstrap),
    )
    created = await ensure_topics(settings, endpoints.kafka_bootstrap)
    conn = await connect(endpoints.database_url)
    try:
        applied = await upgrade(conn)
    finally:
        await conn.close()
    log.info("stack ready", topics_created=created, migrations_applied=applied, **asdict(endpoints))


class Stack:
    """Start/stop the embedded servers. Usable from the CLI, from code, and as a fixture."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()
        self.state: StackState | None = None

    async def up(self, *, tie_to_parent: bool = False) -> Endpoints:
        existing = StackState.load(self.state_dir)
        if existing is not None and existing.processes_alive():
            self.state = existing
            await prepare(self.settings, existing.endpoints)
            return existing.endpoints
        if existing is not None:
            self._stop(existing)  # half-dead leftovers of a crashed run
        pg: EmbeddedPostgres | None = None
        broker: EmbeddedBroker | None = None
        try:
            db_url = self.settings.database_url
            if db_url is None:
                pg = EmbeddedPostgres(self.state_dir / "pgdata", free_port())
                pg.start(tie_to_parent=tie_to_parent)
                db_url = pg.url
            bootstrap = self.settings.kafka_bootstrap
            if bootstrap is None:
                broker = EmbeddedBroker(self.state_dir, free_port())
                broker.start(tie_to_parent=tie_to_parent)
                bootstrap = broker.bootstrap
            self.state = StackState(
                database_url=db_url,
                kafka_bootstrap=bootstrap,
                postgres_pid=pg.pid if pg else None,
                broker_pid=broker.pid if broker else None,
                started_at=time.time(),
            )
            self.state.save(self.state_dir)
            await prepare(self.settings, self.state.endpoints)
        except BaseException:
            for server in (broker, pg):
                if server is not None:
                    server.stop()
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)
            raise
        return self.state.endpoints

    def down(self, *, purge: bool = False) -> bool:
        """Stop what this stack started. Returns False if nothing was running."""
        state = self.state or StackState.load(self.state_dir)
        if state is None:
            return False
        self._stop(state)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        self.state = None
        if purge:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return True

    @staticmethod
    def _stop(state: StackState) -> None:
        stop_pid(state.broker_pid, timeout=10)
        if state.postgres_pid:
            EmbeddedPostgres(Path("."), 0, pid=state.postgres_pid).stop()

    def status(self) -> dict[str, Any]:
        state = StackState.load(self.state_dir)
        if state is None:
            return {"running": False, "state_dir": str(self.state_dir)}
        return {
            "running": state.processes_alive(),
            "state_dir": str(self.state_dir),
            "database_url": state.database_url,
            "kafka_bootstrap": state.kafka_bootstrap,
            "postgres": _proc(state.postgres_pid),
            "broker": _proc(state.broker_pid),
            "started_at": state.started_at,
        }


def _proc(pid: int | None) -> dict[str, Any]:
    if pid is None:
        return {"embedded": False}
    return {"embedded": True, "pid": pid, "alive": alive(pid)}
