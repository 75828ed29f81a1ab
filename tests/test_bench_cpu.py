"""The burst CPU sampler counts real processes by role, a role's descendants where told."""

from __future__ import annotations

import asyncio
import sys

import pytest

from prompt.bench.cpu import CpuSampler, available, cpu_line, summary

pytestmark = pytest.mark.skipif(not available(), reason="needs /proc/<pid>/task/*/schedstat")

# Forks a child. On "go" the process burns CPU, then tells the child, which burns as much and
# prints "done"; both then wait (the child for its parent's end).
_BURNER = r"""
import os, sys
def burn():
    n = 0
    for i in range(3_000_000):
        n += i
r, w = os.pipe()
if os.fork() == 0:
    os.close(w)
    os.read(r, 1)
    burn()
    print("done", flush=True)
    os.read(r, 1)
    os._exit(0)
os.close(r)
sys.stdin.readline()
burn()
os.write(w, b"x")
sys.stdin.readline()
"""


async def test_a_role_counts_its_process_and_its_descendants_count_for_another() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _BURNER, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        sampler = CpuSampler({"parent": [proc.pid]}, {"parent": "kids"}, window_s=0.0)
        window = sampler.start()
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        assert await proc.stdout.readline() == b"done\n"  # both have burned by now
        await sampler.end(window)
        (delta,) = sampler.samples
        assert delta["parent"] > 1.0  # three million additions in each process
        assert delta["kids"] > 1.0
        assert delta["bench"] >= 0.0
        summary = sampler.summary()
        assert summary is not None and summary["bursts"] == 1
    finally:
        proc.kill()
        await proc.wait()


def test_the_summary_and_its_line_give_every_role_and_the_total() -> None:
    samples = [{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 5.0}]
    cpu = summary(samples, 0.06)
    assert cpu["bursts"] == 2 and cpu["window_ms"] == 60.0
    assert cpu["per_role_ms"]["b"]["max"] == 5.0  # type: ignore[index]
    assert cpu["total_ms"]["max"] == 7.0  # type: ignore[index]
    assert "a 1.5  b 4.0" in cpu_line(cpu)
