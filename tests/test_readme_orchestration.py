"""The README's "Schedules, queues and flow control" examples, run as written, in order,
against a real api and real workers, as a reader does in GraphiQL.

Every ```graphql block of the section runs verbatim. An example that takes `$id` has the
JSON of its variables in a ```json block right under it, as the reader pastes it into
GraphiQL's Variables tab; its value there is a placeholder for an id an earlier example
returned (`PLACEHOLDERS` says which), and this test puts that id in, nothing else. The
examples that pause and resume a queue run with an admin key, as the README says; the
others with an ordinary one. Between examples the test does what the prose tells the
reader to do (start a worker for the paused queue) and checks that each result means what
the README says it means: the schedule fires and skips, the paused queue starts nothing,
the concurrency key holds its limit.

`test_the_section_has_the_examples_this_test_runs` fails first when an example is added,
removed or reordered: then this walk-through needs the same change."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from graphql import FieldNode, OperationDefinitionNode, parse

from taskrunner.config import Settings
from tests.support.environment import repo_root
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack, make_key
from tests.support.tasks import finish
from tests.support.waiting import eventually

TITLE = "## Schedules, queues and flow control"
SECTION = (repo_root() / "README.md").read_text().split(TITLE, 1)[1].split("\n## ", 1)[0]
BLOCK = re.compile(r"^```(graphql|json)\n(.*?)^```", re.MULTILINE | re.DOTALL)

# A placeholder of a variables block -> the name of the schedule whose id it stands for.
PLACEHOLDERS = {
    "PASTE-THE-FEED-SCHEDULE-ID": "poll the feed",
    "PASTE-THE-REPORT-SCHEDULE-ID": "weekday report",
}

# What the section's examples are, in order: the operation and its root fields.
EXPECTED = [
    ("mutation", ["createSchedule"]),  # the feed, every second, overlap SKIP
    ("mutation", ["createSchedule"]),  # the weekday report, cron in Europe/Berlin
    ("query", ["schedule"]),  # what the feed fired
    ("subscription", ["tasksUpdates"]),  # the feed's firings and skipped ticks
    ("mutation", ["triggerSchedule", "pauseSchedule"]),  # the report: now, then paused
    ("mutation", ["submitTask"]),  # a task on the queue `reports`
    ("query", ["queues"]),
    ("mutation", ["pauseQueue"]),  # admin
    ("mutation", ["resumeQueue"]),  # admin
    ("mutation", ["submitTasks"]),  # five tasks of one concurrency key, limit 2
    ("query", ["tasks"]),  # which run, which wait for a slot
    ("mutation", ["deleteSchedule", "cancelTasks"]),  # stop the feed
]


@dataclass(frozen=True)
class Example:
    document: str  # the ```graphql block, verbatim
    variables: dict[str, Any] | None  # the ```json block under it, placeholders as written

    @property
    def operation(self) -> OperationDefinitionNode:
        (definition,) = parse(self.document).definitions
        assert isinstance(definition, OperationDefinitionNode)
        return definition

    @property
    def shape(self) -> tuple[str, list[str]]:
        op = self.operation
        roots = [s.name.value for s in op.selection_set.selections if isinstance(s, FieldNode)]
        return op.operation.value, roots

    @property
    def declared(self) -> set[str]:
        return {v.variable.name.value for v in self.operation.variable_definitions or ()}


def examples(section: str = SECTION) -> list[Example]:
    """The section's GraphQL examples, each with the variables JSON right under it."""
    found: list[Example] = []
    for match in BLOCK.finditer(section):
        language, body = match.groups()
        if language == "graphql":
            found.append(Example(body, None))
        else:
            assert found and found[-1].variables is None, (
                f"a ```json block of variables must follow a ```graphql block: {body!r}"
            )
            found[-1] = Example(found[-1].document, json.loads(body))
    return found


def variables_of(example: Example, schedules: dict[str, str]) -> dict[str, Any]:
    """The example's variables with each placeholder replaced by the id it stands for."""
    filled: dict[str, Any] = {}
    for name, value in (example.variables or {}).items():
        assert value in PLACEHOLDERS, f"${name}: {value!r} is not a placeholder this test knows"
        filled[name] = schedules[PLACEHOLDERS[value]]
    return filled


def test_the_section_has_the_examples_this_test_runs() -> None:
    found = examples()
    assert [e.shape for e in found] == [(op, list(roots)) for op, roots in EXPECTED]
    for example in found:
        # the JSON shown names exactly the variables the operation declares
        assert set(example.variables or {}) == example.declared, example.document
    # schedules, queues and concurrency keys each have at least one example
    for heading in ("### Schedules", "### Named queues", "### Concurrency keys"):
        part = SECTION.split(heading, 1)[1].split("\n### ", 1)[0]
        assert "```graphql\n" in part, f"{heading} has no GraphQL example"


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def next_weekday_nine_in_berlin(after: datetime) -> datetime:
    """The first 09:00 Monday to Friday, Berlin wall time, after `after`: what
    `0 9 * * 1-5` in Europe/Berlin means, computed without cron."""
    berlin = ZoneInfo("Europe/Berlin")
    day = after.astimezone(berlin).date()
    while True:
        candidate = datetime(day.year, day.month, day.day, 9, tzinfo=berlin)
        if candidate.weekday() < 5 and candidate > after:
            return candidate
        day += timedelta(days=1)


TASK = "query($id: ID!) { task(id: $id) { id status scheduleId scheduledFor startedAt } }"
FEED_RUNNING = """query { tasks(filter: {label: "feed", status: [RUNNING]}) {
  edges { node { id startedAt } } } }"""
FEED_ALL = """query { tasks(filter: {label: "feed"}, first: 100) {
  edges { node { id status scheduleId } } } }"""


@dataclass
class Reader:
    """A reader going through the section in GraphiQL: the examples, an ordinary key and
    an admin key, and the ids of the schedules created so far (by name)."""

    user: Stack
    admin: Stack
    examples: list[Example]
    schedules: dict[str, str] = field(default_factory=dict)

    async def run(self, n: int, stack: Stack | None = None) -> dict[str, Any]:
        """Example `n` over HTTP, as written (its placeholders filled in); a GraphQL
        error fails the test."""
        example = self.examples[n]
        variables = variables_of(example, self.schedules)
        return await (stack or self.user).execute(example.document, **variables)

    async def task(self, task_id: str) -> dict[str, Any]:
        return dict((await self.user.execute(TASK, id=task_id))["task"])

    async def subscribe_until(
        self, n: int, enough: Callable[[list[dict[str, Any]]], bool], within: float
    ) -> list[dict[str, Any]]:
        """Subscription example `n`, as written, until `enough(events)` holds."""
        got: list[dict[str, Any]] = []

        async def collect() -> None:
            async with self.user.ws_client() as session:
                agen = session.subscribe(GraphQLRequest(self.examples[n].document))
                try:
                    async for item in agen:
                        got.append(item["tasksUpdates"])
                        if enough(got):
                            return
                finally:
                    await agen.aclose()

        try:
            await asyncio.wait_for(collect(), within)
        except TimeoutError:
            raise AssertionError(f"not seen within {within}s; got {got}") from None
        return got

    async def queues(self) -> dict[str, dict[str, Any]]:
        """Example 6 (`queues`), by name."""
        return {q["name"]: q for q in (await self.run(6))["queues"]}

    # --- Schedules -----------------------------------------------------------------------

    async def schedules_section(self) -> dict[str, Any]:
        """Examples 0-4; returns the feed schedule as created."""
        created = datetime.now(UTC)
        feed = (await self.run(0))["createSchedule"]
        self.schedules[feed["name"]] = feed["id"]
        assert (feed["everySeconds"], feed["overlap"], feed["catchup"]) == (1.0, "SKIP", "ONE")
        assert created < at(feed["nextRunAt"]) <= created + timedelta(seconds=1.5)

        report = (await self.run(1))["createSchedule"]
        self.schedules["weekday report"] = report["id"]
        assert (report["cron"], report["timezone"]) == ("0 9 * * 1-5", "Europe/Berlin")
        assert at(report["nextRunAt"]) == next_weekday_nine_in_berlin(created)

        seen: dict[str, Any] = {}

        async def fired_twice() -> bool:
            """the feed's schedule query lists two fired tasks"""
            seen.update((await self.run(2))["schedule"])
            return len(seen["tasks"]["edges"]) >= 2

        await eventually(fired_twice, within=15, step=0.2)
        tasks = [edge["node"] for edge in seen["tasks"]["edges"]]
        assert {t["scheduleId"] for t in tasks} == {feed["id"]}
        ticks = [at(t["scheduledFor"]) for t in tasks]
        assert ticks == sorted(ticks, reverse=True), "newest tick first"
        gap = (ticks[0] - ticks[1]).total_seconds()
        # SKIP: no tick fires while the 3 s sleep of the last one runs; ticks are whole
        # seconds apart (the 1 s grid), and each one between two firings was skipped
        assert gap >= 3 and gap == round(gap), ticks
        assert seen["skippedTicks"] >= gap - 1 and seen["lastRunAt"] is not None

        def fired_and_skipped(events: list[dict[str, Any]]) -> bool:
            kinds = {e["__typename"] for e in events}
            return "TickSkipped" in kinds and any(e.get("status") == "QUEUED" for e in events)

        for event in await self.subscribe_until(3, fired_and_skipped, within=20):
            if event["__typename"] == "StatusChanged" and event["status"] == "QUEUED":
                fired = await self.task(event["taskId"])
                # a firing is the new task's QUEUED, and the task says which schedule
                assert fired["scheduleId"] == feed["id"] and fired["scheduledFor"]
            if event["__typename"] == "TickSkipped":
                unfinished = await self.task(event["taskId"])
                assert event["scheduleId"] == unfinished["scheduleId"] == feed["id"]
                # noted on the run still going, for a later tick than its own
                assert at(event["scheduledFor"]) > at(unfinished["scheduledFor"])

        both = await self.run(4)
        triggered, paused = both["triggerSchedule"], both["pauseSchedule"]
        assert triggered["scheduleId"] == report["id"] and triggered["status"] == "QUEUED"
        assert abs((at(triggered["scheduledFor"]) - datetime.now(UTC)).total_seconds()) < 10
        assert paused == {"name": "weekday report", "paused": True}
        assert (await finish(self.user, triggered["id"]))[-1]["status"] == "SUCCEEDED"
        return dict(feed)

    # --- Named queues --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def queues_section(self, settings: Settings) -> AsyncIterator[None]:
        """Examples 5-8: a task on `reports`, which no worker serves; `queues`; pause
        (refused to an ordinary key); a worker for `reports,default` started while paused
        (the prose's step); resume. Yields with that second worker still running."""
        waiting = (await self.run(5))["submitTask"]
        assert (waiting["status"], waiting["queue"]) == ("QUEUED", "reports")

        async def default_served() -> bool:
            """the first worker's heartbeat lists `default` and `scrape`"""
            found = await self.queues()
            return bool(found["default"]["workers"] == 1 == found["scrape"]["workers"])

        await eventually(default_served, within=10)
        reports = (await self.queues())["reports"]
        assert (reports["queued"], reports["running"], reports["workers"]) == (1, 0, 0)
        assert reports["paused"] is False and reports["oldestQueuedAt"] is not None

        with pytest.raises(TransportQueryError) as refused:
            await self.run(7)  # an ordinary key may not pause a queue
        assert refused.value.errors is not None
        assert refused.value.errors[0]["extensions"]["code"] == "FORBIDDEN"
        pause = (await self.run(7, self.admin))["pauseQueue"]
        assert (pause["name"], pause["paused"], pause["queued"]) == ("reports", True, 1)

        # "start a worker for it now": the README's `WORKER_QUEUES=reports,default`
        async with run_worker(settings.model_copy(update={"worker_queues": "reports,default"})):

            async def reports_served() -> bool:
                """a live worker serves `reports`"""
                return bool((await self.queues())["reports"]["workers"] == 1)

            await eventually(reports_served, within=10)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:  # paused: served, yet it does not start
                assert (await self.task(waiting["id"]))["status"] == "QUEUED"
                await asyncio.sleep(0.1)
            resumed = (await self.run(8, self.admin))["resumeQueue"]
            assert resumed == {"name": "reports", "paused": False}
            assert (await finish(self.user, waiting["id"]))[-1]["status"] == "SUCCEEDED"
            yield

    # --- Concurrency keys ----------------------------------------------------------------

    async def concurrency_section(self) -> None:
        """Examples 9-10: five 1 s tasks of one key with limit 2, on the two workers that
        serve `default` now; the tasks query, as written, sampled until all are done."""
        started = time.monotonic()
        batch = (await self.run(9))["submitTasks"]
        assert len(batch) == 5
        assert {(t["status"], t["concurrencyKey"], t["concurrencyLimit"]) for t in batch} == {
            ("QUEUED", "partner-api", 2)
        }
        most_running, held_back = 0, []
        while True:
            nodes = [e["node"] for e in (await self.run(10))["tasks"]["edges"]]
            assert len(nodes) == 5
            running = sum(n["status"] == "RUNNING" for n in nodes)
            assert running <= 2, nodes
            most_running = max(most_running, running)
            held_back += [n for n in nodes if n["waitingForSlot"]]
            if all(n["status"] == "SUCCEEDED" for n in nodes):
                break
            assert time.monotonic() - started < 20, f"not all done within 20 s: {nodes}"
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        assert most_running == 2
        assert held_back, "a task waiting for a slot was seen"
        assert all(n["status"] == "QUEUED" and n["queuePosition"] is None for n in held_back)
        assert all(n["attempts"] == 0 for n in held_back), "waiting uses no attempt"
        assert all(n["attempts"] == 1 for n in nodes)
        assert elapsed >= 2.5, "five 1 s tasks, two at a time: three rounds"

    # --- Bulk cancel and retry -----------------------------------------------------------

    async def bulk_section(self, feed: dict[str, Any]) -> None:
        """Example 11, once a feed task has just started (so that one is RUNNING to
        cancel): the schedule is gone, and the count is what it cancelled."""
        fresh: list[str] = []

        async def a_fresh_feed_run() -> bool:
            """a feed task started less than 1.5 s ago runs"""
            found = [e["node"] for e in (await self.user.execute(FEED_RUNNING))["tasks"]["edges"]]
            now = datetime.now(UTC)
            fresh[:] = [n["id"] for n in found if (now - at(n["startedAt"])).total_seconds() < 1.5]
            return bool(fresh)

        await eventually(a_fresh_feed_run, within=10, step=0.1)
        stopped = await self.run(11)
        assert stopped["deleteSchedule"] is True
        assert stopped["cancelTasks"] >= 1
        assert (await finish(self.user, fresh[0]))[-1]["status"] == "CANCELLED"
        nodes: list[dict[str, Any]] = []

        async def feed_settled() -> bool:
            """no feed task is QUEUED or RUNNING"""
            nodes[:] = [e["node"] for e in (await self.user.execute(FEED_ALL))["tasks"]["edges"]]
            return all(n["status"] not in ("QUEUED", "RUNNING") for n in nodes)

        await eventually(feed_settled, within=10)
        cancelled = [n for n in nodes if n["status"] == "CANCELLED"]
        assert len(cancelled) == stopped["cancelTasks"], "the count is what it cancelled"
        assert {n["scheduleId"] for n in nodes} == {feed["id"]}
        gone = await self.user.execute(
            "query($id: ID!) { schedule(id: $id) { id } }", id=feed["id"]
        )
        assert gone["schedule"] is None


async def test_the_examples_run_as_written_in_order(settings: Settings) -> None:
    async with run_api(settings) as url, run_worker(settings):
        user = await Stack.keyed(url, settings, owner="reader")
        admin = user.as_key(await make_key(settings, "ops", admin=True))
        reader = Reader(user, admin, examples())
        feed = await reader.schedules_section()
        async with reader.queues_section(settings):
            await reader.concurrency_section()
        await reader.bulk_section(feed)
