"""PostgreSQL state: migrations and connection helpers."""

from prompt.store.migrate import MigrationError, current_version, load_migrations, upgrade
from prompt.store.pool import connect, create_pool

__all__ = [
    "MigrationError",
    "connect",
    "create_pool",
    "current_version",
    "load_migrations",
    "upgrade",
]
