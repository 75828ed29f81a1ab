"""A private database on a shared server, for one benchmark or replay run (and for tests)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

from prompt.store import connect, upgrade


def with_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    base, _, query = url.partition("?")
    root = base.rsplit("/", 1)[0]
    return f"{root}/{dbname}" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def scratch_database(server_url: str, prefix: str = "run") -> AsyncIterator[str]:
    """Create, migrate, yield the URL of, and finally drop a fresh database."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(server_url, name)
    conn = await connect(url)
    try:
        await upgrade(conn)
    finally:
        await conn.close()
    try:
        yield url
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
