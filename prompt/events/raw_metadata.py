"""Group id and snap of a raw, from its FITS primary header (or a sidecar ``.json`` on files).

Group and snap are the same for every detector of an exposure, so they are cached per
(instrument, obs_id): only the first detector of an exposure costs a read. Where the raws are
is an object chosen once: ``FileRawHeaders`` (a root with one directory per bucket, read in a
thread) or ``S3RawHeaders`` (a ranged GET of the first header blocks from the bucket the
notification names, on the event loop: never the image itself).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from prompt.events.errors import NotificationError, RawUnavailableError
from prompt.events.models import ImageArrival
from prompt.events.notification import RawObject

if TYPE_CHECKING:
    from prompt.calib.s3store import S3Store
    from prompt.config import S3Settings, Settings

_FITS_BLOCK = 2880
_CARD = 80
MAX_HEADER_BLOCKS = 36


def parse_fits_header(data: bytes, what: str = "FITS") -> dict[str, Any] | None:
    """Keywords of a FITS primary header in ``data`` (strings, ints, floats, bools), no astropy
    needed; None if ``data`` ends before the END card (read more)."""
    header: dict[str, Any] = {}
    for i in range(0, len(data) - len(data) % _CARD, _CARD):
        card = data[i : i + _CARD].decode("ascii", "replace")
        key = card[:8].strip()
        if key == "END":
            return header
        if i == 0 and key != "SIMPLE":
            raise ValueError(f"{what}: not a FITS file (no SIMPLE card)")
        if card[8:10] == "= ":
            header[key] = _fits_value(card[10:])
    return None


def read_fits_header(path: Path, max_blocks: int = MAX_HEADER_BLOCKS) -> dict[str, Any]:
    """The primary header of a FITS file, read block by block."""
    data = b""
    with path.open("rb") as fh:
        for _ in range(max_blocks):
            block = fh.read(_FITS_BLOCK)
            if len(block) < _FITS_BLOCK:
                raise ValueError(f"{path}: truncated FITS header")
            data += block
            header = parse_fits_header(data, str(path))
            if header is not None:
                return header
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


class RawHeaders(Protocol):
    """Where the raws' metadata is read from."""

    async def read(self, raw: RawObject) -> dict[str, Any]: ...


class FileRawHeaders:
    """A file-based object store root: one directory per bucket (as the simulator writes
    without S3). A sidecar ``.json`` next to the raw wins over its header."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def read(self, raw: RawObject) -> dict[str, Any]:
        return await asyncio.to_thread(self._read, raw)

    def _read(self, raw: RawObject) -> dict[str, Any]:
        path = self.root / raw.bucket / raw.key
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            meta: dict[str, Any] = orjson.loads(sidecar.read_bytes())
            return meta
        if path.is_file():
            return read_fits_header(path)
        raise NotificationError(f"{raw.uri}: neither the raw nor its sidecar is readable")


class S3RawHeaders:
    """Ranged GETs of a raw's first header blocks from the bucket its notification names.

    ``first_blocks`` (2 x 2880 bytes by default: a camera header with its WCS fits) are
    fetched first; a longer header costs one more read of the rest, up to 36 blocks. At most
    ``concurrency`` reads run at once (the first detector of each exposure only, the rest are
    cached by the resolver); one client per bucket, made on first use."""

    def __init__(
        self, s3: S3Settings, *, first_blocks: int = 2, concurrency: int = 8,
        on_read: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        self._s3 = s3
        self._on_read = on_read
        self._first = first_blocks * _FITS_BLOCK
        self._stores: dict[str, S3Store] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self.reads = 0
        self.bytes_fetched = 0

    def _store(self, bucket: str) -> S3Store:
        store = self._stores.get(bucket)
        if store is None:
            from prompt.calib.s3store import S3Store

            store = self._stores[bucket] = S3Store(self._s3, bucket)
        return store

    async def _range(self, raw: RawObject, start: int, length: int) -> bytes:
        from prompt.calib.objectstore import ObjectNotFoundError, ObjectStoreError

        try:
            async with self._limit:
                data = await self._store(raw.bucket).get_range_async(raw.key, start, length)
        except ObjectNotFoundError as exc:
            raise NotificationError(f"{raw.uri}: the notified raw is not in the bucket") from exc
        except ObjectStoreError as exc:
            raise RawUnavailableError(f"{raw.uri}: header not readable: {exc}") from exc
        self.reads += 1
        self.bytes_fetched += len(data)
        if self._on_read is not None:
            self._on_read(len(data))
        return data

    async def read(self, raw: RawObject) -> dict[str, Any]:
        data = await self._range(raw, 0, self._first)
        header = parse_fits_header(data, raw.uri)
        limit = MAX_HEADER_BLOCKS * _FITS_BLOCK
        if header is None and len(data) == self._first and self._first < limit:
            data += await self._range(raw, self._first, limit - self._first)
            header = parse_fits_header(data, raw.uri)
        if header is None:
            raise NotificationError(f"{raw.uri}: no END card in the first {len(data)} bytes")
        return header


class RawMetadataResolver:
    """Turns a RawObject into an ImageArrival by reading its metadata from ``headers`` (a
    Path means ``FileRawHeaders`` of that root)."""

    def __init__(self, headers: RawHeaders | Path, *, cache_size: int = 4096) -> None:
        self.headers = FileRawHeaders(headers) if isinstance(headers, Path) else headers
        self._cache: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()
        self._cache_size = cache_size
        self._pending: dict[tuple[str, str], asyncio.Future[tuple[str, int]]] = {}

    def cached(self, raw: RawObject) -> ImageArrival | None:
        hit = self._cache.get((raw.instrument, raw.obs_id))
        return None if hit is None else _arrival(raw, *hit)

    async def resolve(self, raw: RawObject) -> ImageArrival:
        arrival = self.cached(raw)
        if arrival is not None:
            return arrival
        exposure = (raw.instrument, raw.obs_id)
        pending = self._pending.get(exposure)
        if pending is None:  # the first detector of an exposure reads; the others wait for it
            pending = self._pending[exposure] = asyncio.ensure_future(self._read(raw))
            pending.add_done_callback(lambda _: self._pending.pop(exposure, None))
        group_id, snap = await asyncio.shield(pending)
        return _arrival(raw, group_id, snap)

    async def _read(self, raw: RawObject) -> tuple[str, int]:
        try:
            meta = await self.headers.read(raw)
            group_id = str(meta["GROUPID"])
            snap = int(meta.get("CURINDEX", 1)) - 1
        except (NotificationError, RawUnavailableError):
            raise
        except (KeyError, ValueError, TypeError, OSError, orjson.JSONDecodeError) as exc:
            raise NotificationError(f"{raw.uri}: no usable GROUPID/CURINDEX ({exc!r})") from exc
        self._cache[(raw.instrument, raw.obs_id)] = (group_id, snap)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return group_id, snap


def raw_resolver(
    settings: Settings, s3: S3Settings | None, on_read: Callable[[int], None] | None = None
) -> RawMetadataResolver | None:
    """The resolver ``settings`` ask for: S3 ranged reads (``raws_in_s3``; ``on_read`` gets
    each read's byte count), files under ``raw_root``, or none (bucket notifications are then
    dead-lettered as unreadable)."""
    if settings.raws_in_s3:
        if s3 is None:
            raise ValueError("PROMPT_RAWS_IN_S3 is set but no S3 server is (PROMPT_S3_*)")
        return RawMetadataResolver(S3RawHeaders(s3, on_read=on_read))
    return RawMetadataResolver(settings.raw_root) if settings.raw_root else None


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
