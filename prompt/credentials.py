"""Secrets given as ``PROMPT_X`` or in a file named by ``PROMPT_X_FILE``; constant-time checks.

Every ``SecretStr`` field of a settings class built on :class:`SecretFileSettings` accepts the
``_FILE`` form (the Kubernetes Secret volume / Docker secret convention), with no code per
field. Setting both forms of one secret is an error: a silent winner would hide a stale value.
One trailing newline is stripped (``echo tok > file`` writes one; a Kubernetes Secret file has
none); anything else in the file is the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

FILE_SUFFIX = "_FILE"


class SecretFileError(ValueError):
    """A ``*_FILE`` secret is missing, unreadable, empty, or set together with its plain form.

    Not retriable: the configuration must change. The message names the variable and the path,
    never the content."""


def read_secret_file(variable: str, path: Path) -> str:
    """The secret in ``path`` (named by env var ``variable``), minus one trailing newline."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SecretFileError(f"{variable}={path}: cannot read it ({exc.strerror})") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise SecretFileError(f"{variable}={path}: not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise SecretFileError(f"{variable}={path}: the file is empty")
    return text


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return SecretStr in get_args(annotation)
    return False


class SecretFileSource(PydanticBaseSettingsSource):
    """Settings source: ``{env_prefix}{FIELD}_FILE`` names a file holding that secret field.

    It comes after the environment source; the conflict check looks at the environment itself,
    so the order only matters for init arguments (they win).
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", ""))
        environ = {k.upper(): v for k, v in os.environ.items()}
        found: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if not _is_secret(field.annotation):
                continue
            variable = f"{prefix}{name}".upper()
            file_variable = variable + FILE_SUFFIX
            path = environ.get(file_variable)
            if path is None:
                continue
            if variable in environ:
                raise SecretFileError(f"{variable} and {file_variable} are both set: set one")
            found[name] = SecretStr(read_secret_file(file_variable, Path(path)))
        return found


class SecretFileSettings(BaseSettings):
    """Base for settings classes whose ``SecretStr`` fields also accept the ``_FILE`` form."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = SecretFileSource(settings_cls)
        return init_settings, env_settings, files, dotenv_settings, file_secret_settings


def token_matches(given: str | bytes, expected: bytes) -> bool:
    """Constant-time comparison (hashed first, so not even the length leaks); an empty expected
    token matches nothing."""
    if not expected:
        return False
    given_bytes = given.encode() if isinstance(given, str) else given
    return hmac.compare_digest(
        hashlib.sha256(given_bytes).digest(), hashlib.sha256(expected).digest()
    )
