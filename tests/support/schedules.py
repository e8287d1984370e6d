"""Schedules as a client handles them (GraphQL on a running api: create, read, the tasks
they fired), their ticks as numbers on their grid, and `schedule` rows built by hand for
the pure `taskrunner.schedules.plan`."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from taskrunner.schedules import ScheduleRecord
from tests.support.stack import Stack

FIELDS = """id name cron everySeconds timezone task options paused nextRunAt lastRunAt
overlap catchup skippedTicks lastSkippedAt createdAt"""
CREATE = f"mutation($s: ScheduleInput!) {{ createSchedule(schedule: $s) {{ {FIELDS} }} }}"
UPDATE = f"""mutation($id: ID!, $s: ScheduleInput!) {{
  updateSchedule(id: $id, schedule: $s) {{ {FIELDS} }}
}}"""
PAUSE = f"mutation($id: ID!) {{ pauseSchedule(id: $id) {{ {FIELDS} }} }}"
RESUME = f"mutation($id: ID!) {{ resumeSchedule(id: $id) {{ {FIELDS} }} }}"
DELETE = "mutation($id: ID!) { deleteSchedule(id: $id) }"
TRIGGER = """mutation($id: ID!) {
  triggerSchedule(id: $id) { id status scheduleId scheduledFor createdAt }
}"""
GET = f"query($id: ID!) {{ schedule(id: $id) {{ {FIELDS} }} }}"
LIST = f"""query($first: Int, $after: String) {{
  schedules(first: $first, after: $after) {{
    edges {{ cursor node {{ {FIELDS} }} }} pageInfo {{ hasNextPage endCursor }}
  }}
}}"""
TASK_FIELDS = "id status scheduleId scheduledFor createdAt startedAt finishedAt labels"
TASKS = f"""query($id: ID!, $first: Int, $after: String) {{
  schedule(id: $id) {{
    tasks(first: $first, after: $after) {{
      edges {{ cursor node {{ {TASK_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }}
    }}
  }}
}}"""

ECHO = {"echo": {"message": "tick"}}


def schedule_input(
    name: str = "tick", *, task: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """A ScheduleInput: `name`, `task` (default an echo) and any other fields as given
    (everySeconds, cron, timezone, options, overlap, catchup, paused)."""
    return {"name": name, "task": task or ECHO, **fields}


async def create(stack: Stack, name: str = "tick", **fields: Any) -> dict[str, Any]:
    """createSchedule; the Schedule's FIELDS."""
    result = await stack.execute(CREATE, s=schedule_input(name, **fields))
    return dict(result["createSchedule"])


async def get(stack: Stack, schedule_id: str) -> dict[str, Any] | None:
    found = (await stack.execute(GET, id=schedule_id))["schedule"]
    return dict(found) if found is not None else None


async def fired(stack: Stack, schedule_id: str, page: int = 100) -> list[dict[str, Any]]:
    """Every task the schedule fired (Schedule.tasks, all pages), newest tick first."""
    tasks: list[dict[str, Any]] = []
    after = None
    while True:
        found = (await stack.execute(TASKS, id=schedule_id, first=page, after=after))["schedule"]
        assert found is not None, f"schedule {schedule_id} is gone"
        connection = found["tasks"]
        tasks += [edge["node"] for edge in connection["edges"]]
        if not connection["pageInfo"]["hasNextPage"]:
            return tasks
        after = connection["pageInfo"]["endCursor"]


def at(value: str) -> datetime:
    """A DateTime as GraphQL gives it."""
    return datetime.fromisoformat(value)


def tick_numbers(schedule: dict[str, Any], tasks: list[dict[str, Any]]) -> list[int]:
    """Each task's tick as k (scheduledFor = createdAt + k * everySeconds), oldest first;
    fails if one is off the schedule's grid."""
    created, every = at(schedule["createdAt"]), float(schedule["everySeconds"])
    numbers = []
    for task in tasks:
        offset = (at(task["scheduledFor"]) - created).total_seconds() / every
        k = round(offset)
        assert abs(offset - k) < 1e-3, (
            f"scheduledFor {task['scheduledFor']} is not on the grid of {every}s from "
            f"{schedule['createdAt']}"
        )
        numbers.append(k)
    return sorted(numbers)


def gaps(numbers: list[int]) -> list[range]:
    """The runs of tick numbers missing between the first and the last of `numbers`."""
    return [range(a + 1, b) for a, b in itertools.pairwise(numbers) if b - a > 1]


def error_of(exc: BaseException) -> dict[str, Any]:
    """The first GraphQL error of a refused call (gql's TransportQueryError): message and
    extensions."""
    errors = getattr(exc, "errors", None)
    assert errors, f"not a GraphQL error: {exc!r}"
    return {"message": errors[0]["message"], **errors[0].get("extensions", {})}


# --- rows for plan() --------------------------------------------------------------------

T0 = datetime(2030, 1, 1, tzinfo=UTC)  # a schedule's creation: every grid starts here


def seconds(n: float) -> datetime:
    """T0 + n seconds."""
    return T0 + timedelta(seconds=n)


def record(
    *,
    every: float | None = 1.0,
    cron: str | None = None,
    timezone: str = "UTC",
    next_run_at: datetime | None = None,
    catchup: str = "ONE",
    overlap: str = "ALLOW",
    last_task: bool = False,
    created_at: datetime = T0,
) -> ScheduleRecord:
    """A schedule row as `fire_due` reads it (created at T0 unless given)."""
    return ScheduleRecord(
        id=uuid.uuid4(),
        owner="tester",
        key_id=None,
        name="plan",
        cron=cron,
        every_seconds=every if cron is None else None,
        timezone=timezone,
        task_type="echo",
        task_input={"message": "x"},
        options={},
        overlap=overlap,
        catchup=catchup,
        paused=False,
        next_run_at=next_run_at,
        last_run_at=None,
        last_task_id=uuid.uuid4() if last_task else None,
        skipped=0,
        last_skipped_at=None,
        created_at=created_at,
    )
