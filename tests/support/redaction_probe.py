"""Spans of requests whose links carry secrets, printed as JSON lines (each span's
attributes). Run by test_observability in a process of its own (`python -m
tests.support.redaction_probe`: OpenTelemetry's tracer provider can be set once per
process): an in-memory span exporter and a real api (uvicorn) in this process, called
through an instrumented httpx client with links that carry secrets in their query: an
artifact link's `signature`, the dashboard's `key`, and a presigned S3 URL's
`X-Amz-Signature`."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(PROVIDER)

from taskrunner.config import load_settings  # noqa: E402  (after the provider is set)
from tests.support.environment import FAST  # noqa: E402
from tests.support.servers import run_api  # noqa: E402

QUERIES = [
    "expires=1&signature=lower-s3cret",
    "Signature=upper-s3cret&sig=short-s3cret",
    "key=trk_dashboard-s3cret&view=tasks",
    "X-Amz-Signature=amz-s3cret&X-Amz-Credential=cred-s3cret&X-Amz-Expires=60",
]


async def main() -> None:
    settings = load_settings(**FAST)
    async with run_api(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        for query in QUERIES:
            await client.get(f"/healthz?{query}")
            await client.get(f"/artifacts/{'0' * 32}?{query}")
            await client.get(f"/dashboard/?{query}")
    for span in EXPORTER.get_finished_spans():
        line = {
            "name": span.name,
            "kind": span.kind.name,
            "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
        }
        sys.stdout.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
