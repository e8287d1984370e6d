"""GroupCommit on its own (no servers): no writer hangs, a refused group is retried one by
one, a failed commit is never re-run."""

from __future__ import annotations

import asyncio

import pytest

from taskrunner.groupcommit import GroupCommit, Refused


async def test_a_writer_coming_back_as_the_flushers_finish_is_not_stranded() -> None:
    """Two flushers hold one group each and end in the same loop step; the writer they
    release submits again at once. Its unit must still be flushed (a flusher counted as
    running until its done-callback ran left such a unit waiting for ever)."""
    release = asyncio.Event()

    async def flush(units: list[str]) -> list[str]:
        await release.wait()
        return units

    group: GroupCommit[str, str] = GroupCommit(flush, max_items=10, flushers=2)

    async def writer(name: str) -> list[str]:
        first = await group.submit(f"{name}1")
        second = await group.submit(f"{name}2")  # before the flushers' done-callbacks ran
        return [first, second]

    a = asyncio.create_task(writer("a"))
    await asyncio.sleep(0.01)  # flusher 1 holds [a1]
    b = asyncio.create_task(group.submit("b1"))  # b does not come back
    await asyncio.sleep(0.01)  # flusher 2 holds [b1]
    release.set()  # both wake up in the same step
    async with asyncio.timeout(2):
        assert await asyncio.gather(a, b) == [["a1", "a2"], "b1"]


async def test_a_refused_group_runs_each_unit_alone() -> None:
    async def flush(units: list[int]) -> list[int]:
        await asyncio.sleep(0)
        if len(units) > 1 and 3 in units:
            raise Refused("a unit was refused") from ValueError("3 is bad")
        if units == [3]:
            raise Refused("refused") from ValueError("3 is bad")
        return [u * 10 for u in units]

    group: GroupCommit[int, int] = GroupCommit(flush, max_items=10, flushers=1)
    results = await asyncio.gather(*(group.submit(u) for u in range(5)), return_exceptions=True)
    assert results[:3] == [0, 10, 20] and results[4] == 40
    assert isinstance(results[3], ValueError) and str(results[3]) == "3 is bad"


async def test_a_failed_commit_fails_its_group_and_is_not_run_again() -> None:
    """An error that is not `Refused` may have come after COMMIT: running the units again
    could apply them twice, so every writer of the group gets the error instead."""
    calls: list[list[int]] = []

    async def flush(units: list[int]) -> list[int]:
        calls.append(units)
        await asyncio.sleep(0)
        raise ConnectionResetError("lost during COMMIT")

    group: GroupCommit[int, int] = GroupCommit(flush, max_items=10, flushers=1)
    results = await asyncio.gather(*(group.submit(u) for u in range(4)), return_exceptions=True)
    assert all(isinstance(r, ConnectionResetError) for r in results)
    assert sum(len(c) for c in calls) == 4  # each unit flushed exactly once


@pytest.mark.parametrize("flushers", [1, 2, 4])
async def test_every_unit_gets_its_own_result(flushers: int) -> None:
    async def flush(units: list[int]) -> list[int]:
        await asyncio.sleep(0.001)
        return [-u for u in units]

    group: GroupCommit[int, int] = GroupCommit(flush, max_items=7, flushers=flushers)
    async with asyncio.timeout(5):
        results = await asyncio.gather(*(group.submit(u) for u in range(200)))
    assert results == [-u for u in range(200)]
    assert group.groups < 200
