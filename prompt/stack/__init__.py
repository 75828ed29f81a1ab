"""Embedded development/test stack: PostgreSQL, Kafka-protocol broker and S3 on loopback."""

from prompt.stack.owned import owned_stack
from prompt.stack.stack import (
    NotEmbeddedError,
    ServerName,
    Stack,
    StackNotRunningError,
    prepare,
    resolve_database_url,
    resolve_endpoints,
    resolve_kafka_bootstrap,
    resolve_s3,
)
from prompt.stack.state import Endpoints, StackState

__all__ = [
    "Endpoints",
    "NotEmbeddedError",
    "ServerName",
    "Stack",
    "StackNotRunningError",
    "StackState",
    "owned_stack",
    "prepare",
    "resolve_database_url",
    "resolve_endpoints",
    "resolve_kafka_bootstrap",
    "resolve_s3",
]
