"""Spans of one task across the api and a worker, printed as JSON lines: name, kind, trace
and span ids, parent span id, attributes. Run by test_observability in a process of its own
(`python -m tests.support.trace_probe`: OpenTelemetry's tracer provider can be set once per
process): an in-memory span exporter, a real api (uvicorn) and a real arq worker in this
process, one webScrape task submitted over HTTP that fetches the api's own /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

# the sampler setup() installs (importing tracing first is safe: its tracer is a proxy
# until a provider is set)
from taskrunner.tracing import SAMPLER

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider(sampler=SAMPLER)
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(PROVIDER)

from taskrunner.config import load_settings  # noqa: E402  (after the provider is set)
from tests.support.environment import FAST  # noqa: E402
from tests.support.servers import run_api, run_worker  # noqa: E402
from tests.support.stack import make_key  # noqa: E402

SUBMIT = "mutation($url: String!) { submitTask(task: {webScrape: {url: $url}}) { id } }"
STATUS = "query($id: ID!) { task(id: $id) { status } }"


async def main() -> None:
    settings = load_settings(fetch_domain_allowlist="127.0.0.1", **FAST)
    key = await make_key(settings)
    headers = {"Authorization": f"Bearer {key}"}
    # the probe's own calls to the api are in a trace of the probe's: a client call alone
    # starts no trace (tracing.SAMPLER), and the api follows its caller's decision
    async with (
        contextlib.AsyncExitStack() as spans,
        run_api(settings) as url,
        run_worker(settings),
        httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client,
    ):
        spans.enter_context(trace.get_tracer("probe").start_as_current_span("probe"))
        variables = {"url": f"{url}/healthz"}
        response = await client.post("/graphql", json={"query": SUBMIT, "variables": variables})
        task_id = response.json()["data"]["submitTask"]["id"]
        async with asyncio.timeout(20):
            while True:
                response = await client.post(
                    "/graphql", json={"query": STATUS, "variables": {"id": task_id}}
                )
                if response.json()["data"]["task"]["status"] in ("SUCCEEDED", "FAILED"):
                    break
                await asyncio.sleep(0.05)
    for span in EXPORTER.get_finished_spans():
        context = span.get_span_context()
        assert context is not None
        line = {
            "name": span.name,
            "kind": span.kind.name,
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
            "parent": format(span.parent.span_id, "016x") if span.parent else None,
            "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
        }
        sys.stdout.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
