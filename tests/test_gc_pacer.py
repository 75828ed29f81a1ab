"""The replay driver's garbage collection happens in the schedule's gaps, not mid-burst."""

from __future__ import annotations

import gc
import weakref

from loadtest.progress import GcPacer


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def _garbage() -> weakref.ref[_Node]:
    return weakref.ref(_Node())


def test_collects_only_in_a_gap_or_when_overdue_and_gives_the_collector_back() -> None:
    pacer = GcPacer(gap_s=0.05, every_s=0.0, max_every_s=3600.0)
    try:
        pacer.start()
        assert not gc.isenabled()
        frozen = gc.get_freeze_count()
        assert frozen > 0  # the start-up heap is out of the collector's sight
        cycle = _garbage()
        pacer.idle(0.0)  # the next event is due now: no collection in a burst
        assert cycle() is not None
        pacer.idle(0.2)  # a gap: what is new is collected
        assert cycle() is None
        kept = _Node()
        pacer.idle(0.2)
        assert gc.get_freeze_count() > frozen  # survivors are frozen too, not scanned again
        del kept
        overdue = GcPacer(gap_s=0.05, every_s=0.0, max_every_s=0.0)
        cycle = _garbage()
        overdue.idle(0.0)  # no gap, but a collection is overdue
        assert cycle() is None
    finally:
        GcPacer.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0
