"""A cancelTask that read QUEUED while a worker starts the task must not mark it CANCELLED
under a running body: the cancel then stops the body, and the task ends CANCELLED only once
the body has ended, so a retryTask can never run a second body beside the first."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa
from gql.transport.exceptions import TransportQueryError
from sqlalchemy.ext.asyncio import AsyncEngine

from taskrunner import control
from taskrunner.config import Settings
from taskrunner.states import TaskStatus
from tests.support.body_probe import BodyProbe
from tests.support.servers import run_api, run_worker
from tests.support.stack import Stack
from tests.support.tasks import submit
from tests.support.waiting import eventually

CANCEL = "mutation($id: ID!) { cancelTask(id: $id) { status } }"
RETRY = "mutation($id: ID!) { retryTask(id: $id) { status } }"


async def _status(engine: AsyncEngine, task_id: str) -> str:
    async with engine.connect() as conn:
        return str(await conn.scalar(sa.text(f"SELECT status FROM task WHERE id = '{task_id}'")))


async def test_a_cancel_racing_a_start_never_leaves_a_body_running(
    settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = BodyProbe()
    paused, resume = asyncio.Event(), asyncio.Event()

    async def between_read_and_write(task_id: uuid.UUID, status: TaskStatus) -> None:
        if status is TaskStatus.QUEUED and not paused.is_set():
            paused.set()  # cancelTask has read QUEUED; the worker starts the task now
            await resume.wait()

    monkeypatch.setattr(control, "before_cancel_write", between_read_and_write)
    async with run_api(settings) as url:
        stack = await Stack.keyed(url, settings)
        task_id = await submit(stack, {"sleep": {"seconds": 2}})
        tid = uuid.UUID(task_id)
        cancelling = asyncio.create_task(stack.execute(CANCEL, id=task_id))
        await asyncio.wait_for(paused.wait(), 10)
        async with run_worker(settings, functions=[probe.job()]):
            await probe.wait(lambda: probe.bodies_of(tid) == [1], within=10)
            resume.set()
            await cancelling

            # From here on: whenever the table says CANCELLED, no body of the task runs,
            # and retryTask (tried at once and again until accepted) never overlaps one.
            cancelled_under_a_body: list[list[int]] = []
            retried = False
            async with asyncio.timeout(15):
                while not retried:
                    status = await _status(engine, task_id)
                    if status == "CANCELLED" and probe.bodies_of(tid):
                        cancelled_under_a_body.append(probe.bodies_of(tid))
                    try:
                        await stack.execute(RETRY, id=task_id)
                        retried = True
                    except TransportQueryError as exc:
                        assert exc.errors and exc.errors[0]["extensions"]["code"] == "CONFLICT"
                        await asyncio.sleep(0.02)
                await probe.wait(lambda: len(probe.started) == 2, within=10)
                await probe.wait(lambda: not probe.bodies_of(tid), within=10)

                async def finished() -> bool:
                    """the second attempt's outcome is written"""
                    return await _status(engine, task_id) != "RUNNING"

                await eventually(finished, within=10)

    assert not cancelled_under_a_body, "CANCELLED while the body still ran"
    assert probe.most == 1, "a retry ran a second body beside the first"
    assert probe.started == [(tid, 1), (tid, 2)]
    async with engine.connect() as conn:
        statuses = list(
            await conn.scalars(
                sa.text(
                    "SELECT data->>'status' FROM task_event WHERE task_id = :t "
                    "AND kind = 'status' ORDER BY seq"
                ),
                {"t": tid},
            )
        )
    assert statuses == ["QUEUED", "RUNNING", "CANCELLED", "QUEUED", "RUNNING", "SUCCEEDED"]
