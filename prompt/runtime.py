"""Process tuning for the latency-critical services (dispatcher, pilot)."""

from __future__ import annotations

import gc


def freeze_startup_objects(gen0_threshold: int = 20_000, gen2_threshold: int = 100) -> None:
    """Call once start-up is done. Objects alive now (modules, schemas, pools, config) move to
    the permanent generation and are never scanned again; young collections run less often,
    full ones far less often. Measured on the dispatch bench: collections of 2-19 ms in pilots,
    and a full collection at the same visit of every run (burst 53-63 ms instead of ~20 ms).
    The dispatcher breaks its own reference cycles (finished visits), so little waits for them."""
    gc.collect()
    gc.freeze()
    _, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2_threshold)
