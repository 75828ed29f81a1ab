"""``prompt bench dispatch --floor``: the least any push dispatcher could take, on this machine.

A bare uvloop server holds one open loopback TCP connection to each of N warm processes (N =
pilots x slots of the prompt run it is compared with). Per burst it hands all J jobs to the
pusher at once: t0, then one write per connection holding that connection's jobs (round-robin),
newline-delimited JSON. Each process reads its jobs in order, "starts" each (a no-op: it reads
the wall clock) and sends back the start time. burst_ms = last start - t0, both
``time.time()`` (CLOCK_REALTIME, shared by the processes of one machine), as prompt's own
burst_ms is (first image consumed -> last job started, read in the dispatcher and the workers).

Nothing here is prompt's code: no broker, no database, no scheduling, no per-job state. The
ratio prompt/floor then holds on any machine, however fast.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

from prompt.bench.cpu import CpuSampler
from prompt.stats import summarize

READY = b'{"ready":1}\n'
STOP = b'{"stop":1}\n'


@dataclass(frozen=True)
class FloorShape:
    processes: int = 8
    jobs: int = 189
    """Jobs per burst."""
    bursts: int = 20
    warmup: int = 1
    """Bursts run first and left out of the percentiles, as prompt's warm-up visits."""
    pause_s: float = 0.2
    """Between bursts: the processes are idle and waiting when a burst arrives."""
    timeout_s: float = 60.0
    cpu_window_s: float = 0.0
    """When > 0: the CPU of the pusher and the processes in this window from each t0, as
    ``prompt bench dispatch --cpu`` measures prompt's (``prompt.bench.cpu``)."""


def assign(jobs: int, processes: int) -> list[list[int]]:
    """Round-robin: job i to process i % processes."""
    return [list(range(p, jobs, processes)) for p in range(processes)]


def frames(burst: int, jobs: list[int]) -> bytes:
    """One connection's share of a burst, as the single buffer written to it."""
    return b"".join(orjson.dumps({"b": burst, "i": i, "detector": i}) + b"\n" for i in jobs)


def burst_ms(t0: float, starts: list[float]) -> float:
    """t0 (the burst handed to the pusher) -> the last job started."""
    return (max(starts) - t0) * 1e3


def ratio(prompt_p50_ms: float, floor_p50_ms: float) -> float | None:
    """prompt's figure (burst p50, CPU per burst) over the floor's; None when either is
    missing or not positive."""
    if not (prompt_p50_ms > 0 and floor_p50_ms > 0):
        return None
    return round(prompt_p50_ms / floor_p50_ms, 2)


def with_floor(result: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """The dispatch bench's result with the floor and prompt's ratio to it."""
    prompt_p50 = result["burst_ms"].get("p50", float("nan"))
    floor_p50 = floor["burst_ms"]["p50"]
    return {**result, "floor": floor, "floor_ratio_p50": ratio(prompt_p50, floor_p50)}


def floor_line(result: dict[str, Any]) -> str:
    floor = result["floor"]
    f = floor["burst_ms"]
    return (
        f"floor (bare uvloop push, {floor['processes']} warm processes, {floor['jobs']} jobs "
        f"per burst, {floor['bursts']} bursts): burst p50 {f['p50']} ms  p99 {f['p99']} ms; "
        f"prompt burst p50 {result['burst_ms'].get('p50')} ms = "
        f"{result['floor_ratio_p50']} x the floor"
    )


def worker(port: int) -> None:
    """One warm process: blocking socket, one job at a time, start time sent back at once."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(READY)
    with sock, sock.makefile("rb") as lines:
        for line in lines:
            job = orjson.loads(line)
            if "stop" in job:
                return
            started = time.time()
            sock.sendall(orjson.dumps({"b": job["b"], "i": job["i"], "start": started}) + b"\n")


class _Pusher:
    def __init__(self, shape: FloorShape) -> None:
        self.shape = shape
        self.writers: list[asyncio.StreamWriter] = []
        self.connected = asyncio.Event()
        self.starts: dict[int, list[float]] = {}
        self.done: dict[int, asyncio.Event] = {}

    async def on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if await reader.readline() != READY:
            writer.close()
            return
        self.writers.append(writer)
        if len(self.writers) == self.shape.processes:
            self.connected.set()
        while line := await reader.readline():
            ack = orjson.loads(line)
            starts = self.starts.setdefault(ack["b"], [])
            starts.append(ack["start"])
            if len(starts) == self.shape.jobs:
                self.done[ack["b"]].set()

    async def burst(self, b: int, sampler: CpuSampler | None = None) -> float:
        self.done[b] = asyncio.Event()
        shares = assign(self.shape.jobs, len(self.writers))
        window = sampler.start() if sampler is not None else None
        t0 = time.time()
        for writer, share in zip(self.writers, shares, strict=True):
            writer.write(frames(b, share))
        await asyncio.wait_for(self.done[b].wait(), self.shape.timeout_s)
        if sampler is not None and window is not None:
            await sampler.end(window)
        return burst_ms(t0, self.starts.pop(b))


async def run_floor(shape: FloorShape) -> dict[str, Any]:
    """Start the processes, run warm-up and timed bursts, stop everything; the figures."""
    pusher = _Pusher(shape)
    server = await asyncio.start_server(pusher.on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    argv = [sys.executable, "-m", "prompt.bench.floor", str(port)]
    procs = [
        await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
        for _ in range(shape.processes)
    ]
    try:
        await asyncio.wait_for(pusher.connected.wait(), shape.timeout_s)
        sampler = None
        if shape.cpu_window_s > 0:
            roots = {"processes": [p.pid for p in procs]}
            sampler = CpuSampler(roots, {}, shape.cpu_window_s, own_role="pusher")
        bursts = []
        for b in range(shape.warmup + shape.bursts):
            await asyncio.sleep(shape.pause_s)
            bursts.append(await pusher.burst(b, sampler if b >= shape.warmup else None))
        for writer in pusher.writers:
            writer.write(STOP)
            await writer.drain()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 10)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        server.close()
    timed = bursts[shape.warmup :]
    cpu = sampler.summary() if sampler is not None else None
    return ({"cpu": cpu} if cpu else {}) | {
        "processes": shape.processes,
        "jobs": shape.jobs,
        "bursts": shape.bursts,
        "burst_ms": {k: v for k, v in summarize(timed, 2).items() if k in ("p50", "p99", "max")},
        "warmup_burst_ms": [round(b, 2) for b in bursts[: shape.warmup]],
        "how": "bare uvloop server, one open loopback TCP connection per warm process, one "
        "write per connection per burst (round-robin NDJSON), each process acks each job's "
        "start time; burst = t0 (handed to the pusher) -> last job started, time.time()",
    }


def measure_floor(shape: FloorShape) -> dict[str, Any]:
    """Run the floor on its own uvloop event loop."""
    import uvloop

    return uvloop.run(run_floor(shape))


if __name__ == "__main__":
    worker(int(sys.argv[1]))
