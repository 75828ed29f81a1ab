"""Child-process plumbing for the embedded stack: ports, spawning, and stopping for sure."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pwd
import random
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import psutil

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def server_port(host: str = "127.0.0.1") -> int:
    """A free port *below* the kernel's ephemeral range, for a server that will be restarted.

    While a server is down, a client reconnecting to 127.0.0.1:P from an ephemeral port can be
    given local port P itself (a TCP self-connect) and so hold the port the restarted server
    needs; ports outside the range are never handed out to outgoing connections.
    """
    low, _ = _ephemeral_range()
    for _ in range(200):
        port = random.randint(10000, max(10001, low - 1))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    return free_port(host)


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a crashed test run leaves nothing."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments that drop to ``user`` entirely: uid, primary and supplementary groups.

    Keeping root's groups would make group permission bits (often none) apply instead of
    "other" bits on root-owned directories.
    """
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
    tie_to_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a server process in its own session, output to ``log``, never through a shell."""
    preexec: Callable[[], None] | None = _die_with_parent if tie_to_parent else None
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            **as_user(user),
            start_new_session=not tie_to_parent,
            preexec_fn=preexec,
        )


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _family(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _exited(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_exited(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; return those that have not. A zombie has exited
    (it holds no port, file or shared memory): its reaper, maybe a slow init, is not waited for."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if not _exited(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if not _exited(p)]
    return left


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # if it was our child


def stop_pid(pid: int | None, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal ``pid`` and wait for it and its children to exit; SIGKILL what is left."""
    if not pid:
        return
    family = _family(pid)
    _signal_all(family[:1], sig)
    left = _wait_exited(family, timeout)
    _signal_all(left, signal.SIGKILL)
    _wait_exited(left, 5)
    _reap(pid)


def kill_family(pid: int | None, *, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` and all its descendants at once (a crash), and wait until they exited."""
    if not pid:
        return
    family = _family(pid)
    _signal_all(family, signal.SIGKILL)
    _wait_exited(family, timeout)
    _reap(pid)


async def wait_ready(
    check: Callable[[], Awaitable[bool]],
    proc: subprocess.Popen[bytes],
    *,
    what: str,
    log: Path,
    timeout: float,
    interval: float = 0.05,
) -> None:
    """Poll ``check`` (which speaks the server's protocol) until it says yes; fail at once if
    the process exits, and after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        if await check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s; see {log}")
        await asyncio.sleep(interval)


class ServerProcess:
    """One server process of the embedded stack, restartable on the same port with the same data.

    Subclasses say how to launch it and how to know it serves; this class holds the lifecycle:
    ``start`` (and wait until it answers), ``stop`` (graceful), ``kill`` (SIGKILL of the whole
    process family, like a crash). ``tie_to_parent`` makes the server die with the process
    that started it; the kernel ties it to the starting *thread*, so start from the main one.
    """

    name: ClassVar[str]
    stop_signal: ClassVar[int] = signal.SIGTERM
    stop_timeout: ClassVar[float] = 10.0
    pid: int | None

    @property
    def log(self) -> Path:
        raise NotImplementedError

    def launch(self, *, tie_to_parent: bool) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    async def answers(self) -> bool:
        """True once the server answers a real request of its protocol."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Work before launching (e.g. initdb); nothing by default."""

    async def start(self, *, tie_to_parent: bool = False, timeout: float = 30.0) -> None:
        if self.running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        await self.prepare()
        proc = self.launch(tie_to_parent=tie_to_parent)
        self.pid = proc.pid
        await wait_ready(self.answers, proc, what=self.name, log=self.log, timeout=timeout)

    def stop(self) -> None:
        stop_pid(self.pid, sig=self.stop_signal, timeout=self.stop_timeout)
        self.pid = None

    def kill(self) -> None:
        kill_family(self.pid)
        self.pid = None

    def running(self) -> bool:
        return alive(self.pid)
