"""The ObjectStore interface over S3 (AWS, Ceph RGW, SeaweedFS), with obstore.

obstore (the Rust ``object_store`` crate) was chosen by measurement (``prompt bench s3``,
docs/storage.md): it has a blocking API for the callers that already run in a thread or a
worker process (the pilot's loads, the pipeline's raw reads) and an asyncio one for the
dispatcher's ranged header reads, on one connection pool per store, with no event loop to
carry into threads.

Errors keep the distinction the pilot relies on: the server saying "no such key" is
ObjectNotFoundError (retrying will not make one); refused credentials are a non-retriable
S3StoreError; anything else (unreachable, 5xx after the client's own retries) is retriable.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from prompt.calib.objectstore import ObjectNotFoundError, ObjectStoreError
from prompt.config import S3Settings

if TYPE_CHECKING:
    import obstore.store


class S3StoreError(ObjectStoreError):
    """An S3 request failed for another reason than a missing object. ``retriable`` says
    whether asking again later can help (the client has already retried)."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


def _client(s3: S3Settings, bucket: str) -> obstore.store.S3Store:
    from obstore.store import S3Store as ObstoreS3

    config: dict[str, Any] = {
        "region": s3.region,
        "virtual_hosted_style_request": s3.addressing_style == "virtual",
    }
    if s3.endpoint_url is not None:
        config["endpoint"] = s3.endpoint_url
    if s3.access_key_id is not None:  # else the AWS_* environment chain
        config["access_key_id"] = s3.access_key_id
        if s3.secret_access_key is not None:
            config["secret_access_key"] = s3.secret_access_key.get_secret_value()
    options: dict[str, Any] = {
        "connect_timeout": timedelta(seconds=s3.connect_timeout_s),
        "timeout": timedelta(seconds=s3.read_timeout_s),
        "allow_http": bool(s3.endpoint_url and s3.endpoint_url.startswith("http://")),
    }
    if s3.ca_bundle is not None:
        options["root_certificate"] = str(s3.ca_bundle)
    retry: dict[str, Any] = {
        "max_retries": s3.max_attempts - 1,
        "retry_timeout": timedelta(seconds=s3.read_timeout_s),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=2),
        },
    }
    return ObstoreS3(bucket, config=config, client_options=options, retry_config=retry)  # type: ignore[arg-type]


class S3Store:
    """Objects in one bucket (optionally under a key prefix). One client, reused: safe to
    share between threads; each worker process makes its own (``read_uri`` caches it)."""

    def __init__(self, s3: S3Settings, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._s3 = s3
        self._client = _client(s3, bucket)
        self._lock = threading.Lock()
        self.reads = 0
        self.bytes_read = 0

    def _key(self, key: str) -> str:
        key = key.lstrip("/")
        if not key or ".." in key.split("/"):
            raise ObjectStoreError(f"key {key!r} is not a plain object key")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _count(self, data: bytes) -> bytes:
        with self._lock:
            self.reads += 1
            self.bytes_read += len(data)
        return data

    def _error(self, exc: Exception, what: str) -> ObjectStoreError:
        from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

        where = f"{self._s3.endpoint_url or 'AWS'} bucket {self.bucket}"
        if isinstance(exc, FileNotFoundError):  # obstore's "not found" (404)
            return ObjectNotFoundError(f"no object {what!r} in {where}")
        # The message may quote the request, never the secret (obstore does not print it).
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        refused = isinstance(exc, PermissionDeniedError | UnauthenticatedError) or any(
            code in str(exc)
            for code in ("AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId")
        )
        if refused:
            return S3StoreError(f"{where} refused {what!r}: {first}", retriable=False)
        return S3StoreError(f"{where}: reading {what!r} failed: {first}", retriable=True)

    def get(self, key: str) -> bytes:
        import obstore

        k = self._key(key)
        try:
            data = obstore.get(self._client, k).bytes()
        except Exception as exc:
            raise self._error(exc, k) from exc
        return self._count(bytes(data))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer if the object is shorter)."""
        import obstore

        k = self._key(key)
        try:
            data = obstore.get_range(self._client, k, start=start, length=length)
        except Exception as exc:
            raise self._error(exc, k) from exc
        return self._count(bytes(data))

    async def get_async(self, key: str) -> bytes:
        import obstore

        k = self._key(key)
        try:
            resp = await obstore.get_async(self._client, k)
            data = await resp.bytes_async()
        except Exception as exc:
            raise self._error(exc, k) from exc
        return self._count(bytes(data))

    async def get_range_async(self, key: str, start: int, length: int) -> bytes:
        import obstore

        k = self._key(key)
        try:
            data = await obstore.get_range_async(self._client, k, start=start, length=length)
        except Exception as exc:
            raise self._error(exc, k) from exc
        return self._count(bytes(data))

    def put(self, key: str, data: bytes) -> None:
        import obstore

        k = self._key(key)
        try:
            obstore.put(self._client, k, data)
        except Exception as exc:
            raise self._error(exc, k) from exc

    async def put_async(self, key: str, data: bytes) -> None:
        import obstore

        k = self._key(key)
        try:
            await obstore.put_async(self._client, k, data)
        except Exception as exc:
            raise self._error(exc, k) from exc

    def exists(self, key: str) -> bool:
        import obstore

        k = self._key(key)
        try:
            obstore.head(self._client, k)
        except Exception as exc:
            err = self._error(exc, k)
            if isinstance(err, ObjectNotFoundError):
                return False
            raise err from exc
        return True

    def uri(self, key: str) -> str:
        return (
            f"s3://{self.bucket}/{self._key(key)}" if key else f"s3://{self.bucket}/{self.prefix}"
        )
