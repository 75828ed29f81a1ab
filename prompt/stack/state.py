"""``stack.json``: what the embedded stack started, enough to find, stop and restart it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr, TypeAdapter

from prompt.config import S3Settings, Settings
from prompt.stack.broker import EmbeddedBroker
from prompt.stack.postgres import EmbeddedPostgres
from prompt.stack.processes import ServerProcess, alive
from prompt.stack.seaweed import EmbeddedS3

STATE_FILE = "stack.json"


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    kafka_bootstrap: str
    s3: S3Settings | None = None
    """Complete S3 settings (endpoint, credentials, region) when there is an S3 server."""


@dataclass
class StackState:
    database_url: str
    kafka_bootstrap: str
    postgres: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    s3_server: EmbeddedS3 | None = None
    started_at: float = 0.0
    orphan_pids: list[int] = field(default_factory=list)
    """Servers recorded by an older version of this file: only stopped."""

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        raw: dict[str, Any] = orjson.loads(path.read_bytes())
        if "postgres_pid" in raw or "broker_pid" in raw:
            pids = [raw.get("postgres_pid"), raw.get("broker_pid")]
            return cls(
                raw["database_url"], raw["kafka_bootstrap"], orphan_pids=[p for p in pids if p]
            )
        return _adapter().validate_python(raw)

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / (STATE_FILE + ".tmp")
        tmp.write_bytes(_adapter().dump_json(self, indent=2))
        tmp.replace(state_dir / STATE_FILE)

    def servers(self) -> list[ServerProcess]:
        """The embedded servers, in the order they are stopped (the broker may keep its logs
        in the S3 server: it goes first)."""
        found: list[ServerProcess | None] = [self.broker, self.postgres, self.s3_server]
        return [s for s in found if s is not None]

    def any_alive(self) -> bool:
        return any(s.running() for s in self.servers()) or any(alive(p) for p in self.orphan_pids)

    def processes_alive(self) -> bool:
        return bool(self.servers()) and all(s.running() for s in self.servers())

    def s3_settings(self, settings: Settings) -> S3Settings | None:
        """The S3 server clients should use: the external one, else the stack's."""
        if settings.s3.endpoint_url is not None:
            return settings.s3
        server = self.s3_server
        if server is None:
            return None
        return settings.s3.model_copy(
            update={
                "endpoint_url": server.endpoint_url,
                "access_key_id": server.access_key_id,
                "secret_access_key": SecretStr(server.secret_file.read_text().strip()),
                "secret_access_key_file": server.secret_file,
                "region": server.region,
                "addressing_style": "path",
            }
        )

    def endpoints(self, settings: Settings) -> Endpoints:
        return Endpoints(self.database_url, self.kafka_bootstrap, self.s3_settings(settings))


@functools.cache
def _adapter() -> TypeAdapter[StackState]:
    return TypeAdapter(StackState)
