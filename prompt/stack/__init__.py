"""Embedded development/test stack: PostgreSQL + Kafka-protocol broker on loopback."""

from prompt.stack.stack import (
    Endpoints,
    Stack,
    StackNotRunningError,
    StackState,
    prepare,
    resolve_database_url,
    resolve_endpoints,
    resolve_kafka_bootstrap,
)

__all__ = [
    "Endpoints",
    "Stack",
    "StackNotRunningError",
    "StackState",
    "prepare",
    "resolve_database_url",
    "resolve_endpoints",
    "resolve_kafka_bootstrap",
]
