"""Judging the alert pipeline's output against the truth: recall, spurious detections, and
whether every alert on the topic is a valid Rubin alert packet."""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from prompt.config import Settings
from prompt.kafka import aiokafka_options
from prompt.pipeline.alerts import alert_schema, decode, exposure_id, validate
from prompt.stack import resolve_kafka_bootstrap

RECALL_SNR = 10.0
MATCH_RADIUS_PX = 1.5


async def read_all(settings: Settings, topic: str) -> list[bytes]:
    """Every message value on ``topic`` (all partitions), up to the end as of now."""
    consumer = AIOKafkaConsumer(
        **aiokafka_options(settings, resolve_kafka_bootstrap(settings)),
        enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        out: list[tuple[int, int, bytes]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                out.extend((tp.partition, m.offset, m.value) for m in msgs if m.value is not None)
        return [v for _, _, v in sorted(out)]
    finally:
        await consumer.stop()


def write_length_prefixed(path: Path, values: Iterable[bytes]) -> int:
    """Each value as a 4-byte big-endian length, then the bytes. Returns the count."""
    n = 0
    with path.open("wb") as out:
        for value in values:
            out.write(struct.pack(">I", len(value)))
            out.write(value)
            n += 1
    return n


def read_length_prefixed(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, i = [], 0
    while i < len(data):
        if i + 4 > len(data):
            raise ValueError(f"{path}: truncated length at byte {i}")
        (size,) = struct.unpack(">I", data[i : i + 4])
        if i + 4 + size > len(data):
            raise ValueError(f"{path}: truncated record at byte {i}")
        out.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    return out


def visit_of_obs_id(obs_id: str) -> int:
    """``MC_O_20250501_000012`` -> 2025050100012 (Rubin's exposure id)."""
    parts = obs_id.split("_")
    return exposure_id(int(parts[2]), int(parts[3]))


def evaluate(
    values: list[bytes], truth: list[dict[str, Any]], detector_visits: int,
    *, snr_min: float = RECALL_SNR, radius: float = MATCH_RADIUS_PX,
) -> dict[str, Any]:  # fmt: skip
    """Decode and validate every alert; match DIA sources to injected sources by position."""
    invalid: list[str] = []
    sources: dict[tuple[int, int], list[dict[str, Any]]] = {}
    sizes = []
    for i, value in enumerate(values):
        try:
            record = decode(value)
            validate(record)
        except Exception as exc:
            invalid.append(f"alert {i}: {exc}")
            continue
        sizes.append(len(value))
        dia = record["diaSource"]
        sources.setdefault((dia["visit"], dia["detector"]), []).append(dia)
    found = Counter[str]()
    wanted = Counter[str]()
    offsets: list[float] = []
    flux_ratio: list[float] = []
    near_truth: set[int] = set()
    """Alerts near any injected source (even one too faint to count for recall): not spurious."""
    bright = bright_found = 0
    for row in truth:
        key = (visit_of_obs_id(row["obs_id"]), int(row["detector"]))
        best = None
        for dia in sources.get(key, []):
            d = math.hypot(dia["x"] - row["x"], dia["y"] - row["y"])
            if d <= radius:
                near_truth.add(dia["diaSourceId"])
                if best is None or d < best[0]:
                    best = (d, dia)
        band = _bin(row["snr"])
        wanted[band] += 1
        bright += row["snr"] >= snr_min
        if best is not None:
            found[band] += 1
            bright_found += row["snr"] >= snr_min
            offsets.append(best[0])
            if best[1]["psfFlux"] is not None and row["flux"]:
                flux_ratio.append(best[1]["psfFlux"] / row["flux"])
    spurious = [
        d for group in sources.values() for d in group if d["diaSourceId"] not in near_truth
    ]
    offsets.sort()
    flux_ratio.sort()
    return {
        "schema": f"lsst-alert-packet {alert_schema().version} (id {alert_schema().schema_id})",
        "alerts": len(values),
        "alerts_valid": len(values) - len(invalid),
        "alerts_invalid": len(invalid),
        "invalid_examples": invalid[:5],
        "alert_bytes_mean": round(sum(sizes) / len(sizes)) if sizes else None,
        "injected": len(truth),
        "injected_snr_ge_10": bright,
        "recovered_snr_ge_10": bright_found,
        "recall": round(bright_found / bright, 4) if bright else None,
        "recall_by_snr": {b: f"{found[b]}/{wanted[b]}" for b in sorted(wanted, key=_bin_order)},
        "spurious": len(spurious),
        "detector_visits": detector_visits,
        "spurious_per_detector_visit": (
            round(len(spurious) / detector_visits, 4) if detector_visits else None
        ),
        "position_offset_px_p50": round(offsets[len(offsets) // 2], 3) if offsets else None,
        "flux_ratio_p50": round(flux_ratio[len(flux_ratio) // 2], 3) if flux_ratio else None,
    }


_BINS = ((0, 5), (5, 10), (10, 20), (20, math.inf))


def _bin(snr: float) -> str:
    for lo, hi in _BINS:
        if lo <= snr < hi:
            return f"{lo}-{hi}" if math.isfinite(hi) else f">={lo}"
    return "?"


def _bin_order(label: str) -> float:
    return float(label.lstrip(">=").split("-")[0])
