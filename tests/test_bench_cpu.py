"""The burst CPU sampler counts real processes by role, a role's descendants where told."""

from __future__ import annotations

import subprocess
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


def test_a_role_counts_its_process_and_its_descendants_count_for_another() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        sampler = CpuSampler({"parent": [proc.pid]}, {"parent": "kids"})
        before = sampler.before()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n"  # both have burned by now
        delta = CpuSampler.delta_ms(before, sampler.after())
        assert delta["parent"] > 1.0  # three million additions in each process
        assert delta["kids"] > 1.0
        assert delta["bench"] >= 0.0
    finally:
        proc.kill()
        proc.wait()


def test_the_summary_and_its_line_give_every_role_and_the_total() -> None:
    samples = [{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 5.0}]
    cpu = summary(samples, 0.06)
    assert cpu["bursts"] == 2 and cpu["window_ms"] == 60.0
    assert cpu["per_role_ms"]["b"]["max"] == 5.0  # type: ignore[index]
    assert cpu["total_ms"]["max"] == 7.0  # type: ignore[index]
    assert "a 1.5  b 4.0" in cpu_line(cpu)
