"""Size limits and text hygiene, applied where text enters the service.

Payload output, error messages and event fields come from outside: a payload may print
megabytes or a NUL byte, a job may fail with a 2 MB message. PostgreSQL refuses NUL in text
and JSON, Kafka refuses messages over its size limit, and an operator needs the start and the
end of a message more than the middle. So text is cut and cleaned at the source, once, by the
functions here, and every limit has one name.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

LOG_LIMIT: Final = 64 * 1024
"""Characters of payload output kept per job (the end of it: where errors are)."""
ERROR_LIMIT: Final = 4096
"""Characters of an error message kept (its start and its end)."""
NAME_LIMIT: Final = 64
"""Characters of a count or stage name in a result."""
ENTRIES_LIMIT: Final = 64
"""Entries of a result's counts or stage times."""

# C0 controls and DEL, except tab, newline and carriage return; and lone surrogates, which
# cannot be encoded as UTF-8 at all.
_UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with the characters PostgreSQL or a terminal would choke on replaced by U+FFFD."""
    return _UNSAFE_TEXT.sub("\ufffd", text)


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (identifiers, keys and URIs must not)."""
    if text.isascii() and text.isprintable():  # the usual case, decided in C without a regex
        return False
    return _CONTROL.search(text) is not None


def cut_middle(text: str, limit: int) -> str:
    """At most ``limit`` characters: the start and the end, with the cut said in between."""
    if len(text) <= limit:
        return text
    marker = f" …[{len(text) - limit} characters cut]… "
    keep = max(0, limit - len(marker))
    head = keep // 2
    return text[:head] + marker + text[len(text) - (keep - head) :]


def bound_error(error: object) -> str:
    """An error message as stored and published: clean, and at most ERROR_LIMIT characters."""
    return clean_text(cut_middle(str(error), ERROR_LIMIT))


def bound_log(log: object) -> str:
    """Payload output as kept: clean, the last LOG_LIMIT characters."""
    text = str(log)
    if len(text) > LOG_LIMIT:
        text = text[-LOG_LIMIT:]
    return clean_text(text)


def preview(value: object, limit: int = 80) -> str:
    """A short, printable rendering of a value for an error message (never the whole value)."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def bound_counts(counts: object) -> dict[str, int]:
    """A result's ``counts``: string names, integer values, a bounded number of entries."""
    out: dict[str, int] = {}
    if not isinstance(counts, dict):
        return out
    for name, value in counts.items():
        if len(out) >= ENTRIES_LIMIT:
            break
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            continue
        if -(2**63) <= number < 2**63:
            out[clean_text(str(name))[:NAME_LIMIT]] = number
    return out


def bound_stages(stages: object) -> dict[str, float]:
    """A result's ``stages`` (seconds): finite numbers only, a bounded number of entries."""
    out: dict[str, float] = {}
    if not isinstance(stages, dict):
        return out
    for name, value in stages.items():
        if len(out) >= ENTRIES_LIMIT:
            break
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            continue
        if math.isfinite(number):
            out[clean_text(str(name))[:NAME_LIMIT]] = number
    return out


def finite_or_none(value: Any) -> float | None:
    """A float timestamp from a peer, or None if it is missing or not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
