"""Secrets from PROMPT_X or PROMPT_X_FILE, never shown by repr/str, compared in constant time."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from prompt.config import Settings
from prompt.credentials import SecretFileError, token_matches
from prompt.dispatcher.config import DispatcherConfig
from prompt.pilot import PilotConfig
from tests.helpers import run_prompt

TOKEN = "tok-5f1c0e8a9b"


@pytest.fixture(autouse=True)
def _no_prompt_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROMPT_PILOT_TOKEN", "PROMPT_OPERATOR_TOKEN", "PROMPT_KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name + "_FILE", raising=False)


def secret_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (TOKEN.encode(), TOKEN),  # a Kubernetes Secret file: no newline
        (TOKEN.encode() + b"\n", TOKEN),  # echo tok > file
        (TOKEN.encode() + b"\r\n", TOKEN),
        (TOKEN.encode() + b"\n\n", TOKEN + "\n"),  # only one newline is stripped
        (b" " + TOKEN.encode(), " " + TOKEN),
    ],
)
def test_a_secret_is_read_from_its_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes, expected: str
) -> None:
    monkeypatch.setenv("PROMPT_PILOT_TOKEN_FILE", str(secret_file(tmp_path, content)))
    token = Settings().pilot_token
    assert token is not None and token.get_secret_value() == expected


def test_every_secret_setting_takes_the_file_form(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "op").write_text("operator-secret\n")
    monkeypatch.setenv("PROMPT_OPERATOR_TOKEN_FILE", str(tmp_path / "op"))
    monkeypatch.setenv("prompt_kafka_sasl_password_file", str(secret_file(tmp_path, b"pw\n")))
    monkeypatch.setenv("PROMPT_PILOT_TOKEN", TOKEN)
    s = Settings()
    assert s.operator_token == SecretStr("operator-secret")
    assert s.kafka_sasl_password == SecretStr("pw")
    assert s.pilot_token == SecretStr(TOKEN)


def test_both_forms_of_one_secret_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMPT_PILOT_TOKEN", TOKEN)
    monkeypatch.setenv("PROMPT_PILOT_TOKEN_FILE", str(secret_file(tmp_path, b"other")))
    with pytest.raises(SecretFileError, match="PROMPT_PILOT_TOKEN and PROMPT_PILOT_TOKEN_FILE"):
        Settings()


@pytest.mark.parametrize(
    ("content", "error"), [(None, "No such file"), (b"", "is empty"), (b"\n", "is empty"),
                           (b"\xff\xfe", "not UTF-8")],
)  # fmt: skip
def test_a_bad_secret_file_names_the_variable_and_path_not_the_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes | None, error: str
) -> None:
    path = tmp_path / "missing" if content is None else secret_file(tmp_path, content)
    monkeypatch.setenv("PROMPT_OPERATOR_TOKEN_FILE", str(path))
    with pytest.raises(SecretFileError, match=error) as info:
        Settings()
    assert f"PROMPT_OPERATOR_TOKEN_FILE={path}" in str(info.value)


def test_a_bad_secret_file_stops_the_command_with_a_clear_error(tmp_path: Path) -> None:
    env = {"PROMPT_PILOT_TOKEN": TOKEN, "PROMPT_PILOT_TOKEN_FILE": str(tmp_path / "t")}
    done = run_prompt("serve", env=env)
    assert done.returncode == 2
    assert done.stderr.decode().startswith("prompt: error: configuration: PROMPT_PILOT_TOKEN and")
    assert TOKEN.encode() not in done.stderr + done.stdout


def test_no_repr_or_str_shows_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPT_PILOT_TOKEN_FILE", str(secret_file(tmp_path, TOKEN.encode())))
    monkeypatch.setenv("PROMPT_OPERATOR_TOKEN", TOKEN + "-op")
    s = Settings()
    shown = [repr(s), str(s), s.model_dump_json(), str(s.model_dump())]
    shown += [
        repr(DispatcherConfig(token=TOKEN, operator_token=TOKEN + "-op")),
        repr(PilotConfig(dispatcher="127.0.0.1:7070", token=TOKEN)),
    ]
    for text in shown:
        assert TOKEN not in text
    assert s.pilot_token is not None and s.pilot_token.get_secret_value() == TOKEN


def test_tokens_are_compared_whole() -> None:
    assert token_matches(TOKEN, TOKEN.encode())
    assert token_matches(TOKEN.encode(), TOKEN.encode())
    assert not token_matches(TOKEN[:-1], TOKEN.encode())
    assert not token_matches(TOKEN + "x", TOKEN.encode())
    assert not token_matches("", b"")  # an unset token matches nothing, not even ""
