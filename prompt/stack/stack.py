"""The embedded stack: private PostgreSQL, Kafka-protocol broker and S3 server; topics, buckets,
migrations.

``PROMPT_DATABASE_URL`` / ``PROMPT_KAFKA_BOOTSTRAP`` / ``PROMPT_S3_ENDPOINT_URL`` replace a part
with an external server. What was started is recorded in ``state_dir/stack.json`` so that other
commands (``prompt db upgrade``, ``prompt serve`` ...) find it and ``prompt stack down`` stops
it. Each embedded server can be killed, held down and started again on the same port with the
same data (``Stack.kill`` / ``start`` / ``restart`` / ``outage``), for fault tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import asyncpg
import structlog
from aiokafka.admin import AIOKafkaAdminClient

from prompt.config import S3Settings, Settings
from prompt.kafka import aiokafka_options, ensure_topics
from prompt.s3 import ensure_buckets, s3_client
from prompt.stack.broker import BrokerStorage, EmbeddedBroker, MemoryStorage, S3Storage
from prompt.stack.postgres import EmbeddedPostgres, private_dirs_for
from prompt.stack.processes import ServerProcess, stop_pid
from prompt.stack.seaweed import EmbeddedS3, stack_credentials
from prompt.stack.state import STATE_FILE, Endpoints, StackState
from prompt.store import connect, upgrade

log = structlog.get_logger(__name__)

ServerName = Literal["postgres", "broker", "s3"]


class StackNotRunningError(RuntimeError):
    pass


class NotEmbeddedError(RuntimeError):
    """The server asked for is external (or this stack has none): it cannot be controlled."""


def _running_state(settings: Settings) -> StackState | None:
    state = StackState.load(settings.state_dir)
    if state is None or state.orphan_pids:
        return None
    return state if not state.servers() or state.any_alive() else None


def _not_running(what: str, variable: str, settings: Settings) -> StackNotRunningError:
    return StackNotRunningError(
        f"no {what}: set {variable} or start the embedded stack "
        f"(prompt --state-dir {settings.state_dir} stack up)"
    )


def resolve_database_url(settings: Settings) -> str:
    """``PROMPT_DATABASE_URL``, else the running embedded stack's PostgreSQL."""
    if settings.database_url:
        return settings.database_url
    state = _running_state(settings)
    if state is None:
        raise _not_running("PostgreSQL", "PROMPT_DATABASE_URL", settings)
    return state.database_url


def resolve_kafka_bootstrap(settings: Settings) -> str:
    """``PROMPT_KAFKA_BOOTSTRAP``, else the running embedded stack's broker."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    state = _running_state(settings)
    if state is None:
        raise _not_running("Kafka", "PROMPT_KAFKA_BOOTSTRAP", settings)
    return state.kafka_bootstrap


def resolve_s3(settings: Settings) -> S3Settings | None:
    """``PROMPT_S3_ENDPOINT_URL`` and its credentials, else the running embedded stack's S3
    server; None if neither."""
    if settings.s3.endpoint_url is not None:
        return settings.s3
    state = _running_state(settings)
    return state.s3_settings(settings) if state is not None else None


def resolve_endpoints(settings: Settings) -> Endpoints:
    s3 = resolve_s3(settings)
    return Endpoints(resolve_database_url(settings), resolve_kafka_bootstrap(settings), s3)


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
    """Wait for PostgreSQL and Kafka, create the topics, apply migrations."""
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
    log.info(
        "stack ready",
        topics_created=created,
        migrations_applied=applied,
        database_url=endpoints.database_url,
        kafka_bootstrap=endpoints.kafka_bootstrap,
        s3_endpoint_url=endpoints.s3.endpoint_url if endpoints.s3 else None,
    )


class Stack:
    """Start/stop the embedded servers. Usable from the CLI, from code, and as a fixture."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()
        self.state: StackState | None = None
        self._tie_to_parent = False

    async def up(self, *, tie_to_parent: bool = False) -> Endpoints:
        """Start what is not running (a stack partly alive keeps its ports and data), then
        create topics and buckets and apply migrations."""
        self._tie_to_parent = tie_to_parent
        existing = StackState.load(self.state_dir)
        if existing is not None and existing.any_alive() and not existing.orphan_pids:
            self.state = existing
            await self._start_missing(existing)
            self.state.save(self.state_dir)
            endpoints = existing.endpoints(self.settings)
            await prepare(self.settings, endpoints)
            return endpoints
        if existing is not None:
            self._stop(existing)  # leftovers of a crashed run, or of an older version
        self.state = state = self._new_state()
        try:
            await self._start_missing(state)
            state.save(self.state_dir)
            endpoints = state.endpoints(self.settings)
            await prepare(self.settings, endpoints)
        except BaseException:
            self._stop(state)
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)
            raise
        return endpoints

    def _new_state(self) -> StackState:
        s = self.settings
        s3_server = None
        # With PostgreSQL and Kafka both external there is no embedded stack to complete: an
        # S3 server is then external too (or none), and nothing is left running to stop.
        all_external = s.database_url is not None and s.kafka_bootstrap is not None
        if s.s3.endpoint_url is None and not all_external:
            creds = stack_credentials(self.state_dir / "s3")
            s3_server = EmbeddedS3(self.state_dir / "s3", creds.access_key_id, region=s.s3.region)
        pg = EmbeddedPostgres.plan(self.state_dir) if s.database_url is None else None
        broker = None
        if s.kafka_bootstrap is None:
            broker = EmbeddedBroker(self.state_dir, self._broker_storage(s3_server))
        return StackState(
            database_url=pg.url if pg else s.database_url or "",
            kafka_bootstrap=broker.bootstrap if broker else s.kafka_bootstrap or "",
            postgres=pg,
            broker=broker,
            s3_server=s3_server,
            started_at=time.time(),
        )

    def _broker_storage(self, s3_server: EmbeddedS3 | None) -> BrokerStorage:
        s = self.settings
        if s.broker_storage == "memory":
            return MemoryStorage()
        if s3_server is not None:
            return S3Storage(
                s.s3.bucket_broker, s3_server.endpoint_url, s3_server.access_key_id,
                s3_server.secret_file, s3_server.region,
            )  # fmt: skip
        if s.s3.access_key_id is None or s.s3.secret_access_key is None:
            raise ValueError(
                "PROMPT_BROKER_STORAGE=s3 on an external S3 needs PROMPT_S3_ACCESS_KEY_ID and "
                "PROMPT_S3_SECRET_ACCESS_KEY (or …_FILE)"
            )
        secret_file = s.s3.secret_access_key_file
        if secret_file is None:  # the broker is restarted from stack.json: keep it privately
            secret_file = self.state_dir / "broker-s3-secret"
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(s.s3.secret_access_key.get_secret_value())
        return S3Storage(
            s.s3.bucket_broker, s.s3.endpoint_url or "", s.s3.access_key_id, secret_file,
            s.s3.region, virtual_hosted=s.s3.addressing_style == "virtual",
        )  # fmt: skip

    async def _start_missing(self, state: StackState) -> None:
        """Start every embedded server that is not running, in parallel where they do not
        depend on each other: the S3 server, then the buckets, then a broker stored in S3."""
        s3 = state.s3_settings(self.settings)
        broker = state.broker
        broker_in_s3 = broker is not None and isinstance(broker.storage, S3Storage)

        async def start(server: ServerProcess | None) -> None:
            if server is not None and not server.running():
                await server.start(tie_to_parent=self._tie_to_parent)

        async def storage_then_broker() -> None:
            server = asyncio.create_task(start(state.s3_server))
            await asyncio.sleep(0)  # let it (and PostgreSQL) launch first
            if s3 is not None:
                async with s3_client(s3) as client:  # CPU-bound set-up while servers boot
                    await server
                    created = await ensure_buckets(client, s3)
                if created:
                    log.info("buckets created", buckets=created)
            await server
            if broker_in_s3:
                await start(broker)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(storage_then_broker())
            tg.create_task(start(state.postgres))
            if not broker_in_s3:
                tg.create_task(start(broker))

    def down(self, *, purge: bool = False) -> bool:
        """Stop what this stack started. Returns False if nothing was running. ``purge`` also
        deletes its data: the state directory and what it keeps outside it."""
        state = self.state or StackState.load(self.state_dir)
        if state is not None:
            self._stop(state)
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        self.state = None
        if purge:
            self.remove_data_outside(state)
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return state is not None

    def remove_data_outside(self, state: StackState | None = None) -> None:
        """Delete what the stack keeps outside its state directory (PostgreSQL's private
        directory, see ``postgres.py``); for disposable stacks, e.g. a test session's."""
        recorded = state.postgres.private_dir if state and state.postgres else None
        for path in {*private_dirs_for(self.state_dir), recorded}:
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _stop(state: StackState) -> None:
        for server in state.servers():
            server.stop()
        for pid in state.orphan_pids:
            stop_pid(pid, sig=signal.SIGINT, timeout=15)  # PostgreSQL's fast shutdown

    def endpoints(self) -> Endpoints:
        """Where the running stack serves (after ``up``, or as recorded in ``stack.json``)."""
        state = self.state or StackState.load(self.state_dir)
        if state is None:
            raise StackNotRunningError(f"no embedded stack in {self.state_dir}")
        return state.endpoints(self.settings)

    # Fault injection: kill, hold down, start again on the same port with the same data.

    def server(self, name: ServerName) -> ServerProcess:
        state = self.state or StackState.load(self.state_dir)
        if state is None:
            raise StackNotRunningError(f"no embedded stack in {self.state_dir}")
        self.state = state
        found = {"postgres": state.postgres, "broker": state.broker, "s3": state.s3_server}[name]
        if found is None:
            raise NotEmbeddedError(f"{name} is an external server: the stack cannot restart it")
        return found

    def kill(self, name: ServerName) -> None:
        """SIGKILL the server and all its processes at once, as a crash would."""
        self.server(name).kill()
        self._save()

    def stop(self, name: ServerName) -> None:
        """Stop the server gracefully."""
        self.server(name).stop()
        self._save()

    async def start(self, name: ServerName, *, timeout: float = 60.0) -> None:
        """Start a stopped server on its port with its data; return once it serves."""
        await self.server(name).start(tie_to_parent=self._tie_to_parent, timeout=timeout)
        self._save()

    async def restart(self, name: ServerName, *, hard: bool = True) -> None:
        if hard:
            self.kill(name)
        else:
            self.stop(name)
        await self.start(name)

    @contextlib.asynccontextmanager
    async def outage(self, name: ServerName, *, hard: bool = True) -> AsyncIterator[None]:
        """The server is down (killed, or stopped) inside the block, serving again after it."""
        if hard:
            self.kill(name)
        else:
            self.stop(name)
        try:
            yield
        finally:
            await self.start(name)

    def _save(self) -> None:
        if self.state is not None:
            self.state.save(self.state_dir)

    def status(self) -> dict[str, Any]:
        state = StackState.load(self.state_dir)
        if state is None:
            return {"running": False, "state_dir": str(self.state_dir)}
        s3 = state.s3_settings(self.settings)
        return {
            "running": state.processes_alive() and not state.orphan_pids,
            "state_dir": str(self.state_dir),
            "database_url": state.database_url,
            "kafka_bootstrap": state.kafka_bootstrap,
            "s3_endpoint_url": s3.endpoint_url if s3 else None,
            "broker_storage": state.broker.storage.kind if state.broker else None,
            "postgres": _proc(state.postgres),
            "broker": _proc(state.broker),
            "s3": _proc(state.s3_server),
            "started_at": state.started_at,
        }


def _proc(server: ServerProcess | None) -> dict[str, Any]:
    if server is None:
        return {"embedded": False}
    info: dict[str, Any] = {"embedded": True, "pid": server.pid, "alive": server.running()}
    if isinstance(server, EmbeddedPostgres) and server.private_dir is not None:
        info["private_dir"] = str(server.private_dir)
        info["bin_dir"] = str(server.bin_dir)
        info["data_dir"] = str(server.data_dir)
    if isinstance(server, EmbeddedS3):
        info["ports"] = server.ports
    return info
