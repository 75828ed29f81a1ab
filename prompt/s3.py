"""S3 clients from the one Settings object (``PROMPT_S3_*``), and the buckets the service uses.

aiobotocore (botocore's signing, retries and error model on aiohttp) works with AWS, Ceph RGW,
SeaweedFS and MinIO alike; everything that differs between them is a setting here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from prompt.config import S3Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# Codes that mean "this will not get better by asking again".
_PERMANENT = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName",
    "BucketAlreadyExists", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
    "InvalidLocationConstraint", "InvalidArgument",
}  # fmt: skip


class S3Error(RuntimeError):
    """An S3 request failed. ``retriable`` says whether asking again later can help (the
    client has already retried ``max_attempts`` times)."""

    def __init__(self, message: str, *, code: str, retriable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable


def client_options(s3: S3Settings) -> dict[str, Any]:
    """Keyword arguments for ``session.create_client("s3", ...)``."""
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": s3.addressing_style},
        connect_timeout=s3.connect_timeout_s,
        read_timeout=s3.read_timeout_s,
        retries={"max_attempts": s3.max_attempts, "mode": "standard"},
        # Newer botocore adds CRC checksums to every upload by default; Ceph before Squid and
        # other S3 servers reject or mishandle them. Only where the API requires one.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    opts: dict[str, Any] = {
        "endpoint_url": s3.endpoint_url,
        "region_name": s3.region,
        "config": config,
    }
    if s3.ca_bundle is not None:
        opts["verify"] = str(s3.ca_bundle)
    if s3.access_key_id is not None:  # else botocore's chain: AWS_* env, ~/.aws, instance role
        opts["aws_access_key_id"] = s3.access_key_id
        if s3.secret_access_key is not None:
            opts["aws_secret_access_key"] = s3.secret_access_key.get_secret_value()
    return opts


@contextlib.asynccontextmanager
async def s3_client(s3: S3Settings) -> AsyncIterator[S3Client]:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", **client_options(s3)) as client:
        yield client


def as_s3_error(exc: Exception, what: str, s3: S3Settings) -> S3Error:
    """A botocore error as an S3Error saying what was asked of which server."""
    from botocore.exceptions import ClientError

    where = s3.endpoint_url or "the default AWS endpoint"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "unknown"))
        message = f"{what} at {where}: {code} {err.get('Message', '')}".strip()
        return S3Error(message, code=code, retriable=code not in _PERMANENT)
    return S3Error(f"{what} at {where}: {exc}", code=type(exc).__name__, retriable=True)


async def ensure_buckets(client: S3Client, s3: S3Settings) -> list[str]:
    """Create the service's buckets (``s3.buckets()``) if missing. Returns those created."""
    from botocore.exceptions import BotoCoreError, ClientError

    created = []
    for name in s3.buckets():
        try:
            try:
                await client.head_bucket(Bucket=name)
                continue
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                    raise
            kwargs: dict[str, Any] = {}
            if s3.region != "us-east-1":  # AWS wants the region; Ceph its zonegroup name
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": s3.region}
            try:
                await client.create_bucket(Bucket=name, **kwargs)
                created.append(name)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise
        except (ClientError, BotoCoreError) as exc:
            raise as_s3_error(exc, f"creating bucket {name}", s3) from exc
    return created


def s3_env(s3: S3Settings) -> dict[str, str]:
    """``PROMPT_S3_*`` variables that make a child process (or a pilot's workers) reach the
    same S3 server. The secret goes by file when it came from one."""
    env = {
        "PROMPT_S3_REGION": s3.region,
        "PROMPT_S3_ADDRESSING_STYLE": s3.addressing_style,
        "PROMPT_S3_CONNECT_TIMEOUT_S": str(s3.connect_timeout_s),
        "PROMPT_S3_READ_TIMEOUT_S": str(s3.read_timeout_s),
        "PROMPT_S3_MAX_ATTEMPTS": str(s3.max_attempts),
        "PROMPT_S3_BUCKET_RAWS": s3.bucket_raws,
        "PROMPT_S3_BUCKET_CALIB": s3.bucket_calib,
        "PROMPT_S3_BUCKET_BROKER": s3.bucket_broker,
    }
    if s3.endpoint_url is not None:
        env["PROMPT_S3_ENDPOINT_URL"] = s3.endpoint_url
    if s3.access_key_id is not None:
        env["PROMPT_S3_ACCESS_KEY_ID"] = s3.access_key_id
    if s3.secret_access_key_file is not None:
        env["PROMPT_S3_SECRET_ACCESS_KEY_FILE"] = str(s3.secret_access_key_file)
    elif s3.secret_access_key is not None:
        env["PROMPT_S3_SECRET_ACCESS_KEY"] = s3.secret_access_key.get_secret_value()
    if s3.ca_bundle is not None:
        env["PROMPT_S3_CA_BUNDLE"] = str(s3.ca_bundle)
    return env
