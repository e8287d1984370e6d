"""Workflows under faults, with real processes on 127.0.0.1: 30 workflows (diamonds and
10 -> 1 fan-ins of `sleep` steps, joined by `sum` steps bound from their parents) run on
worker processes while a worker is SIGKILLed mid-step, Redis is flushed, and the api is
SIGKILLed in the middle of the submissions and started again; and a ready step whose job
Redis lost, which the reconciler enqueues (and which is no stall for workflows.repair).

What is checked is read from PostgreSQL, the truth: the steps' rows and their StatusChanged,
StepReady and WorkflowStatusChanged events.

No test here makes a stalled workflow (RUNNING, no step running or in the queue) for
workflows.repair: the end of a step and its settling are one transaction, so no crash
leaves one. The big test checks that, under its faults, repair never found one."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import queue, workflows
from taskrunner.config import Settings
from taskrunner.embedded import free_port
from tests.support.environment import process_env
from tests.support.processes import Process, spawn, stop, wait_ready
from tests.support.servers import run_worker
from tests.support.stack import Stack, make_key
from tests.support.waiting import eventually

SUBMIT = "mutation($w: WorkflowInput!) { submitWorkflow(workflow: $w) { id } }"
WORKERS = "{ workers { id pid runningTaskIds } }"
LISTED = "{ workflows(first: 100) { edges { node { id status } } } }"
RETRIES = {"maxRetries": 3}
STEPS = sa.text(
    "SELECT w.id AS workflow_id, w.status AS workflow_status, s.key, s.depends_on, "
    "t.id AS task_id, t.status, t.attempts, t.waiting, t.input, t.result "
    "FROM workflow w JOIN workflow_step s ON s.workflow_id = w.id "
    "JOIN task t ON t.id = s.task_id ORDER BY w.created_at, s.position"
)
EVENTS = sa.text("SELECT task_id, kind, at, data FROM task_event ORDER BY id")
RECONCILED = re.compile(
    r"re-enqueued (\d+) lost tasks, recovered (\d+) orphans, settled (\d+) stalled workflows"
)


def sleep_step(key: str, seconds: float, parents: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "key": key,
        "task": {"sleep": {"seconds": seconds}},
        "options": RETRIES,
        "dependsOn": list(parents),
    }


def join_step(key: str, parents: tuple[str, ...]) -> dict[str, Any]:
    """A `sum` of what each parent slept (bound from their results)."""
    return {
        "key": key,
        "task": {"sum": {"numbers": []}},
        "options": RETRIES,
        "dependsOn": list(parents),
        "bind": [{"field": "numbers[]", "step": p, "path": "slept"} for p in parents],
    }


def seconds(n: int, i: int) -> float:
    return 0.2 + 0.1 * ((n + i) % 4)


def diamond(n: int) -> dict[str, Any]:
    """a -> (b, c) -> d"""
    return {
        "name": f"diamond-{n}",
        "idempotencyKey": f"workflow-{n}",
        "steps": [
            sleep_step("a", seconds(n, 0)),
            sleep_step("b", seconds(n, 1), ("a",)),
            sleep_step("c", seconds(n, 2), ("a",)),
            join_step("d", ("b", "c")),
        ],
    }


def fan_in(n: int) -> dict[str, Any]:
    """p0 .. p9 -> total"""
    parts = tuple(f"p{i}" for i in range(10))
    return {
        "name": f"fan-in-{n}",
        "idempotencyKey": f"workflow-{n}",
        "steps": [
            *(sleep_step(p, seconds(n, i)) for i, p in enumerate(parts)),
            join_step("total", parts),
        ],
    }


WORKFLOWS = [fan_in(n) if n % 3 == 0 else diamond(n) for n in range(30)]


# --- the history, from PostgreSQL ---------------------------------------------------------


@dataclass
class StepHistory:
    workflow_id: uuid.UUID
    key: str
    parents: list[str]
    status: str
    attempts: int
    waiting: str | None
    input: Any
    result: Any
    running: list[datetime] = field(default_factory=list)  # its StatusChanged RUNNING
    succeeded: list[datetime] = field(default_factory=list)
    ready: list[datetime] = field(default_factory=list)  # its StepReady
    lost: int = 0  # StatusChanged QUEUED with WORKER_LOST
    workflow_changes: list[str] = field(default_factory=list)  # WorkflowStatusChanged


async def history(engine: AsyncEngine) -> tuple[dict[uuid.UUID, str], dict[uuid.UUID, StepHistory]]:
    """Every workflow's status, and every step's row and events, by task id."""
    async with engine.connect() as conn:
        rows = (await conn.execute(STEPS)).all()
        events = (await conn.execute(EVENTS)).all()
    statuses = {r.workflow_id: r.workflow_status for r in rows}
    steps = {
        r.task_id: StepHistory(
            r.workflow_id,
            r.key,
            list(r.depends_on),
            r.status,
            r.attempts,
            r.waiting,
            r.input,
            r.result,
        )
        for r in rows
    }
    for e in events:
        step = steps[e.task_id]
        if e.kind == "status" and e.data["status"] == "RUNNING":
            step.running.append(e.at)
        elif e.kind == "status" and e.data["status"] == "SUCCEEDED":
            step.succeeded.append(e.at)
        elif e.kind == "status" and e.data.get("error", {}).get("code") == "WORKER_LOST":
            assert e.data["status"] == "QUEUED", (step.key, e.data)  # retries were left
            step.lost += 1
        elif e.kind == "step_ready":
            step.ready.append(e.at)
        elif e.kind == "workflow":
            step.workflow_changes.append(e.data["status"])
    return statuses, steps


def violations(steps: dict[uuid.UUID, StepHistory]) -> list[str]:
    """What breaks the workflows' promises: each workflow noted one change, to SUCCEEDED,
    and each of its steps keeps those of `step_violations`."""
    found: list[str] = []
    by_workflow: dict[uuid.UUID, dict[str, StepHistory]] = defaultdict(dict)
    for step in steps.values():
        by_workflow[step.workflow_id][step.key] = step
    for workflow_id, keyed in by_workflow.items():
        noted = [c for s in keyed.values() for c in s.workflow_changes]
        if noted != ["SUCCEEDED"]:
            found.append(f"{workflow_id}: workflow changes {noted}")
        for key, s in keyed.items():
            found += step_violations(f"{workflow_id}/{key}", s, [keyed[p] for p in s.parents])
    return found


def step_violations(name: str, s: StepHistory, parents: list[StepHistory]) -> list[str]:
    """The step SUCCEEDED once and ran once per attempt (a new attempt only after its
    worker was lost); a root was never made ready, another step once, after its last
    parent SUCCEEDED, and started only after that; a join adds what its parents slept."""
    found: list[str] = []
    if (s.status, s.waiting, len(s.succeeded)) != ("SUCCEEDED", None, 1):
        found.append(f"{name}: {s.status}, waiting {s.waiting}, SUCCEEDED at {s.succeeded}")
    if s.attempts < 1 or len(s.running) != s.attempts:
        found.append(f"{name}: {len(s.running)} RUNNING for {s.attempts} attempts")
    if s.lost != s.attempts - 1:
        found.append(f"{name}: {s.attempts} attempts, {s.lost} of them lost")
    if not parents:
        return found + ([f"{name}: a root made ready {len(s.ready)} times"] if s.ready else [])
    if any(len(p.succeeded) != 1 for p in parents):
        return found  # reported for that parent
    last_parent = max(p.succeeded[0] for p in parents)
    if len(s.ready) != 1 or s.ready[0] < last_parent:
        found.append(f"{name}: ready at {s.ready}, its last parent SUCCEEDED {last_parent}")
    early = [r for r in s.running if r <= last_parent or (s.ready and r < s.ready[0])]
    if early:
        found.append(f"{name}: RUNNING at {early}, before its parents SUCCEEDED")
    if "numbers" in s.input and all("seconds" in p.input for p in parents):
        slept = [p.input["seconds"] for p in parents]
        if s.input != {"numbers": slept} or s.result != {"sum": pytest.approx(sum(slept))}:
            found.append(f"{name}: input {s.input}, result {s.result}; slept {slept}")
    return found


# --- processes ----------------------------------------------------------------------------


@dataclass
class Processes:
    """The api and worker processes of a test, each stopped at the end (SIGTERM, then
    SIGKILL); the workers' stderr in `logs`."""

    settings: Settings
    logs: Path
    started: list[Process] = field(default_factory=list)
    named: int = 0  # worker logs named so far (taken before any await: gather runs several)

    async def api(self) -> tuple[str, Process]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = await spawn("api", env=process_env(self.settings, PORT=str(port)))
        self.started.append(proc)
        await wait_ready(url, proc)
        return url, proc

    async def worker(self) -> Process:
        env = process_env(self.settings, WORKER_CONCURRENCY="3")
        self.named += 1
        with (self.logs / f"worker-{self.named}.log").open("wb") as log:
            proc = await spawn("worker", env=env, stderr=log)
        self.started.append(proc)
        return proc

    async def workers(self, count: int) -> list[Process]:
        return list(await asyncio.gather(*(self.worker() for _ in range(count))))

    async def stop_all(self) -> None:
        await asyncio.gather(*(stop(p) for p in self.started))

    def reconciled(self) -> list[tuple[int, int, int]]:
        """Every reconciler round that did something, in any worker: (tasks re-enqueued,
        orphans recovered, workflows settled)."""
        return [
            (int(m[1]), int(m[2]), int(m[3]))
            for path in sorted(self.logs.glob("worker-*.log"))
            for m in RECONCILED.finditer(path.read_text(errors="replace"))
        ]


async def live_workers(stack: Stack, workers: list[Process]) -> None:
    """Until every one of `workers` sends heartbeats (fails if one exits)."""

    async def beating() -> bool:
        """every worker process sends heartbeats"""
        assert all(w.returncode is None for w in workers), "a worker exited at start"
        found = {w["pid"] for w in (await stack.execute(WORKERS))["workers"]}
        return {w.pid for w in workers} <= found

    await eventually(beating, within=30, step=0.1)


async def submitted(stack: Stack, specs: list[dict[str, Any]]) -> dict[str, str]:
    """submitWorkflow of each spec at once: {idempotency key: workflow id}."""
    ids = await asyncio.gather(*(stack.execute(SUBMIT, w=w) for w in specs))
    return {w["idempotencyKey"]: r["submitWorkflow"]["id"] for w, r in zip(specs, ids, strict=True)}


async def running_on(engine: AsyncEngine, worker_id: str) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        found = await conn.scalars(
            sa.text("SELECT id FROM task WHERE status = 'RUNNING' AND worker_id = :w"),
            {"w": worker_id},
        )
        return set(found)


# --- the faults ---------------------------------------------------------------------------


async def test_thirty_workflows_succeed_in_order_through_a_sigkill_a_flushall_and_an_api_crash(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    """3 worker processes (3 tasks each) run 30 workflows (20 diamonds, 10 fan-ins of ten,
    maxRetries 3). The busiest worker is SIGKILLed mid-step and replaced; Redis is flushed
    with jobs waiting; the api is SIGKILLed after 5 of the last 15 submissions and started
    again, and the client submits those 15 again with their idempotency keys. Every
    workflow SUCCEEDS, once each; only the killed worker's steps ran twice; no step started
    before its parents SUCCEEDED; and the reconciler recovered exactly the killed worker's
    steps, enqueued again what the flush lost and never found a stalled workflow."""
    procs = Processes(settings, tmp_path)
    redis = Redis.from_url(settings.require_redis_url())
    first_wave, second_wave = WORKFLOWS[:15], WORKFLOWS[15:]
    try:
        (url, api), workers, key = await asyncio.gather(
            procs.api(), procs.workers(3), make_key(settings)
        )
        client = Stack(url, settings, key)
        await live_workers(client, workers)
        ids = await submitted(client, first_wave)

        # the busiest worker is SIGKILLed while it runs steps; a new one takes its place
        busiest: dict[str, Any] = {}

        async def busy() -> bool:
            """a worker runs 3 steps"""
            pids = {w.pid for w in workers}
            beats = [b for b in (await client.execute(WORKERS))["workers"] if b["pid"] in pids]
            busiest.update(max(beats, key=lambda b: len(b["runningTaskIds"])))
            return len(busiest["runningTaskIds"]) == 3

        await eventually(busy, within=20)
        (victim,) = [w for w in workers if w.pid == busiest["pid"]]
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        interrupted = await running_on(engine, busiest["id"])
        assert interrupted, "the killed worker was running no step"
        workers = [w for w in workers if w is not victim] + [await procs.worker()]

        # Redis loses everything while jobs wait in the queue
        waiting_jobs = await redis.zcard(settings.queue_name)
        await redis.flushall()
        assert waiting_jobs > 0, "the flush lost no job"

        # the api dies in the middle of the submissions and is started again
        confirmed: dict[str, str] = {}

        async def submit_one_by_one() -> None:
            for spec in second_wave:
                confirmed.update(await submitted(client, [spec]))

        submitting = asyncio.create_task(submit_one_by_one())

        async def five_confirmed() -> bool:
            """5 of the last 15 submissions answered"""
            return len(confirmed) >= 5 or submitting.done()

        await eventually(five_confirmed, within=20, step=0.005)
        api.send_signal(signal.SIGKILL)
        await api.wait()
        with contextlib.suppress(Exception):
            await submitting
        assert 5 <= len(confirmed) < 15, f"the api died after {len(confirmed)} submissions"
        url, api = await procs.api()
        client = Stack(url, settings, key)
        again = await submitted(client, second_wave)
        assert {k: again[k] for k in confirmed} == confirmed, "a resubmission made another"
        ids.update(again)

        async def all_ended() -> bool:
            """the 30 workflows ended"""
            async with engine.connect() as conn:
                ended = await conn.scalar(
                    sa.text("SELECT count(*) FROM workflow WHERE status <> 'RUNNING'")
                )
            return bool(ended == len(WORKFLOWS))

        await eventually(all_ended, within=60, step=0.2)
        listed = (await client.execute(LISTED))["workflows"]["edges"]
        assert all(p.returncode is None for p in [api, *workers]), "a process exited"
    finally:
        await redis.aclose()
        await procs.stop_all()

    assert len(ids) == len(WORKFLOWS)
    assert sorted((e["node"]["id"], e["node"]["status"]) for e in listed) == sorted(
        (i, "SUCCEEDED") for i in ids.values()
    )
    statuses, steps = await history(engine)
    assert set(statuses.values()) == {"SUCCEEDED"} and len(statuses) == len(WORKFLOWS)
    assert len(steps) == 20 * 4 + 10 * 11
    assert violations(steps) == []
    rerun = {tid for tid, s in steps.items() if s.attempts > 1}
    assert rerun == interrupted, "steps other than the killed worker's ran again"
    rounds = procs.reconciled()
    assert sum(r[1] for r in rounds) == len(interrupted), rounds
    assert sum(r[0] for r in rounds) >= 1, f"nothing re-enqueued after the flush: {rounds}"
    assert [r for r in rounds if r[2]] == [], "the reconciler found stalled workflows"


async def test_a_ready_step_whose_job_redis_lost_is_enqueued_by_the_reconciler(
    api: Stack, engine: AsyncEngine
) -> None:
    """a -> b, b on a queue the first worker does not serve: a SUCCEEDS and makes b ready
    (enqueued on `later`). That worker stops, Redis is flushed: b is ready in PostgreSQL
    with no job anywhere. workflows.repair sees no stall in that (it settles nothing, changes
    nothing). A worker serving both queues starts: its reconciler enqueues b, which runs
    once, after a, and the workflow SUCCEEDS."""
    settings = api.settings
    spec = {
        "steps": [
            {"key": "a", "task": {"sum": {"numbers": [1, 2]}}},
            {
                "key": "b",
                "task": {"sum": {"numbers": [10]}},
                "options": {"queue": "later", "maxRetries": 2},
                "dependsOn": ["a"],
                "bind": [{"field": "numbers[]", "step": "a", "path": "sum"}],
            },
        ]
    }
    workflow_id = (await api.execute(SUBMIT, w=spec))["submitWorkflow"]["id"]
    later = queue.key(settings.queue_name, "later")
    redis = Redis.from_url(settings.require_redis_url())
    try:
        async with run_worker(settings):

            async def b_enqueued() -> bool:
                """b is ready and its job waits on `later`"""
                _, steps = await history(engine)
                b = next(s for s in steps.values() if s.key == "b")
                return b.ready != [] and await redis.zcard(later) == 1

            await eventually(b_enqueued, within=15)
        await redis.flushall()
        statuses, steps = await history(engine)
        by_key = {s.key: (tid, s) for tid, s in steps.items()}
        b_id, b = by_key["b"]
        assert await redis.zscore(later, str(b_id)) is None
        assert (b.status, b.waiting, b.attempts, len(b.ready)) == ("QUEUED", None, 0, 1)
        assert by_key["a"][1].status == "SUCCEEDED"
        assert statuses == {uuid.UUID(workflow_id): "RUNNING"}

        async with engine.connect() as conn:
            events_before = await conn.scalar(sa.text("SELECT count(*) FROM task_event"))
        assert await workflows.repair(engine, redis) == 0
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT count(*) FROM task_event")) == events_before

        async with run_worker(settings.model_copy(update={"worker_queues": "default,later"})):

            async def workflow_ended() -> bool:
                """the workflow ended"""
                found, _ = await history(engine)
                return found[uuid.UUID(workflow_id)] != "RUNNING"

            await eventually(workflow_ended, within=15)
    finally:
        await redis.aclose()
    statuses, steps = await history(engine)
    assert statuses == {uuid.UUID(workflow_id): "SUCCEEDED"}
    assert violations(steps) == []
    b = steps[b_id]
    assert (b.attempts, len(b.running), b.result) == (1, 1, {"sum": 13})
