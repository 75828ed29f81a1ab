"""A minimal object-store interface: get and put whole objects by key.

``file://`` (or a plain path) is implemented; another backend (S3) implements the same three
methods. Reads are blocking: callers run them in a thread (the pilot) or a worker process.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


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


def open_store(url: str) -> FileStore:
    """A store for ``file:///path`` or a plain path."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return FileStore(parsed.path if parsed.scheme else url)
    raise ObjectStoreError(f"unsupported store URL {url!r} (file:// only)")


def read_uri(uri: str) -> bytes:
    """Read one object named by a full URI (a raw's ``file://`` URI from its arrival event)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        try:
            return Path(parsed.path).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"no object at {uri}") from exc
    raise ObjectStoreError(f"cannot read {uri!r}: only file:// URIs are supported")
