"""Settings come from PROMPT_* env vars at construction, flags override, Kafka security maps."""

from __future__ import annotations

from pathlib import Path

import pytest

from prompt.config import Settings
from prompt.kafka import aiokafka_options, confluent_config


def test_env_vars_are_read_when_settings_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPT_DATABASE_URL", "postgresql://db.example/prompt")
    monkeypatch.setenv("PROMPT_TOPIC_COMPLETION", "ops.completion")
    monkeypatch.setenv("PROMPT_TOPIC_PARTITIONS", "4")
    s = Settings()
    assert s.database_url == "postgresql://db.example/prompt"
    assert s.topics.completion == "ops.completion"
    assert s.topic_partitions == 4
    assert s.with_overrides(state_dir=Path("/x"), log_level=None).state_dir == Path("/x")
    with pytest.raises(Exception, match="frozen"):
        s.database_url = "other"


def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPT_KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON")
    with pytest.raises(ValueError, match="kafka_security_protocol"):
        Settings()


def test_sasl_ssl_reach_both_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPT_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("PROMPT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("PROMPT_KAFKA_SASL_USERNAME", "prompt")
    monkeypatch.setenv("PROMPT_KAFKA_SASL_PASSWORD", "s3cret")
    s = Settings()
    assert "s3cret" not in repr(s)
    opts = aiokafka_options(s, "kafka:9092")
    assert opts["security_protocol"] == "SASL_PLAINTEXT"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_password"] == "s3cret"
    conf = confluent_config(s, "kafka:9092")
    assert conf["security.protocol"] == "sasl_plaintext"
    assert conf["sasl.username"] == "prompt"
    assert conf["sasl.password"] == "s3cret"
