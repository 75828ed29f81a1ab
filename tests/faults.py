"""Fault injection for tests: real failures of the real database, switched on by a test.

A trigger raises (or stalls) inside PostgreSQL itself, so the service sees exactly what a
refusing or slow server sends: the SQLSTATE, the message, the timing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from prompt.config import Settings
from prompt.kafka import aiokafka_options
from prompt.store import connect

_INSTALL = """
DROP SEQUENCE IF EXISTS {name}_hits;
CREATE SEQUENCE {name}_hits;
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    -- nextval is not rolled back with the failing transaction: the count holds.
    IF ({condition}) AND nextval('{name}_hits') <= {times} THEN
        PERFORM pg_sleep({sleep_s});
        {action}
    END IF;
    RETURN {ret};
END $fn$;
DROP TRIGGER IF EXISTS {name} ON {table};
CREATE TRIGGER {name} {when} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}();
"""


async def install_fault(
    settings: Settings,
    *,
    table: str,
    when: str,
    condition: str = "true",
    sqlstate: str | None = None,
    sleep_s: float = 0.0,
    times: int = 1,
) -> None:
    """A trigger on ``table`` (``when`` e.g. 'BEFORE INSERT', 'BEFORE DELETE') that, for the
    first ``times`` rows matching ``condition`` (PL/pgSQL over NEW/OLD), sleeps ``sleep_s``
    and then raises ``sqlstate`` (or just lets the row through after the sleep)."""
    action = (
        f"RAISE EXCEPTION 'injected fault on {table}' USING ERRCODE = '{sqlstate}';"
        if sqlstate
        else ""
    )
    conn = await connect(settings.database_url or "")
    try:
        await conn.execute(
            _INSTALL.format(
                name=f"fault_{table}", table=table, when=when, condition=condition,
                times=times, sleep_s=sleep_s, action=action,
                ret="OLD" if "DELETE" in when else "NEW",
            )
        )  # fmt: skip
    finally:
        await conn.close()


async def fault_hits(settings: Settings, table: str) -> int:
    """How many rows have met the fault's condition so far (those past ``times`` included:
    they went through)."""
    conn = await connect(settings.database_url or "")
    try:
        row = await conn.fetchrow(f"SELECT last_value, is_called FROM fault_{table}_hits")
        return int(row["last_value"]) if row["is_called"] else 0
    finally:
        await conn.close()


async def produce_big(settings: Settings, topic: str, value: bytes) -> None:
    """Produce one record larger than a default client allows (Kafka brokers may be set to
    take it; the embedded one does)."""
    producer = AIOKafkaProducer(
        **aiokafka_options(settings, settings.kafka_bootstrap or ""),
        max_request_size=len(value) + (1 << 20),
        enable_idempotence=False,
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def wait_db(conn: asyncpg.Connection, sql: str, *args: Any, timeout: float = 30) -> Any:
    """Poll ``sql`` until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await conn.fetchval(sql, *args)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sql!r} stayed falsy for {timeout} s")
        await asyncio.sleep(0.05)
