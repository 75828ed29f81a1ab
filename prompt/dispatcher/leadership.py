"""One active dispatcher per name: a PostgreSQL advisory lock on a watched connection, and a
leader epoch that fences every state write.

The lock is a session lock: it lives exactly as long as the connection that took it. So that
connection is dedicated (never pooled), watched by a termination listener and by pings, and
the moment it is gone the leader stops acting (``lost`` is set). A database restart drops the
lock for everyone; the deposed leader notices within one ping, and even a leader that has not
noticed yet cannot write: each state transaction checks, under a share lock, that the epoch it
was elected with is still current, and a new leader increments the epoch only after the old
leader's open transactions are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator

import asyncpg
import structlog

from prompt.aio import reraise_if_cancelled
from prompt.store.errors import DB_ERRORS, FencedError, is_transient

log = structlog.get_logger(__name__)

_ELECT = """INSERT INTO leaders (name, epoch, holder, elected_at) VALUES ($1, 1, $2, $3)
ON CONFLICT (name) DO UPDATE SET epoch = leaders.epoch + 1, holder = EXCLUDED.holder,
    elected_at = EXCLUDED.elected_at
RETURNING epoch"""
_CHECK = "SELECT epoch FROM leaders WHERE name = $1 FOR SHARE"


class Fence:
    """The epoch this process was elected with; checked inside every state transaction."""

    def __init__(self, name: str, epoch: int) -> None:
        self.name = name
        self.epoch = epoch

    async def check(self, conn: asyncpg.Connection) -> None:
        current = await conn.fetchval(_CHECK, self.name)
        if current != self.epoch:
            raise FencedError(
                f"dispatcher {self.name!r}: elected as epoch {self.epoch}, the current epoch is"
                f" {current}; another instance leads now"
            )

    @contextlib.asynccontextmanager
    async def transaction(self, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside a transaction that only commits while we lead."""
        async with pool.acquire() as conn, conn.transaction():
            await self.check(conn)
            yield conn


class Leadership:
    def __init__(
        self,
        dsn: str,
        name: str,
        *,
        holder: str,
        ping_s: float = 0.5,
        ping_timeout_s: float = 2.0,
        retry_max_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self.name = name
        self._holder = holder
        self._key = zlib.crc32(f"prompt-dispatcher:{name}".encode())
        self._ping_s = ping_s
        self._ping_timeout_s = ping_timeout_s
        self._retry_max_s = retry_max_s
        self._conn: asyncpg.Connection | None = None
        self.fence: Fence | None = None
        self.lost = asyncio.Event()
        self.why_lost = ""

    async def acquire(self, stop: asyncio.Event) -> Fence | None:
        """Wait as a hot standby until this process leads (its fence) or ``stop`` is set (None).

        Database outages are ridden out: the standby reconnects with backoff and keeps waiting.
        """
        backoff = 0.1
        announced = False
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                backoff = 0.1
                while not stop.is_set():
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key):
                        epoch = int(
                            await conn.fetchval(_ELECT, self.name, self._holder, time.time())
                        )
                        self._conn, conn = conn, None
                        self.fence = Fence(self.name, epoch)
                        self.lost = asyncio.Event()
                        self.why_lost = ""
                        self._conn.add_termination_listener(self._terminated)
                        log.info("leader elected", name=self.name, epoch=epoch)
                        return self.fence
                    if not announced:
                        log.info("another dispatcher is active; waiting as standby", name=self.name)
                        announced = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
            except DB_ERRORS as exc:
                reraise_if_cancelled()
                if not is_transient(exc):
                    raise
                log.warning("standby: database unreachable; retrying", error=repr(exc),
                            retry_in=backoff)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self._retry_max_s)
            finally:
                if conn is not None:
                    with contextlib.suppress(*DB_ERRORS):
                        await conn.close(timeout=2)
        return None

    def _terminated(self, _conn: asyncpg.Connection) -> None:
        self._lose("the lock connection was closed")

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            self.why_lost = why
            log.error("leadership lost: stopping", name=self.name, reason=why)
            self.lost.set()

    async def watch(self) -> None:
        """Ping the lock connection until it fails; then ``lost`` is set and this returns."""
        conn = self._conn
        while conn is not None and not self.lost.is_set():
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), self._ping_timeout_s)
            except DB_ERRORS as exc:
                self._lose(f"the lock connection stopped answering ({exc!r})")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), self._ping_s)

    async def release(self) -> None:
        """Give the lock up (closing its connection drops it, and the listeners with it)."""
        conn, self._conn = self._conn, None
        self.fence = None
        if conn is not None:
            conn.remove_termination_listener(self._terminated)
            with contextlib.suppress(*DB_ERRORS):
                await conn.close(timeout=2)

    @property
    def connection(self) -> asyncpg.Connection:
        """The lock connection (for LISTEN and start-up reads by the leader)."""
        assert self._conn is not None, "not the leader"
        return self._conn
