"""OpenTelemetry: one trace from the GraphQL request through the enqueue to the worker's
run, with the database, Redis and HTTP calls of both as child spans.

- `setup(service, settings)` installs an SDK tracer provider exporting OTLP/HTTP to
  OTEL_EXPORTER_OTLP_ENDPOINT; without it nothing is exported, and unless some other code
  installed an SDK provider (a test's in-memory exporter), nothing is instrumented either.
- The api's request span is the parent of everything the request does; `traceparent()`
  captures it (W3C trace context) when a task is submitted, and the task row keeps it, so
  the worker's `task_span` continues the same trace, whichever worker runs it and however
  often it is re-enqueued.
- A database, Redis or HTTP call is recorded only inside a trace (`SAMPLER`): alone, it is a
  background loop's (a worker polls its queues 20 times a second), not a trace of its own.
- Secrets in URLs never reach a span: the api's server spans and httpx's client spans go
  through `redact_span`, which blanks the values of sensitive query parameters (compared
  without regard to case; OpenTelemetry's own list is case-sensitive and misses the
  artifact links' `signature` and the dashboard's `key`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from asyncpg.connection import LoggedQuery
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, TraceState
from opentelemetry.util.http import PARAMS_TO_REDACT, remove_url_credentials
from opentelemetry.util.types import Attributes
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner.config import Settings

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("taskrunner")
_instrumented: set[str] = set()


class NoRootClientSpans(Sampler):
    """The root sampler: a trace may start with a request (SERVER) or a task run (CONSUMER),
    never with a client call (PostgreSQL, Redis, HTTP) made outside of one."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Any = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "NoRootClientSpans"


# Within a sampled trace everything is recorded; a root is recorded unless it is a call.
SAMPLER = ParentBased(root=NoRootClientSpans())


def setup(service: str, settings: Settings) -> None:
    """Export to OTEL_EXPORTER_OTLP_ENDPOINT when it is set (once per process)."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if endpoint and not enabled():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        name = os.environ.get("OTEL_SERVICE_NAME") or service
        provider = TracerProvider(resource=Resource.create({"service.name": name}), sampler=SAMPLER)
        exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        log.info("tracing: exporting spans of %s to %s", name, endpoint)
    if enabled() and "httpx" not in _instrumented:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument(
            request_hook=redact_span, async_request_hook=redact_span_async
        )
        _instrumented.add("httpx")
    if enabled() and "redis" not in _instrumented:
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument()
        _instrumented.add("redis")


# Query parameters whose values are credentials, compared in lower case: OpenTelemetry's
# own (AWSAccessKeyId, Signature, sig, X-Goog-Signature), the artifact links' `signature`,
# the dashboard's `key`, and the rest of a presigned S3 URL's credentials.
REDACTED_PARAMS = frozenset(
    name.lower()
    for name in (
        *PARAMS_TO_REDACT,
        "signature",
        "key",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    )
)
REDACTED = "REDACTED"


def redact_query(query: str) -> str:
    """`query` with the value of every credential parameter replaced by REDACTED, the rest
    left exactly as it was."""
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if eq and urllib.parse.unquote_plus(name).strip().lower() in REDACTED_PARAMS:
            parts[i] = f"{name}={REDACTED}"
    return "&".join(parts)


def redact_url(url: str) -> str:
    """A URL, or a path with its query, without credentials: user and password, and the
    values of credential query parameters."""
    base, question, rest = remove_url_credentials(url).partition("?")
    if not question:
        return base
    query, hash_, fragment = rest.partition("#")
    return f"{base}?{redact_query(query)}{hash_}{fragment}"


URL_ATTRIBUTES = ("http.url", "url.full", "http.target")  # old and new HTTP conventions
QUERY_ATTRIBUTES = ("url.query",)


def redact_span(span: trace.Span, *_: Any) -> None:
    """A request hook (server: ASGI, client: httpx): the span's URL attributes again,
    through `redact_url`. Runs as the span starts, before any exporter sees it."""
    attributes = getattr(span, "attributes", None)
    if not span.is_recording() or not attributes:
        return
    for name in URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, redact_url(value))
    for name in QUERY_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, redact_query(value))


async def redact_span_async(span: trace.Span, *args: Any) -> None:
    """`redact_span` for httpx's AsyncClient, which awaits its hooks."""
    redact_span(span, *args)


def enabled() -> bool:
    """Whether spans go anywhere (an SDK provider is installed)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def instrument_engine(engine: AsyncEngine) -> None:
    """Database calls on `engine` become spans (when tracing is enabled). Each engine gets
    its own EngineTracer: SQLAlchemyInstrumentor instruments one engine per process, and
    its declared range stops below SQLAlchemy 2.1, whose engine events are the same."""
    if not enabled():
        return
    from opentelemetry import metrics
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    usage = metrics.get_meter("taskrunner").create_up_down_counter(
        "db.client.connections.usage", unit="connections", description="Connections in use."
    )
    EngineTracer(TRACER, engine.sync_engine, usage, False)  # type: ignore[no-untyped-call]


def query_span(query: LoggedQuery) -> None:
    """An asyncpg query logger (`Connection.add_query_logger`): the query as a CLIENT span
    of the current one, named and described as the SQLAlchemy instrumentation's. For the
    statements the journal runs on asyncpg directly, past SQLAlchemy."""
    end = time.time_ns()
    statement = query.query
    span = TRACER.start_span(
        f"{statement.split(None, 1)[0].upper()} {query.conn_params.database}",
        kind=trace.SpanKind.CLIENT,
        start_time=end - int(query.elapsed * 1e9),
        attributes={
            "db.system": "postgresql",
            "db.name": query.conn_params.database,
            "db.statement": statement,
        },
    )
    if query.exception is not None:
        span.record_exception(query.exception)
        span.set_status(trace.StatusCode.ERROR, str(query.exception))
    span.end(end_time=end)


def traceparent() -> str | None:
    """The current span as a W3C `traceparent`, to carry with a task; None outside a trace."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def task_span(
    parent: str | None, task_type: str, task_id: str, attempt: int
) -> Iterator[trace.Span]:
    """The worker's span for one attempt, a child of the submitting request's span."""
    context: Any = propagate.extract({"traceparent": parent}) if parent else None
    with TRACER.start_as_current_span(
        f"task {task_type}",
        context=context,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "taskrunner.task_id": task_id,
            "taskrunner.task_type": task_type,
            "taskrunner.attempt": attempt,
        },
    ) as span:
        yield span
