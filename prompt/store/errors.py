"""Which database errors retrying can cure.

A lost connection, a server restarting, a deadlock: the same statement will succeed later.
A value the server refuses (a NUL byte in text, a row too large for an index, a number out of
range) fails the same way every time: retrying it wedges whoever retries. SQLSTATE classes say
which is which (PostgreSQL manual, appendix A).
"""

from __future__ import annotations

import asyncpg

# 08 connection exception, 40 transaction rollback (serialization, deadlock), 53 insufficient
# resources, 55 object not in prerequisite state (lock not available), 57 operator intervention
# (admin shutdown, cannot connect now, statement timeout), 58 system error (I/O).
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})


class FencedError(RuntimeError):
    """This dispatcher is no longer the leader: another took over. Never retry; step down."""


def is_transient(exc: BaseException) -> bool:
    """True if the same statement may succeed once the database is reachable again."""
    if isinstance(exc, FencedError):
        return False
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state[:2] in _TRANSIENT_CLASSES
    if isinstance(exc, asyncpg.exceptions.DataError):
        return False  # the client could not encode a value: the data, not the link
    # InternalClientError: a connection broken mid-operation (seen when PostgreSQL was killed
    # while the pool reset a released connection: "cannot switch to state 15; another
    # operation (2) is in progress"): that connection is unusable, a fresh one is not.
    return isinstance(
        exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
    )


def is_data_error(exc: BaseException) -> bool:
    """True if the database (or the driver) refused the values themselves."""
    return isinstance(exc, asyncpg.PostgresError | asyncpg.exceptions.DataError) and not (
        is_transient(exc) or isinstance(exc, FencedError)
    )


DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
"""What talking to the database can raise; ``is_transient`` sorts them."""
