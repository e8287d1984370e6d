"""Query cost and the client-facing bounds.

MAX_QUERY_COST refuses an operation whose selections, times the list sizes they are read
under, add up past it, before any resolver runs (over HTTP, websockets and SSE); every page
is bounded by MAX_PAGE_SIZE (`Task.events` too, which reads one page by default); and the
bounds are settings, reported by `limits`. Every query the
repository itself sends (dashboard, python client, README, bench) costs at most half the
default MAX_QUERY_COST."""

from __future__ import annotations

import ast
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from gql.transport.exceptions import TransportQueryError
from graphql import (
    ArgumentNode,
    DocumentNode,
    IntValueNode,
    OperationDefinitionNode,
    Visitor,
    parse,
    visit,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from api import limits
from api.app import create_app
from api.schema import build_schema
from taskrunner.config import Settings, load_settings
from tests.support.environment import repo_root
from tests.support.parsing import parse as parse_python
from tests.support.servers import run_api
from tests.support.stack import Stack
from tests.support.tasks import WATCH

GQL = build_schema()._schema
PAGE = 100  # MAX_PAGE_SIZE's default
UNPAGED_LIST_SIZE = 10  # what a list without `first` counts as (README's formula)

HEAVY = (
    "tasks(first: 100) { edges { node { events { cursor } artifacts { id } "
    "metrics { runSeconds } logsUrl queuePosition } } }"
)
THIRTY = "{ " + " ".join(f"a{i}: {HEAVY}" for i in range(30)) + " }"
# per alias: tasks + edges, then 100 x (node + events + 100 cursors + artifacts + 10 ids
# + metrics + runSeconds + logsUrl + queuePosition)
HEAVY_COST = 2 + 100 * (1 + (1 + 100) + (1 + UNPAGED_LIST_SIZE) + 2 + 1 + 1)
SUBMIT = 'mutation { submitTask(task: {echo: {message: "x"}}) { id } }'
TASK_TABLES = re.compile(r"\b(task|task_event|artifact)\b", re.IGNORECASE)


def operation_costs(
    document: DocumentNode, variables: dict[str, Any] | None, page: int = PAGE
) -> dict[str | None, int]:
    assert limits.UNPAGED_LIST_SIZE == UNPAGED_LIST_SIZE
    costs: dict[str | None, int] = limits.operation_costs(GQL, document, variables, page)
    return costs


def _cost(query: str, variables: dict[str, Any] | None = None, page: int = PAGE) -> int:
    (cost,) = operation_costs(parse(query), variables, page).values()
    return cost


async def _post(stack: Stack, query: str, **variables: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        body = {"query": query, "variables": variables}
        response = await client.post("/graphql", json=body)
    result: dict[str, Any] = response.json()
    return result


def _refusal(result: dict[str, Any], cost: int, limit: int) -> None:
    """`result` is the refusal of an operation of this cost over this limit."""
    assert result.get("data") is None, result
    (error,) = result["errors"]
    assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert error["message"] == (
        f"query cost {cost} is over MAX_QUERY_COST ({limit}): ask for fewer items per page "
        "(first) or fewer fields"
    )


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.text("SELECT count(*) FROM task")) or 0)


# --- the cost itself ----------------------------------------------------------------------


def test_the_cost_counts_each_field_times_the_list_sizes_it_is_read_under() -> None:
    # tasks' default page (first: Int = 20) multiplies what each edge selects
    assert _cost("{ tasks { edges { node { id type } } } }") == 2 + 20 * 3
    # a connection's `first` sizes its edges, not its pageInfo
    assert _cost("{ tasks(first: 50) { pageInfo { hasNextPage } } }") == 3
    # events without `first` read one page of MAX_PAGE_SIZE
    assert _cost('{ task(id: "x") { events { cursor at } } }') == 2 + PAGE * 2
    assert _cost('{ task(id: "x") { events { cursor } } }', page=30) == 2 + 30
    # a list without `first` counts UNPAGED_LIST_SIZE items; objects count once
    assert _cost("{ workers { id host } }") == 1 + UNPAGED_LIST_SIZE * 2
    assert _cost('{ processed(scope: "a", key: "b") { latestTask { id } } }') == 3
    # every operation kind: mutations and subscriptions too
    assert _cost(SUBMIT) == 2
    assert _cost('subscription { taskUpdates(id: "x") { cursor at } }') == 3
    # introspection is in-memory and bounded by graphql-core's own introspection depth rule
    assert _cost("{ __typename __schema { types { fields { name } } } }") == 0
    assert _cost(THIRTY) == 30 * HEAVY_COST


def test_first_comes_from_literals_variables_or_defaults_and_is_clamped_to_the_page() -> None:
    query = "query($n: Int) { tasks(first: $n) { edges { node { id } } } }"
    assert _cost(query, {"n": 7}) == 2 + 7 * 2
    assert _cost(query, {}) == 2 + 20 * 2  # absent: the argument's default
    assert _cost(query, {"n": None}) == 2 + PAGE * 2  # null: at most a page
    with_default = "query($n: Int = 3) { tasks(first: $n) { edges { node { id } } } }"
    assert _cost(with_default, {}) == 2 + 3 * 2
    assert _cost(with_default, {"n": 9}) == 2 + 9 * 2
    # out of range counts as the page it could be at most (the resolver refuses it anyway)
    assert _cost("{ tasks(first: 1000000) { edges { node { id } } } }") == 2 + PAGE * 2
    assert _cost("{ tasks(first: -5) { edges { node { id } } } }") == 2
    assert _cost(query, {"n": "many"}) == 2 + PAGE * 2  # not an Int: refused later


def test_fragments_and_inline_fragments_cost_what_their_fields_cost() -> None:
    flat = """query($e: Int!) { tasks(first: 10) { edges { node {
      id events(first: $e) { cursor at ... on LogAppended { line } } } } } }"""
    spread = """query($e: Int!) { tasks(first: 10) { ...Page } }
    fragment Page on TaskConnection { edges { node { ...T } } }
    fragment T on Task { id events(first: $e) { ...E } }
    fragment E on TaskEvent { cursor ... on TaskEvent { at } ... on LogAppended { line } }"""
    expected = 2 + 10 * (1 + 1 + 1 + 40 * 3)
    assert _cost(flat, {"e": 40}) == expected
    assert _cost(spread, {"e": 40}) == expected


def test_each_operation_of_a_document_is_costed_and_fragment_bombs_cost_no_time() -> None:
    costs = operation_costs(
        parse("query A { limits { maxPageSize } } query B { workers { id } }"), {}
    )
    assert costs == {"A": 2, "B": 1 + UNPAGED_LIST_SIZE}
    # 2^40 fields through 40 fragments that each spread the next twice: costed, quickly
    levels = [f"fragment F{i} on Task {{ ...F{i + 1} ...F{i + 1} }}" for i in range(40)]
    bomb = '{ task(id: "x") { ...F0 } } ' + " ".join(levels) + " fragment F40 on Task { id }"
    started = time.monotonic()
    assert _cost(bomb) == 1 + 2**40
    assert time.monotonic() - started < 1
    # a cycle (refused by graphql's own rule) does not hang the cost
    cycle = '{ task(id: "x") { ...A } } fragment A on Task { id ...B } fragment B on Task { ...A }'
    assert _cost(cycle) == 2


# --- over HTTP, websockets and SSE --------------------------------------------------------


@pytest.fixture
async def observed(settings: Settings) -> AsyncIterator[tuple[Stack, list[str]]]:
    """The api with default limits, and every SQL statement its engine runs from now on."""
    app = create_app(settings)
    statements: list[str] = []
    async with run_api(settings, app) as url:
        stack = await Stack.keyed(url, settings)
        await stack.execute(SUBMIT)  # a task to list; the key is looked up and cached

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        engine = app.state.services.engine.sync_engine
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            yield stack, statements
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)


async def test_thirty_aliases_of_full_task_pages_are_refused_before_any_resolver_runs(
    observed: tuple[Stack, list[str]],
) -> None:
    stack, statements = observed
    _refusal(await _post(stack, THIRTY), 30 * HEAVY_COST, 10_000)
    assert [s for s in statements if TASK_TABLES.search(s)] == []  # no resolver read a row
    # one alias of a dashboard-sized page is well within the limit, and answers
    page = await _post(stack, "{ tasks(first: 50) { edges { node { id status } } } }")
    assert "errors" not in page and len(page["data"]["tasks"]["edges"]) == 1
    assert any(TASK_TABLES.search(s) for s in statements)  # (the probe sees resolvers)


@pytest.fixture
async def cheap(settings: Settings) -> AsyncIterator[Stack]:
    """The api with MAX_QUERY_COST=5."""
    tiny = settings.model_copy(update={"max_query_cost": 5})
    async with run_api(tiny) as url:
        yield await Stack.keyed(url, tiny)


async def test_an_over_cost_mutation_changes_nothing_and_subscriptions_are_costed_too(
    cheap: Stack, engine: AsyncEngine
) -> None:
    mutation = (
        'mutation { a: submitTask(task: {echo: {message: "a"}}) { id } '
        'b: submitTask(task: {echo: {message: "b"}}) { id events { cursor } } }'
    )
    _refusal(await _post(cheap, mutation), 2 + 3 + PAGE, 5)
    assert await _count(engine) == 0  # not even the first submitTask ran
    task_id = (await cheap.execute(SUBMIT))["submitTask"]["id"]  # cost 2: fine
    # a websocket subscription (graphql-transport-ws) ...
    with pytest.raises(TransportQueryError) as err:
        await cheap.subscribe(WATCH, id=task_id, within=10)
    assert err.value.errors
    (error,) = err.value.errors
    assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert "is over MAX_QUERY_COST (5)" in error["message"]
    # ... and one over Server-Sent Events: its one `next` event is the refusal
    async with httpx.AsyncClient(base_url=cheap.url, headers=cheap.headers, timeout=10) as client:
        sse = await client.post(
            "/graphql/stream", json={"query": WATCH, "variables": {"id": task_id}}
        )
    lines = [line[5:] for line in sse.text.splitlines() if line.startswith("data:")]
    (data,) = [orjson.loads(line) for line in lines if line.strip()]  # then `complete`
    (error,) = data["errors"]
    assert error["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert "is over MAX_QUERY_COST (5)" in error["message"]


@pytest.fixture
def lowered_settings(settings: Settings) -> Settings:
    lowered = {
        "max_query_cost": 200,
        "max_page_size": 30,
        "task_max_retries": 3,
        "max_labels_per_task": 2,
        "max_label_length": 5,
        "max_idempotency_key_length": 8,
    }
    current = {k: v for k, v in settings.model_dump().items() if v is not None}
    return load_settings(**{**current, **lowered}, _env_file=None)


@pytest.fixture
async def lowered(lowered_settings: Settings) -> AsyncIterator[Stack]:
    async with run_api(lowered_settings) as url:
        yield await Stack.keyed(url, lowered_settings)


async def test_the_cost_follows_variables_and_fragments_over_http(lowered: Stack) -> None:
    query = """query($n: Int!, $e: Int = 30) { tasks(first: $n) { edges { node {
      id events(first: $e) { cursor } } } } }"""
    fine = await _post(lowered, query, n=5, e=10)  # 2 + 5 x (3 + 10) = 67
    assert "errors" not in fine, fine
    _refusal(await _post(lowered, query, n=30, e=30), 2 + 30 * 33, 200)
    _refusal(await _post(lowered, query, n=10), 2 + 10 * 33, 200)  # $e's default
    spread = """query($n: Int!) { ...Q } fragment Q on Query { tasks(first: $n) {
      edges { node { ... on Task { id events { ...E } } } } } }
    fragment E on TaskEvent { cursor }"""
    _refusal(await _post(lowered, spread, n=10), 2 + 10 * 33, 200)  # events: a page of 30


async def test_every_bound_is_a_setting_reported_by_limits(
    lowered: Stack, lowered_settings: Settings
) -> None:
    fields = (
        "maxQueryCost maxPageSize taskMaxRetries maxLabelsPerTask maxLabelLength "
        "maxIdempotencyKeyLength"
    )
    reported = (await lowered.execute(f"{{ limits {{ {fields} }} }}"))["limits"]
    assert reported == {
        "maxQueryCost": 200,
        "maxPageSize": 30,
        "taskMaxRetries": 3,
        "maxLabelsPerTask": 2,
        "maxLabelLength": 5,
        "maxIdempotencyKeyLength": 8,
    }
    async with httpx.AsyncClient(base_url=lowered.url) as client:
        plain = (await client.get("/limits")).json()
    assert {k: plain[k] for k in reported} == reported

    submit = """mutation($o: TaskOptionsInput) {
      submitTask(task: {echo: {message: "x"}}, options: $o) { id maxRetries labels } }"""
    at_the_bounds = {"maxRetries": 3, "labels": ["abcde", "b"], "idempotencyKey": "12345678"}
    task = (await lowered.execute(submit, o=at_the_bounds))["submitTask"]
    assert (task["maxRetries"], task["labels"]) == (3, ["abcde", "b"])
    refusals = [
        ("options.maxRetries", {"maxRetries": 4}, "TASK_MAX_RETRIES (3)"),
        ("labels", {"labels": ["a", "b", "c"]}, "MAX_LABELS_PER_TASK (2)"),
        ("labels", {"labels": ["abcdef"]}, "MAX_LABEL_LENGTH (5)"),
        (
            "options.idempotencyKey",
            {"idempotencyKey": "123456789"},
            "MAX_IDEMPOTENCY_KEY_LENGTH (8)",
        ),
    ]
    for field, options, names in refusals:
        with pytest.raises(TransportQueryError) as err:
            await lowered.execute(submit, o=options)
        assert err.value.errors
        (error,) = err.value.errors
        assert error["extensions"] == {"code": "BAD_INPUT", "field": field}, options
        assert names in error["message"], error["message"]

    for query in (
        "{ tasks(first: 31) { edges { cursor } } }",
        f'{{ task(id: "{task["id"]}") {{ events(first: 31) {{ cursor }} }} }}',
    ):
        (error,) = (await _post(lowered, query))["errors"]
        assert error["extensions"] == {"code": "BAD_INPUT", "field": "first"}, query
        assert "MAX_PAGE_SIZE (30)" in error["message"]
    assert (await lowered.execute("{ tasks(first: 30) { edges { cursor } } }"))["tasks"]


async def test_events_read_one_page_of_100_by_default_and_refuse_a_larger_first(
    stack: Stack,
) -> None:
    submit = "mutation($t: TaskSpecInput!) { submitTask(task: $t) { id } }"
    chatter = {"chatter": {"progressSteps": 0, "logLines": 130}}
    task_id = (await stack.execute(submit, t=chatter))["submitTask"]["id"]
    await stack.subscribe(WATCH, id=task_id, within=30)  # until it ends
    query = "query($id: ID!, $after: String) { task(id: $id) { events(after: $after) { cursor } } }"
    first = (await stack.execute(query, id=task_id))["task"]["events"]
    assert len(first) == 100
    rest = (await stack.execute(query, id=task_id, after=first[-1]["cursor"]))["task"]["events"]
    assert 30 < len(rest) < 100  # 130 lines, 3 status changes, the log artifact
    (error,) = (
        await _post(stack, f'{{ task(id: "{task_id}") {{ events(first: 101) {{ at }} }} }}')
    )["errors"]
    assert error["extensions"] == {"code": "BAD_INPUT", "field": "first"}
    assert error["message"] == (
        "first: must be between 1 and MAX_PAGE_SIZE (100), got 101; read further pages with `after`"
    )


# --- what the repository itself sends -----------------------------------------------------


def _documents_in_python(path: str) -> Iterator[str]:
    """The GraphQL documents among a Python file's string constants."""
    tree = parse_python((repo_root() / path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.strip()
            if re.match(r"((query|mutation|subscription)\b[^{]*|)\{\s*\w+[\s({]", text):
                yield text


def _readme_documents() -> Iterator[str]:
    readme = (repo_root() / "README.md").read_text(encoding="utf-8")
    yield from re.findall(r"```graphql\n(.*?)```", readme, re.DOTALL)
    for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL):
        for node in ast.walk(parse_python(block)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "GraphQLRequest":
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    yield first.value


def _dashboard_document() -> tuple[str, dict[str, Any]]:
    """The console's operations, each `$first` at the largest page the console asks for
    (its task table's largest page size)."""
    src = repo_root() / "frontend-examples" / "dashboard" / "src"
    text = (src / "operations.ts").read_text(encoding="utf-8")
    tasks_view = (src / "views" / "tasks.ts").read_text(encoding="utf-8")
    sizes = re.search(r"const PAGE_SIZES = \[([\d, ]+)\];", tasks_view)
    assert sizes
    return "\n".join(re.findall(r"graphql\(`(.*?)`\)", text, re.DOTALL)), {
        "first": max(int(n) for n in sizes.group(1).split(","))
    }


def _client_documents() -> Iterator[DocumentNode]:
    """The Python client's operations: every one of them is in its operations.graphql."""
    path = repo_root() / "frontend-examples" / "python-client" / "operations.graphql"
    yield parse(path.read_text(encoding="utf-8"))


def test_every_query_the_repository_sends_costs_at_most_half_the_default_limit() -> None:
    default = load_settings(_env_file=None).max_query_cost
    sources: list[tuple[str, DocumentNode, dict[str, Any]]] = []
    dashboard, variables = _dashboard_document()
    sources.append(("dashboard", parse(dashboard), variables))
    sources += [("python client", doc, {}) for doc in _client_documents()]
    sources += [("README", parse(text), {}) for text in _readme_documents()]
    for path in ("bench/e2e.py", "bench/list.py", "bench/subscriptions.py"):
        # variables named `first` at the largest page the api takes
        sources += [(path, parse(text), {"first": PAGE}) for text in _documents_in_python(path)]
    assert {name for name, _, _ in sources} >= {"dashboard", "python client", "README"}
    costs = {}
    for name, document, given in sources:
        for operation, cost in operation_costs(document, given).items():
            costs[f"{name}: {operation}"] = cost
    kinds = {
        d.operation.value
        for _, doc, _ in sources
        for d in doc.definitions
        if isinstance(d, OperationDefinitionNode)
    }
    assert kinds == {"query", "mutation", "subscription"}
    over = {k: v for k, v in costs.items() if v > default // 2}
    assert over == {}, orjson.dumps(costs, option=orjson.OPT_INDENT_2).decode()
    assert costs["dashboard: Tasks"] > 1000  # the task table: a page of 100 tasks
    # and none asks for a page larger than MAX_PAGE_SIZE (which the api would refuse)
    pages = [
        int(node.value.value)
        for _, doc, _ in sources
        for node in _arguments(doc)
        if node.name.value == "first" and isinstance(node.value, IntValueNode)
    ]
    assert pages and max(pages) <= PAGE


def _arguments(document: DocumentNode) -> list[ArgumentNode]:
    found: list[ArgumentNode] = []

    class Arguments(Visitor):
        def enter_argument(self, node: ArgumentNode, *_args: Any) -> None:
            found.append(node)

    visit(document, Arguments())
    return found
