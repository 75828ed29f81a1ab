"""Group id and snap of a raw, from its sidecar ``.json`` or its FITS primary header.

Group and snap are the same for every detector of an exposure, so they are cached per
(instrument, obs_id): only the first detector of an exposure costs a read, done in a thread.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from prompt.events.errors import NotificationError
from prompt.events.models import ImageArrival
from prompt.events.notification import RawObject

_FITS_BLOCK = 2880
_CARD = 80


def read_fits_header(path: Path, max_blocks: int = 36) -> dict[str, Any]:
    """Keywords of a FITS primary header (strings, ints, floats, bools), no astropy needed."""
    header: dict[str, Any] = {}
    with path.open("rb") as fh:
        for _ in range(max_blocks):
            block = fh.read(_FITS_BLOCK)
            if len(block) < _FITS_BLOCK:
                raise ValueError(f"{path}: truncated FITS header")
            for i in range(0, _FITS_BLOCK, _CARD):
                card = block[i : i + _CARD].decode("ascii", "replace")
                key = card[:8].strip()
                if key == "END":
                    return header
                if card[8:10] != "= ":
                    continue
                header[key] = _fits_value(card[10:])
    raise ValueError(f"{path}: no END card in the first {max_blocks} header blocks")


def _fits_value(text: str) -> Any:
    text = text.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        while end != -1 and text[end + 1 : end + 2] == "'":
            end = text.find("'", end + 2)
        return text[1:end].replace("''", "'").rstrip()
    text = text.split("/", 1)[0].strip()
    if text in ("T", "F"):
        return text == "T"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


class RawMetadataResolver:
    """Turns a RawObject into an ImageArrival by reading its metadata under a bucket root.

    ``root`` holds one directory per bucket (a file-based object store, as the simulator writes).
    """

    def __init__(self, root: Path, *, cache_size: int = 4096) -> None:
        self._root = root
        self._cache: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()
        self._cache_size = cache_size

    def cached(self, raw: RawObject) -> ImageArrival | None:
        hit = self._cache.get((raw.instrument, raw.obs_id))
        return None if hit is None else _arrival(raw, *hit)

    async def resolve(self, raw: RawObject) -> ImageArrival:
        arrival = self.cached(raw)
        if arrival is not None:
            return arrival
        group_id, snap = await asyncio.to_thread(self._read, raw)
        self._cache[(raw.instrument, raw.obs_id)] = (group_id, snap)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return _arrival(raw, group_id, snap)

    def _read(self, raw: RawObject) -> tuple[str, int]:
        path = self._root / raw.bucket / raw.key
        sidecar = path.with_suffix(".json")
        meta: dict[str, Any]
        try:
            if sidecar.is_file():
                meta = orjson.loads(sidecar.read_bytes())
            elif path.is_file():
                meta = read_fits_header(path)
            else:
                raise NotificationError(f"{raw.uri}: neither the raw nor its sidecar is readable")
            group_id = str(meta["GROUPID"])
            snap = int(meta.get("CURINDEX", 1)) - 1
        except NotificationError:
            raise
        except (KeyError, ValueError, TypeError, OSError, orjson.JSONDecodeError) as exc:
            raise NotificationError(f"{raw.uri}: no usable GROUPID/CURINDEX ({exc!r})") from exc
        return group_id, snap


def _arrival(raw: RawObject, group_id: str, snap: int) -> ImageArrival:
    return ImageArrival(
        instrument=raw.instrument,
        group_id=group_id,
        snap=snap,
        detector=raw.detector,
        uri=raw.uri,
        obs_id=raw.obs_id,
        day_obs=raw.day_obs,
        event_time=raw.event_time,
        size=raw.size,
    )
