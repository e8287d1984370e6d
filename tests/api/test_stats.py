"""`stats` (the console's overview) and the task filter's `ids` and `errorCode`, on a real
api and worker: the counts are those of `tasks` queries, the buckets hold what finished,
the failures are grouped by code; a bulk action and a subscription follow the new filters;
a bad window is refused naming its argument."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from gql import GraphQLRequest

from tests.support.schedules import error_of
from tests.support.stack import Stack
from tests.support.tasks import ended as task_ended
from tests.support.tasks import submit

STATUS = "query($id: ID!) { task(id: $id) { status error { code } } }"
STATS = """
query($since: DateTime, $bucket: Int!) {
  stats(since: $since, bucketSeconds: $bucket) {
    since bucketSeconds
    counts { status count }
    buckets { start succeeded failed cancelled queueWait { p50 p95 } runTime { p50 p95 } }
    queueWait { p50 p95 } runTime { p50 p95 }
    failuresByCode { code count }
  }
}"""
LIST = """
query($filter: TaskFilter, $after: String) {
  tasks(filter: $filter, first: 100, after: $after) {
    edges { node { id } } pageInfo { hasNextPage endCursor }
  }
}"""
FEED = """
subscription($filter: TaskFilter) {
  tasksUpdates(filter: $filter) { taskId ... on StatusChanged { status } }
}"""


async def listed(stack: Stack, **filter: Any) -> set[str]:
    ids: set[str] = set()
    after = None
    while True:
        page = (await stack.execute(LIST, filter=filter, after=after))["tasks"]
        ids |= {e["node"]["id"] for e in page["edges"]}
        if not page["pageInfo"]["hasNextPage"]:
            return ids
        after = page["pageInfo"]["endCursor"]


async def test_stats_count_what_tasks_lists_and_bucket_what_finished(stack: Stack) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    ok = [await submit(stack, {"echo": {"message": f"m{i}"}}) for i in range(4)]
    bad = [await submit(stack, {"fail": {"retryable": False}}) for _ in range(2)]
    for task_id in ok + bad:
        await task_ended(stack, STATUS, task_id)
    waiting = await submit(stack, {"echo": {"message": "x"}}, delaySeconds=3600)  # QUEUED all along

    found = (await stack.execute(STATS, since=since.isoformat(), bucket=5))["stats"]
    counts = {c["status"]: c["count"] for c in found["counts"]}
    assert set(counts) == {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"}
    for status, count in counts.items():
        assert count == len(await listed(stack, status=[status], createdAfter=found["since"]))
    assert (counts["SUCCEEDED"], counts["FAILED"], counts["QUEUED"]) == (4, 2, 1)
    finished = [(b["succeeded"], b["failed"], b["cancelled"]) for b in found["buckets"]]
    assert tuple(map(sum, zip(*finished, strict=True))) == (4, 2, 0)
    assert found["bucketSeconds"] == 5 and len(found["buckets"]) >= 1
    starts = [datetime.fromisoformat(b["start"]) for b in found["buckets"]]
    assert all(b - a == timedelta(seconds=5) for a, b in itertools.pairwise(starts))
    whole = found["runTime"]
    assert whole["p50"] is not None and 0 <= whole["p50"] <= whole["p95"] < 5
    assert found["queueWait"]["p50"] is not None and found["queueWait"]["p50"] >= 0
    assert found["failuresByCode"] == [{"code": "TASK_ERROR", "count": 2}]
    by_code = await listed(stack, status=["FAILED"], errorCode=["TASK_ERROR"])
    assert by_code == set(bad)
    assert await listed(stack, errorCode=["TIMEOUT"]) == set()
    assert waiting in await listed(stack, status=["QUEUED"])

    # an hour by default: the same tasks, in minutes
    default = (await stack.execute(STATS, since=None, bucket=60))["stats"]
    assert len(default["buckets"]) == 60
    assert {c["status"]: c["count"] for c in default["counts"]}["SUCCEEDED"] >= 4


async def test_ids_pick_tasks_for_lists_bulk_actions_and_subscriptions(stack: Stack) -> None:
    held = [await submit(stack, {"echo": {"message": "x"}}, delaySeconds=3600) for _ in range(3)]
    assert await listed(stack, ids=held[:2]) == set(held[:2])
    assert await listed(stack, ids=[]) == set()  # none, not every task
    assert (await stack.execute("mutation { cancelTasks(filter: {ids: []}) }"))["cancelTasks"] == 0

    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        request = GraphQLRequest(FEED, variable_values={"filter": {"ids": [held[0]]}})
        async with stack.ws_client() as session:
            async for update in session.subscribe(request):
                seen.append(update["tasksUpdates"])

    follower = asyncio.create_task(follow())
    try:
        await asyncio.sleep(1.0)  # subscribed
        cancel = "mutation($f: TaskFilter!) { cancelTasks(filter: $f) }"
        assert (await stack.execute(cancel, f={"ids": held}))["cancelTasks"] == 3
        for task_id in held:
            assert (await task_ended(stack, STATUS, task_id))["status"] == "CANCELLED"
        await asyncio.sleep(0.5)
    finally:
        follower.cancel()
    assert seen and {e["taskId"] for e in seen} == {held[0]}, seen
    assert seen[-1]["status"] == "CANCELLED"


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"since": None, "bucket": 0}, "bucketSeconds"),
        ({"since": None, "bucket": 1}, "bucketSeconds"),  # 3,600 buckets
        ({"since": "2999-01-01T00:00:00Z", "bucket": 60}, "since"),
        ({"since": "2020-01-01T00:00:00Z", "bucket": 86400}, "since"),
        ({"since": "2026-01-01T00:00:00", "bucket": 60}, "since"),
    ],
)
async def test_a_window_that_cannot_be_answered_is_refused_by_name(
    api: Stack, variables: dict[str, Any], field: str
) -> None:
    with pytest.raises(Exception) as raised:
        await api.execute(STATS, **variables)
    error = error_of(raised.value)
    assert (error["code"], error["field"]) == ("BAD_INPUT", field), error
    assert field in error["message"]


async def test_too_many_ids_are_refused_by_name(api: Stack) -> None:
    ids = ["00000000-0000-0000-0000-000000000000"] * 1001
    with pytest.raises(Exception) as raised:
        await api.execute(LIST, filter={"ids": ids}, after=None)
    assert error_of(raised.value)["field"] == "filter.ids"


async def test_workers_report_their_memory_and_queues(stack: Stack) -> None:
    await task_ended(stack, STATUS, await submit(stack, {"echo": {"message": "x"}}))
    workers = (await stack.execute("{ workers { memoryBytes queues } }"))["workers"]
    assert workers and all("default" in w["queues"] for w in workers), workers
    assert all(20 * 2**20 < w["memoryBytes"] < 4 * 2**30 for w in workers), workers
