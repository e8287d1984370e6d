"""Fuzzing the real service: hypothesis-graphql turns schema.graphql into generated
queries, mutations and subscriptions (over SSE) and sends them to `taskrunner api`, with
a real `taskrunner worker` running whatever gets submitted. No answer may be a 5xx or an
INTERNAL error (nor leak a traceback or a driver's message), neither process may log an
unexpected error or a traceback, and the RSS of both is sampled throughout and must stay
bounded; the api must still be ready at the end.

Design:
- the api and the worker are subprocesses (so their memory can be sampled with psutil),
  started and driven from a thread: hypothesis's `@given` runs synchronously there while
  the session event loop waits;
- the generator is steered towards the resolvers, not only validation: strings, IDs,
  numbers and dates come from mixes of random values and meaningful ones (ids of seeded
  tasks of this and another owner, their event cursors, an open upload, loopback URLs,
  task sources, base64), most generated mutations have one root field and get their
  `@oneOf` TaskSpecInput cut down to one member (hypothesis-graphql does not know
  @oneOf), and cases alternate between an owner's key and an admin's;
- a subscription is read for SSE_WINDOW_SECONDS, then dropped (a live one never ends);
- a case never fails inside hypothesis (no shrinking, so the run stays bounded): every
  problem is collected and asserted at the end, all of them listed.

Safety: FETCH_DOMAIN_ALLOWLIST is the literal "127.0.0.1", so webScrape refuses any other
host before resolving it (taskrunner.fetch.check_url); search has no BRAVE_API_KEY and a
closed loopback port as its provider; every task ends within TASK_MAX_RUNTIME_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

import graphql
import httpx
import psutil
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis_graphql import mutations, nodes, queries

from taskrunner.config import Settings
from taskrunner.embedded import free_port
from tests.support.environment import process_env, repo_root
from tests.support.processes import popen
from tests.support.stack import make_key

N_QUERIES = 300
N_MUTATIONS = 300
N_SUBSCRIPTIONS = 40
MAX_RSS_MB = 400
MIN_DATA_FRACTION = 0.10  # of all cases, answered with data (possibly with some errors)
SAMPLE_SECONDS = 0.2
SSE_WINDOW_SECONDS = 0.5  # how long one subscription is read before it is dropped
LEAKS = ("Traceback", "sqlalchemy", "asyncpg", "psycopg", 'File "')

SCHEMA_SDL = (repo_root() / "schema.graphql").read_text()
SCHEMA = graphql.build_schema(SCHEMA_SDL)
assert SCHEMA.mutation_type is not None
MUTATIONS = sorted(SCHEMA.mutation_type.fields)
# The subscription root as the query root: hypothesis-graphql generates only queries and
# mutations, and a subscription's document differs from a query's by its keyword only.
SUBSCRIPTION_SDL = SCHEMA_SDL.replace("type Query {", "type FormerQuery {").replace(
    "type Subscription {", "type Query {"
)

FUZZ_ENV = {
    "FETCH_DOMAIN_ALLOWLIST": "127.0.0.1",
    "TASKS_PER_MINUTE": "0",
    "TASK_MAX_RUNTIME_SECONDS": "5",
    "TASK_DEFAULT_TIMEOUT_SECONDS": "5",
    "TASK_MAX_ARTIFACT_MB": "5",
    "LOG_LEVEL": "WARNING",
}


# --- the processes and their memory ------------------------------------------------------


def _rss(proc: psutil.Process) -> int:
    """RSS of a process and its children (0 once it is gone)."""
    total = 0
    with contextlib.suppress(psutil.Error):
        total += proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    return total


class MemorySampler(threading.Thread):
    """Samples the RSS of named processes every SAMPLE_SECONDS; keeps the peaks."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peaks = dict.fromkeys(pids, 0)
        self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(SAMPLE_SECONDS)

    def sample(self) -> dict[str, int]:
        now = {name: _rss(proc) for name, proc in self.procs.items()}
        for name, rss in now.items():
            self.peaks[name] = max(self.peaks[name], rss)
        self.samples += 1
        return now

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        self.sample()


def _wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(httpx.TransportError):
            if check():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.1)


# --- talking to the api ------------------------------------------------------------------


def _gql(client: httpx.Client, key: str, query: str, **variables: Any) -> dict[str, Any]:
    """An operation whose answer must be data (seeding, checking)."""
    request = {"query": query, "variables": variables}
    response = client.post("/graphql", json=request, headers=_auth(key))
    body: dict[str, Any] = response.json()
    assert response.status_code == 200 and not body.get("errors"), (query, body)
    data: dict[str, Any] = body["data"]
    return data


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Seeds:
    """Values that reach past validation: real ids, cursors, an open upload."""

    ids: list[str] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)


SEED_TASKS = (
    ('{echo: {message: "seed"}}', "{}"),
    ("{sum: {numbers: [1, 2.5]}}", "{}"),
    ("{fail: {failTimes: 9}}", "{maxRetries: 0}"),
    ("{report: {rows: 10}}", "{}"),
    ("{chatter: {progressSteps: 3, logLines: 3}}", "{}"),
    ('{search: {query: "q"}}', "{}"),
    ('{webScrape: {url: "API/healthz"}}', "{}"),
    ("{sleep: {seconds: 4}}", '{labels: ["seed"]}'),
    ('{echo: {message: "later"}}', '{delaySeconds: 3600, idempotencyKey: "seed-later"}'),
    ('{echo: {message: "cancelled"}}', "{delaySeconds: 3600}"),
)
SUBMIT = "mutation { submitTask(task: %s, options: %s) { id } }"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def _seed(client: httpx.Client, key: str, other: str) -> Seeds:
    seeds = Seeds()
    api = str(client.base_url).rstrip("/")
    for spec, options in SEED_TASKS:
        query = SUBMIT % (spec.replace("API", api), options)
        seeds.ids.append(_gql(client, key, query)["submitTask"]["id"])
    seeds.ids.append(
        _gql(client, other, SUBMIT % ('{echo: {message: "theirs"}}', "{}"))["submitTask"]["id"]
    )
    later, cancelled = seeds.ids[-3], seeds.ids[-2]
    _gql(client, key, f'mutation {{ cancelTask(id: "{cancelled}") {{ id }} }}')
    upload = _gql(
        client,
        key,
        f'mutation {{ createArtifactUpload(taskId: "{later}", name: "up.txt") {{ id url }} }}',
    )["createArtifactUpload"]
    assert client.put(upload["url"], content=b"uploaded").status_code == 200
    seeds.uploads.append(upload["id"])

    def done() -> bool:
        statuses = [
            _gql(client, key, f'{{ task(id: "{i}") {{ status }} }}')["task"]["status"]
            for i in seeds.ids[:7]
        ]
        return all(s in TERMINAL for s in statuses)

    _wait_for(done, 20, "the seeded tasks finish")
    for task_id in seeds.ids[:-1]:
        task = _gql(client, key, f'{{ task(id: "{task_id}") {{ events {{ cursor }} }} }}')
        seeds.cursors += [e["cursor"] for e in task["task"]["events"]][:3]
    page = _gql(client, key, "{ tasks(first: 2) { pageInfo { endCursor } } }")
    seeds.cursors.append(page["tasks"]["pageInfo"]["endCursor"])
    return seeds


# --- what the generator may put in arguments ---------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", max_codepoint=0xFFFF, exclude_categories=["Cs"]))


def _scalars(seeds: Seeds, api: str) -> dict[str, st.SearchStrategy[graphql.ValueNode]]:
    """custom_scalars: built-in ones too, biased towards values the resolvers accept."""
    closed = f"http://127.0.0.1:{free_port()}/"
    meaningful = [
        *("", " ", "a", "seed", "seed-later", "theirs", "web", "news", "videos", "images"),
        *("text/plain", "report.csv", "aGVsbG8=", "!!not base64", "a\x00b", "\u202e\u0000"),
        *(f"{api}/healthz", f"{api}/limits", f"{api}/graphql", closed, "http://fuzz.invalid/"),
        *("ftp://127.0.0.1/", "http://[::1]/", "x" * 300, "x" * 70_000),
        *seeds.ids,
        *seeds.cursors,
    ]
    ids = [*seeds.ids, *seeds.uploads, "00000000-0000-0000-0000-000000000000"]
    zones = st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30))])
    dates = st.datetimes(timezones=zones).map(lambda d: d.isoformat())
    odd_dates = st.sampled_from(["", "now", "2024-13-01T00:00:00", "9999-12-31T23:59:59Z"])
    return {
        "String": st.one_of(st.sampled_from(meaningful), TEXT).map(nodes.String),
        "ID": st.one_of(
            st.sampled_from(ids).map(nodes.String),
            st.uuids().map(nodes.String),
            TEXT.map(nodes.String),
            st.integers(-(2**31), 2**31 - 1).map(nodes.Int),
        ),
        "Int": st.one_of(st.integers(-2, 120), st.integers(-(2**31), 2**31 - 1)).map(nodes.Int),
        "Float": st.one_of(st.floats(0, 3), st.floats(allow_nan=False, allow_infinity=False)).map(
            nodes.Float
        ),
        "DateTime": st.one_of(dates, odd_dates, TEXT).map(nodes.String),
        "JSON": st.just(nodes.String("{}")),
    }


def keep_one_member(document: str) -> str:
    """The document with each @oneOf input object cut down to its first non-null member."""
    type_info = graphql.TypeInfo(SCHEMA)

    class OneMember(graphql.Visitor):
        def enter_object_value(self, node: graphql.ObjectValueNode, *_: Any) -> Any:
            type_ = graphql.get_named_type(type_info.get_input_type())
            if not (isinstance(type_, graphql.GraphQLInputObjectType) and type_.is_one_of):
                return None
            members = [f for f in node.fields if not isinstance(f.value, graphql.NullValueNode)]
            return graphql.ObjectValueNode(fields=tuple(members[:1])) if members else None

    visitor = graphql.TypeInfoVisitor(type_info, OneMember())
    return graphql.print_ast(graphql.visit(graphql.parse(document), visitor))


# --- judging answers ---------------------------------------------------------------------


@dataclass
class Tally:
    cases: Counter[str] = field(default_factory=Counter)  # kind -> cases sent
    outcomes: Counter[str] = field(default_factory=Counter)  # data / partial / error
    codes: Counter[str] = field(default_factory=Counter)  # error codes seen
    problems: list[str] = field(default_factory=list)

    def judge(self, kind: str, query: str, status: int, bodies: list[Any]) -> None:
        self.cases[kind] += 1
        where = f"{kind} (HTTP {status}):\n{query}\n"
        if status >= 500:
            self.problems.append(f"{where}-> {bodies}")
        outcome = "error" if bodies else "quiet"  # quiet: a subscription with no event yet
        for body in bodies:
            if not isinstance(body, dict):
                self.problems.append(f"{where}-> not a JSON object: {body!r}")
                continue
            if body.get("data") is not None:
                outcome = "partial" if body.get("errors") else "data"
            for error in body.get("errors") or ():
                code = str((error.get("extensions") or {}).get("code"))
                self.codes[code] += 1
                message = str(error.get("message"))
                if code == "INTERNAL" or any(leak in message for leak in LEAKS):
                    self.problems.append(f"{where}-> {json.dumps(error)}")
        self.outcomes[f"{kind} {outcome}"] += 1

    def failed(self, kind: str, query: str, exc: Exception) -> None:
        self.cases[kind] += 1
        self.outcomes[f"{kind} error"] += 1
        self.problems.append(f"{kind}: no answer ({exc!r}):\n{query}")


def _post(client: httpx.Client, key: str, query: str) -> tuple[int, list[Any]]:
    response = client.post("/graphql", json={"query": query}, headers=_auth(key))
    try:
        return response.status_code, [response.json()]
    except ValueError:
        return response.status_code, [response.text]


def _subscribe(client: httpx.Client, key: str, query: str) -> tuple[int, list[Any]]:
    """Read an SSE subscription for SSE_WINDOW_SECONDS at most: its results (or refusal)."""
    timeout = httpx.Timeout(30, read=SSE_WINDOW_SECONDS)
    deadline = time.monotonic() + SSE_WINDOW_SECONDS
    bodies: list[Any] = []
    with client.stream(
        "POST", "/graphql/stream", json={"query": query}, headers=_auth(key), timeout=timeout
    ) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
            try:
                return response.status_code, [response.json()]
            except ValueError:
                return response.status_code, [response.text]
        with contextlib.suppress(httpx.ReadTimeout):
            for line in response.iter_lines():
                if line.startswith("data:") and line[5:].strip():
                    bodies.append(json.loads(line[5:]))
                if time.monotonic() > deadline:
                    break
        return response.status_code, bodies


# --- the run -----------------------------------------------------------------------------

FUZZING = hsettings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.generate],  # cases never fail inside: nothing to shrink
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


def _fuzz(client: httpx.Client, keys: list[str], seeds: Seeds, tally: Tally) -> None:
    scalars = _scalars(seeds, str(client.base_url).rstrip("/"))
    key_choice = st.sampled_from(keys)

    def send(
        kind: str, ask: Callable[[httpx.Client, str, str], tuple[int, list[Any]]]
    ) -> Callable[[str, str], None]:
        def case(query: str, key: str) -> None:
            try:
                status, bodies = ask(client, key, query)
            except (httpx.TransportError, ValueError) as exc:
                tally.failed(kind, query, exc)
                return
            tally.judge(kind, query, status, bodies)

        return case

    @hsettings(FUZZING, max_examples=N_QUERIES)
    @given(query=queries(SCHEMA_SDL, custom_scalars=scalars), key=key_choice)
    def fuzz_queries(query: str, key: str) -> None:
        send("query", _post)(query, key)

    # Any mutation fields, or mostly one field alone (an error in any of several fields
    # leaves no data at all: they are all non-null), submissions weighted up.
    weights = {name: 1 for name in MUTATIONS} | {"submitTask": 3, "submitTasks": 2}
    any_mutation = st.one_of(
        mutations(SCHEMA_SDL, custom_scalars=scalars),
        *(
            mutations(SCHEMA_SDL, fields=[name], custom_scalars=scalars)
            for name, weight in weights.items()
            for _ in range(weight)
        ),
    )

    @hsettings(FUZZING, max_examples=N_MUTATIONS)
    @given(query=any_mutation, key=key_choice)
    def fuzz_mutations(query: str, key: str) -> None:
        # 3 in 4 get a valid @oneOf, so that submissions reach the resolvers and the worker
        as_generated = tally.cases["mutation"] % 4 == 0
        send("mutation", _post)(query if as_generated else keep_one_member(query), key)

    subscription = st.one_of(
        *(
            queries(SUBSCRIPTION_SDL, fields=[name], custom_scalars=scalars)
            for name in ("taskUpdates", "tasksUpdates")
        )
    )

    @hsettings(FUZZING, max_examples=N_SUBSCRIPTIONS)
    @given(query=subscription, key=key_choice)
    def fuzz_subscriptions(query: str, key: str) -> None:
        send("subscription", _subscribe)("subscription " + query, key)

    fuzz_queries()
    fuzz_mutations()
    fuzz_subscriptions()


PAGE = """query($after: String) { tasks(first: 100, after: $after) {
  edges { node { type status } } pageInfo { hasNextPage endCursor } } }"""


def _task_stats(client: httpx.Client, admin: str) -> Counter[str]:
    """How the submitted tasks ended up, per type and status (as the admin sees them)."""
    stats: Counter[str] = Counter()
    after = None
    while True:
        page = _gql(client, admin, PAGE, after=after)["tasks"]
        stats.update(f"{e['node']['type']}:{e['node']['status']}" for e in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            return stats
        after = page["pageInfo"]["endCursor"]


LOG_MARKERS = ("unexpected error", "Traceback", "Exception in ASGI application")
LOG_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d [\d:,]+ |(INFO|WARNING|ERROR|CRITICAL):\s)")
EXCEPTION = re.compile(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b")
VARYING = re.compile(r"\b([0-9a-f]{12}|[0-9a-f-]{36}|\d+\.\d+s)\b")  # incidents, ids, times


def _log_problems(log: Path) -> Counter[str]:
    """The log's records with a traceback or an unexpected error, counted by what they
    say (first line, exception) with times and ids left out."""
    records: list[list[str]] = []
    for line in log.read_text(errors="replace").splitlines():
        if LOG_RECORD.match(line) or not records:
            records.append([])
        records[-1].append(line)
    found: Counter[str] = Counter()
    for record in records:
        if any(marker in line for line in record for marker in LOG_MARKERS):
            raised = [line for line in record if EXCEPTION.match(line.strip(" |"))]
            summary = f"{record[0]} -> {(raised or record)[-1].strip(' |')}"
            found[VARYING.sub("*", LOG_RECORD.sub("", summary))[:400]] += 1
    return found


@dataclass
class Run:
    tally: Tally
    sampler: MemorySampler
    baseline: dict[str, int]
    tasks: Counter[str]
    ready: httpx.Response
    alive: dict[str, int | None]
    logs: dict[str, Counter[str]]
    seconds: float


def _run(settings: Settings, keys: list[str], other: str, logs: Path) -> Run:
    """Start the api and a worker, seed, fuzz; what happened, measured before stopping."""
    port = free_port()
    env = process_env(settings, PORT=str(port), **FUZZ_ENV)
    env.pop("BRAVE_API_KEY", None)
    env["BRAVE_API_URL"] = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with (
        popen("api", env=env, log=logs / "api.log") as api,
        popen("worker", env=env, log=logs / "worker.log") as worker,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        _wait_for(lambda: client.get("/readyz").status_code == 200, 30, "the api is ready")
        workers = "{ workers { id } }"
        _wait_for(lambda: bool(_gql(client, keys[0], workers)["workers"]), 30, "a live worker")
        sampler = MemorySampler({"api": api.pid, "worker": worker.pid})
        baseline = sampler.sample()
        sampler.start()
        tally = Tally()
        try:
            _fuzz(client, keys, _seed(client, keys[0], other), tally)
            time.sleep(1)  # the last submissions reach the worker
        finally:
            sampler.stop()
        return Run(
            tally=tally,
            sampler=sampler,
            baseline=baseline,
            tasks=_task_stats(client, keys[1]),
            ready=client.get("/readyz"),
            alive={"api": api.poll(), "worker": worker.poll()},
            logs={name: _log_problems(logs / f"{name}.log") for name in ("api", "worker")},
            seconds=time.monotonic() - started,
        )


def _report(run: Run) -> None:
    mb = 2**20
    tally, sampler = run.tally, run.sampler
    print(  # noqa: T201
        f"\nfuzz: {dict(tally.cases)} cases in {run.seconds:.1f}s; "
        f"outcomes {dict(tally.outcomes)}; problems {len(tally.problems)}\n"
        f"fuzz: error codes {dict(tally.codes)}\n"
        f"fuzz: tasks {dict(sorted(run.tasks.items()))}\n"
        "fuzz: RSS MB at start -> peak: "
        + ", ".join(
            f"{name} {run.baseline[name] / mb:.0f} -> {peak / mb:.0f}"
            for name, peak in sampler.peaks.items()
        )
        + f" ({sampler.samples} samples)"
    )


@pytest.mark.timeout(240)
async def test_generated_operations_never_break_the_api_and_memory_stays_bounded(
    settings: Settings, tmp_path: Path
) -> None:
    keys = [await make_key(settings, "fuzzer"), await make_key(settings, "root", admin=True)]
    other = await make_key(settings, "other")
    run = await asyncio.to_thread(_run, settings, keys, other, tmp_path)
    _report(run)
    failures = []  # all of them, not only the first
    if problems := run.tally.problems:
        failures.append(f"{len(problems)} bad answers:\n\n" + "\n\n".join(problems[:20]))
    if logged := {name: dict(found) for name, found in run.logs.items() if found}:
        failures.append(f"logged (in {tmp_path}):\n{json.dumps(logged, indent=1)}")
    if run.alive != {"api": None, "worker": None}:
        failures.append(f"a process died: {run.alive}")
    if run.ready.status_code != 200:
        failures.append(f"the api is not ready after the run: {run.ready.text}")
    peaks = {name: round(peak / 2**20) for name, peak in run.sampler.peaks.items()}
    if any(peak >= MAX_RSS_MB for peak in peaks.values()):
        failures.append(f"RSS peaks (MB) over {MAX_RSS_MB}: {peaks}")
    cases = sum(run.tally.cases.values())
    answered = sum(
        n for kind, n in run.tally.outcomes.items() if kind.endswith(("data", "partial"))
    )
    if answered < MIN_DATA_FRACTION * cases:
        failures.append(f"only {answered} of {cases} cases were answered with data")
    assert not failures, "\n\n".join(failures)
