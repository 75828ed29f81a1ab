"""The one typed settings object, built at start-up from ``PROMPT_*`` env vars and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from prompt.credentials import SecretFileSettings


class Topics(BaseSettings):
    """Kafka topic names. Defaults follow the Rubin names where Rubin has one."""

    model_config = SettingsConfigDict(env_prefix="PROMPT_TOPIC_", frozen=True)

    next_visit: str = "lsst.sal.ScriptQueue.logevent_nextVisit"
    next_visit_canceled: str = "lsst.sal.ScriptQueue.logevent_nextVisitCanceled"
    image_arrival: str = "prompt.image-arrival"
    completion: str = "prompt.completion"
    alerts: str = "prompt.alerts"
    dead_letter: str = "prompt.dead-letter"

    def suffixed(self, suffix: str) -> Topics:
        """The same topics with ``.suffix`` appended: private topics for one run or test."""
        return Topics(**{field: f"{name}.{suffix}" for field, name in self.model_dump().items()})

    def all(self) -> list[str]:
        return [
            self.next_visit,
            self.next_visit_canceled,
            self.image_arrival,
            self.completion,
            self.alerts,
            self.dead_letter,
        ]


class S3Settings(SecretFileSettings):
    """An S3-compatible object store (AWS, Ceph RGW, SeaweedFS ...).

    ``endpoint_url`` unset means "the embedded stack's S3 server": the stack starts one and
    records its endpoint and credentials; set, it names an external server and none is started.
    """

    model_config = SettingsConfigDict(env_prefix="PROMPT_S3_", frozen=True)

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    """Or ``PROMPT_S3_SECRET_ACCESS_KEY_FILE``: a file holding it (read by the generic
    ``_FILE`` source, see credentials.py)."""
    secret_access_key_file: Path | None = None
    """The file the secret came from, if it did (the stack hands it on by path)."""
    region: str = "us-east-1"
    """Signing region (SigV4). Ceph RGW accepts its zonegroup name, or ``us-east-1``."""
    addressing_style: Literal["path", "virtual"] = "path"
    """path: ``https://host/bucket/key`` (Ceph, SeaweedFS, MinIO); virtual: ``https://bucket.host/key``."""
    ca_bundle: Path | None = None
    """PEM file of the CA that signed the endpoint's certificate (private Ceph deployments)."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    """Attempts per request (the first included) on throttling, 5xx and connection errors."""

    bucket_raws: str = "rubin-summit"
    bucket_calib: str = "prompt-calib"
    """Calibrations and templates."""
    bucket_broker: str = "prompt-broker"
    """The embedded broker's log storage (``PROMPT_BROKER_STORAGE=s3``)."""

    def buckets(self) -> list[str]:
        return [self.bucket_raws, self.bucket_calib, self.bucket_broker]


class Settings(SecretFileSettings):
    """Process-wide configuration. Construct once in ``main`` and pass it down; never at import.

    Every ``SecretStr`` field can also be given as a file: ``PROMPT_<FIELD>_FILE`` (see
    ``prompt/credentials.py``)."""

    model_config = SettingsConfigDict(env_prefix="PROMPT_", frozen=True, extra="ignore")

    # Endpoints. Unset means "use the embedded stack recorded in state_dir".
    database_url: str | None = None
    kafka_bootstrap: str | None = None
    schema_registry_url: str | None = None

    # Standard Kafka client security settings (honoured by aiokafka and confluent-kafka).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    topic_partitions: int = Field(default=1, ge=1)
    kafka_fetch_max_wait_ms: int = Field(default=10, ge=0)
    """Upper bound a fetch is parked at the broker. Kafka answers as soon as data arrives;
    some brokers (tansu) only at the end of the wait, so keep it short: it bounds latency,
    and costs only idle fetch round trips."""

    topics: Topics = Field(default_factory=Topics)
    s3: S3Settings = Field(default_factory=S3Settings)
    broker_storage: Literal["memory", "s3"] = "memory"
    """Where the embedded broker (tansu) keeps its logs: ``memory`` (lost when it stops) or
    ``s3`` (the stack's S3, bucket ``s3.bucket_broker``: acknowledged records survive a
    broker restart, as on Kafka)."""

    # Dispatcher.
    dispatcher_name: str = "dispatcher"
    pilot_host: str = "127.0.0.1"
    pilot_port: int = Field(default=7070, ge=0, le=65535)
    pilot_token: SecretStr | None = None
    """Shared secret pilots authenticate with."""
    # Pilot channel TLS (PEM files), read once at start-up by prompt/channel/tls.py. Dispatcher:
    # cert + key turn TLS on; client_ca makes it mutual (pilots must present a certificate
    # signed by it). Pilot: ca turns TLS on and is the only trust anchor for the dispatcher's
    # certificate; server_name is the name expected in it (default: the host dialled);
    # client_cert + client_key are its own certificate for mutual TLS.
    pilot_tls_cert: Path | None = None
    pilot_tls_key: Path | None = None
    pilot_tls_client_ca: Path | None = None
    pilot_tls_ca: Path | None = None
    pilot_tls_server_name: str | None = None
    pilot_tls_client_cert: Path | None = None
    pilot_tls_client_key: Path | None = None
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    """/metrics, /healthz, /status, /ui; 0 picks a free port."""
    pilot_http_host: str = "127.0.0.1"
    pilot_http_port: int | None = Field(default=None, ge=0, le=65535)
    """Pilots: /healthz, /readyz, /metrics on this port; unset: none (several pilots share a
    host in ``prompt dev``, replays and tests, so no fixed default); 0 picks a free port."""
    operator_token: SecretStr | None = None
    """Bearer token for the HTTP endpoints that show job output and errors (/jobs/{id}/log,
    /ui/stream, /ui/snapshot); unset: they answer 403."""
    heartbeat_timeout_s: float = Field(default=5.0, gt=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    """The dispatcher's: on stop, how long to wait for jobs on pilots. (A pilot's own drain is
    bounded by ``prompt pilot --drain-timeout-s``.)"""
    start_from: Literal["latest", "earliest"] = "latest"
    dependency_retry_s: float = Field(default=60.0, gt=0)
    """How long an event or a state commit waits for an unreachable database before the
    leader steps down (and contends again); the event is read again, nothing is lost."""
    stall_after_s: float = Field(default=5.0, gt=0)
    """/readyz reports a part of the leader stalled after this long without progress."""
    affinity_wait_s: float = Field(default=10.0, ge=0)
    """How long a ready job waits for the busy pilot holding its calibrations before another
    pilot takes it (and loads them again)."""
    dispatch_order: Literal["feasible", "fifo"] = "feasible"
    """The order ready jobs go out in when they outnumber slots: ``feasible`` is earliest
    deadline first among the jobs that can still make it (by their task's recent run time),
    then the hopeless ones (still run, reported late); ``fifo`` is first come first served by
    image arrival, the baseline to compare."""
    backlog_per_pilot: int = Field(default=256, ge=0)
    """Jobs a pilot may hold queued beyond its slots at most (fewer for long jobs), started the
    moment a worker frees; the dispatcher takes them back for a pilot that would idle."""
    dispatch_mode: Literal["warm", "cold"] = "warm"
    poll_s: float = Field(default=2.0, gt=0)
    """cold mode: how often pilots ask for work (the dispatcher tells them)."""
    """cold is the comparison baseline (no resurrection, no preload, polling pilots)."""
    raws_in_s3: bool = False
    """Bucket notifications: read each raw's group and snap from its FITS header in S3 (the
    bucket the notification names, on the ``s3`` server: ``PROMPT_S3_*`` or the embedded
    stack's) with a ranged GET of the first header blocks, never the whole image."""
    raw_root: Path | None = None
    """Bucket notifications, without S3: a file-based object store root (one directory per
    bucket), read for each raw's sidecar or FITS header."""
    calib_root: str | None = None
    """Pilots: object store holding calibrations and templates, ``s3://bucket[/prefix]`` (on
    the ``s3`` server) or ``file:///path``; unset means synthetic stand-in calibrations (for
    the ``sleep`` payload)."""

    state_dir: Path = Path(".prompt/stack")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields replaced (CLI flags win over the environment)."""
        kept = {k: v for k, v in changes.items() if v is not None}
        return self.model_copy(update=kept)
