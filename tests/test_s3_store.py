"""The S3 object store through the embedded SeaweedFS: what the pilot and workers rely on."""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr

from prompt.calib.objectstore import (
    ObjectNotFoundError,
    ObjectStoreError,
    open_store,
    read_uri,
)
from prompt.calib.s3store import S3Store, S3StoreError
from prompt.config import S3Settings
from prompt.stack import Endpoints
from prompt.stack.processes import free_port

pytestmark = pytest.mark.stack


def _s3(prompt_stack: Endpoints) -> S3Settings:
    assert prompt_stack.s3 is not None
    return prompt_stack.s3


def test_put_get_exists_and_a_missing_object(prompt_stack: Endpoints) -> None:
    s3 = _s3(prompt_stack)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://{s3.bucket_calib}/{prefix}", s3)
    assert isinstance(store, S3Store)
    assert not store.exists("calib/a.fits")
    store.put("calib/a.fits", b"x" * 1000)
    assert store.exists("calib/a.fits")
    assert store.get("calib/a.fits") == b"x" * 1000
    assert store.uri("calib/a.fits") == f"s3://{s3.bucket_calib}/{prefix}/calib/a.fits"
    # The store answered "no such key": not retriable, the pilot's missing_calibration.
    with pytest.raises(ObjectNotFoundError, match=r"calib/b\.fits"):
        store.get("calib/b.fits")
    with pytest.raises(ObjectStoreError, match="plain object key"):
        store.get("../escape")


def test_ranged_read_fetches_only_the_range(prompt_stack: Endpoints) -> None:
    s3 = _s3(prompt_stack)
    store = S3Store(s3, s3.bucket_raws)
    key = f"t-{uuid.uuid4().hex[:8]}/raw.fits"
    data = bytes(range(256)) * 400
    store.put(key, data)
    before = store.bytes_read
    assert store.get_range(key, 0, 2880) == data[:2880]
    assert store.get_range(key, 2880, 100) == data[2880:2980]
    assert store.bytes_read - before == 2980
    assert store.get_range(key, len(data) - 10, 2880) == data[-10:]  # shorter at the end


async def test_async_reads_match_the_blocking_ones(prompt_stack: Endpoints) -> None:
    s3 = _s3(prompt_stack)
    store = S3Store(s3, s3.bucket_calib)
    key = f"t-{uuid.uuid4().hex[:8]}/obj"
    await store.put_async(key, b"0123456789")
    assert await store.get_async(key) == b"0123456789"
    assert await store.get_range_async(key, 2, 3) == b"234"
    with pytest.raises(ObjectNotFoundError):
        await store.get_range_async(key + "-none", 0, 10)


def test_wrong_credentials_are_a_clear_permanent_error(prompt_stack: Endpoints) -> None:
    s3 = _s3(prompt_stack)
    secret = "not-the-secret-" + uuid.uuid4().hex
    wrong = S3Store(s3.model_copy(update={"secret_access_key": SecretStr(secret)}), s3.bucket_calib)
    with pytest.raises(S3StoreError) as err:
        wrong.get("anything.fits")
    assert not err.value.retriable
    assert "refused" in str(err.value) and s3.bucket_calib in str(err.value)
    assert secret not in str(err.value) and secret not in repr(err.value.__cause__)


def test_an_unreachable_server_is_retriable() -> None:
    s3 = S3Settings(
        endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="k",
        secret_access_key=SecretStr("s"), max_attempts=1, connect_timeout_s=1,
    )  # fmt: skip
    with pytest.raises(S3StoreError) as err:
        S3Store(s3, "bucket").get("key")
    assert err.value.retriable and not isinstance(err.value, ObjectNotFoundError)


def test_read_uri_reads_s3_with_the_environment_settings(
    prompt_stack: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pilot's worker process reads ``s3://`` raws with the PROMPT_S3_* it inherits."""
    from prompt.calib import objectstore
    from prompt.s3 import s3_env

    s3 = _s3(prompt_stack)
    for name, value in s3_env(s3).items():
        monkeypatch.setenv(name, value)
    objectstore._process_bucket.cache_clear()
    key = f"t-{uuid.uuid4().hex[:8]}/raw.fits"
    S3Store(s3, s3.bucket_raws).put(key, b"raw")
    assert read_uri(f"s3://{s3.bucket_raws}/{key}") == b"raw"
    with pytest.raises(ObjectNotFoundError):
        read_uri(f"s3://{s3.bucket_raws}/{key}.missing")
    objectstore._process_bucket.cache_clear()


def test_store_urls_are_checked(prompt_stack: Endpoints) -> None:
    with pytest.raises(ObjectStoreError, match="no S3 server"):
        open_store("s3://bucket/prefix", None)
    with pytest.raises(ObjectStoreError, match="names no bucket"):
        open_store("s3:///prefix", _s3(prompt_stack))
    with pytest.raises(ObjectStoreError, match="unsupported"):
        open_store("gs://bucket", _s3(prompt_stack))
