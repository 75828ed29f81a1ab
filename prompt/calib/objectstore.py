"""A minimal object-store interface: get and put whole objects by key.

``file://`` (or a plain path) here, ``s3://bucket[/prefix]`` in ``prompt.calib.s3store``. Reads
are blocking: callers run them in a thread (the pilot) or a worker process.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

if TYPE_CHECKING:
    from prompt.calib.s3store import S3Store
    from prompt.config import S3Settings


class ObjectStoreError(Exception):
    """Raised for missing objects and unsupported store URLs."""


class ObjectNotFoundError(ObjectStoreError):
    """The store answered: there is no such object (retrying will not make one)."""


class ObjectStore(Protocol):
    def get(self, key: str) -> bytes: ...

    def put(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def uri(self, key: str) -> str: ...


class FileStore:
    """Objects as files under a root directory; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.reads = 0

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ObjectStoreError(f"key {key!r} escapes the store root")
        return path

    def get(self, key: str) -> bytes:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"no object {key!r} in {self.uri('')}") from exc
        self.reads += 1
        return data

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def uri(self, key: str) -> str:
        return f"file://{self.root}/{key}"


def open_store(url: str, s3: S3Settings | None = None) -> ObjectStore:
    """A store for ``file:///path`` (or a plain path), or ``s3://bucket[/prefix]`` reached
    with ``s3`` (the S3 settings: endpoint, credentials, region ...)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return FileStore(parsed.path if parsed.scheme else url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ObjectStoreError(f"store URL {url!r} names no bucket (s3://bucket[/prefix])")
        if s3 is None:
            raise ObjectStoreError(f"store URL {url!r}: no S3 server configured (PROMPT_S3_*)")
        from prompt.calib.s3store import S3Store

        return S3Store(s3, parsed.netloc, parsed.path)
    raise ObjectStoreError(f"unsupported store URL {url!r} (file:// or s3://)")


@functools.cache
def _process_bucket(bucket: str) -> S3Store:
    """This process's client for a bucket, from the ``PROMPT_S3_*`` environment: a pilot's
    worker processes inherit it from the pilot (see ``prompt.s3.s3_env``)."""
    from prompt.calib.s3store import S3Store
    from prompt.config import S3Settings

    return S3Store(S3Settings(), bucket)


def read_uri(uri: str) -> bytes:
    """Read one object named by a full URI (a raw's ``file://`` or ``s3://`` URI from its
    arrival event). S3 clients are made once per process and bucket."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        try:
            return Path(parsed.path).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"no object at {uri}") from exc
    if parsed.scheme == "s3" and parsed.netloc:
        return _process_bucket(parsed.netloc).get(parsed.path)
    raise ObjectStoreError(f"cannot read {uri!r}: only file:// and s3:// URIs are supported")
