"""Queue scores with fair sharing, and the claim script's rate limits, on a real Redis:
owners take turns at one priority, priorities still win, one owner keeps FIFO order, a
PRIORITY_MIN job of an owner far ahead is due at once; a rated job over its limit is parked
out of its queue (unrated jobs behind it are claimed) and put back when a token frees."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from arq import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix

from taskrunner import queue, ratelimit
from workers.settings import CLAIM_JOBS


def jobs(n: int, owner: str | None, priority: int = 0, **extra: Any) -> list[queue.Job]:
    return [queue.Job("echo", uuid.uuid4(), priority, owner=owner, **extra) for _ in range(n)]


async def order(pool: ArqRedis) -> list[str]:
    return [m.decode() for m in await pool.zrange(pool.default_queue_name, 0, -1)]


async def claim(pool: ArqRedis, free: int) -> tuple[int, list[str]]:
    """One poll of CLAIM_JOBS over the default queue: (ms until a parked bucket is due or
    -1, the ids claimed in order)."""
    script = pool.register_script(CLAIM_JOBS)
    wait, *claimed = await script(
        keys=[pool.default_queue_name],
        args=[
            int(time.time() * 1000),
            60_000,
            free,
            1000,
            in_progress_key_prefix,
            1,
            pool.default_queue_name,
            ratelimit.START_MARGIN_MS,
            job_key_prefix,
        ],
    )
    return int(wait), [c.decode() for c in claimed[::3]]


async def test_an_owner_s_burst_does_not_hold_back_another_owner(pool: ArqRedis) -> None:
    burst = jobs(1000, "alice")
    await queue.enqueue(pool, burst)
    late = jobs(3, "bob")
    await queue.enqueue(pool, late)
    ids = await order(pool)
    # bob's jobs are placed at now: behind the few of alice's that fall before now
    # (1,000 jobs enqueued in well under 0.5 s: at most 50 slices), not behind the burst
    for job in late:
        assert ids.index(str(job.task_id)) < 60
    # alice alone keeps FIFO order, and so does bob
    assert [i for i in ids if i in {str(j.task_id) for j in burst}] == [
        str(j.task_id) for j in burst
    ]
    assert [i for i in ids if i in {str(j.task_id) for j in late}] == [str(j.task_id) for j in late]


async def test_owners_take_turns_when_both_have_a_backlog(pool: ArqRedis) -> None:
    a, b = jobs(50, "alice"), jobs(50, "bob")
    await queue.enqueue(pool, a)
    await queue.enqueue(pool, b)
    owner = {str(j.task_id): "a" for j in a} | {str(j.task_id): "b" for j in b}
    first = [owner[i] for i in (await order(pool))[:40]]
    # round-robin in effect: in any 40 in a row, both have about half
    assert 15 <= first.count("a") <= 25, first


async def test_fifo_within_one_owner_across_enqueues(pool: ArqRedis) -> None:
    batches = [jobs(5, "alice") for _ in range(4)]
    for batch in batches:
        await queue.enqueue(pool, batch)
    expected = [str(j.task_id) for batch in batches for j in batch]
    assert await order(pool) == expected


async def test_priorities_win_over_fair_places(pool: ArqRedis) -> None:
    burst = jobs(500, "alice")
    await queue.enqueue(pool, burst)
    low = jobs(1, "bob", priority=-1)
    urgent = jobs(1, "alice", priority=1)  # behind alice's burst in her clock
    await queue.enqueue(pool, low + urgent)
    ids = await order(pool)
    assert ids[0] == str(urgent[0].task_id)
    assert ids[-1] == str(low[0].task_id)


async def test_priority_min_of_an_owner_far_ahead_is_due(pool: ArqRedis) -> None:
    clocks = queue.vclock_key(pool.default_queue_name)
    far = int(time.time() * 1000) + 30 * 24 * 3600 * 1000  # a month of backlog ahead
    await pool.hset(clocks, "alice", far)
    lowest = jobs(1, "alice", priority=queue.PRIORITY_MIN)
    await queue.enqueue(pool, lowest)
    assert await pool.zscore(pool.default_queue_name, str(lowest[0].task_id)) == (
        queue.score(queue.PRIORITY_MIN, far)
    )
    _, claimed = await claim(pool, 10)
    assert claimed == [str(lowest[0].task_id)]


async def test_a_ready_step_keeps_its_workflow_s_place_and_moves_its_owner_s_clock(
    pool: ArqRedis,
) -> None:
    clocks = queue.vclock_key(pool.default_queue_name)
    await queue.enqueue(pool, jobs(10, "bob"))
    since = int(time.time() * 1000) - 60_000
    step = jobs(1, "alice", since_ms=since)
    await queue.enqueue(pool, step)
    assert (await order(pool))[0] == str(step[0].task_id)
    assert int(await pool.hget(clocks, "alice")) >= since + 60_000  # now + a slice


async def test_unowned_jobs_keep_plain_fifo(pool: ArqRedis) -> None:
    first = jobs(3, None)
    await queue.enqueue(pool, first)
    await asyncio.sleep(0.01)
    second = jobs(3, None)
    await queue.enqueue(pool, second)
    ids = await order(pool)
    assert set(ids[:3]) == {str(j.task_id) for j in first}
    assert not await pool.exists(queue.vclock_key(pool.default_queue_name))


async def test_rated_jobs_over_the_limit_are_parked_and_come_back(pool: ArqRedis) -> None:
    rated = jobs(5, "alice", rate_limit="2 per 1 seconds")
    plain = jobs(2, "alice")
    await queue.enqueue(pool, rated + plain)
    assert await pool.hlen(queue.rated_key(pool.default_queue_name)) == 5
    wait, claimed = await claim(pool, 10)
    # two tokens: the first two rated jobs, then the unrated ones behind the parked three
    assert claimed == [str(j.task_id) for j in rated[:2] + plain]
    assert 900 <= wait <= 1000 + ratelimit.START_MARGIN_MS
    assert set(await order(pool)) == {str(j.task_id) for j in rated[:2] + plain}
    assert await pool.hlen(queue.rated_key(pool.default_queue_name)) == 3  # unclaimed ones
    # parked jobs are not lost to the reconciler's eye
    assert await queue.missing(pool, rated[2:]) == []
    # nothing is claimed, and nothing comes back, until a token frees
    again, none = await claim(pool, 10)
    assert none == [] and 0 < again <= wait
    await asyncio.sleep((again + 50) / 1000)
    _, back = await claim(pool, 10)
    assert back == [str(j.task_id) for j in rated[2:4]]  # in their order, two tokens
    # a cancelled parked job is dropped when its turn comes, with no token used
    await queue.remove(pool, rated[4].task_id)
    wait, _ = await claim(pool, 10)
    await asyncio.sleep((wait + 50) / 1000)
    wait, last = await claim(pool, 10)
    assert last == [] and wait == -1
    assert await pool.hlen(queue.rated_key(pool.default_queue_name)) == 0


async def test_unrated_enqueues_write_no_rate_keys(pool: ArqRedis) -> None:
    await queue.enqueue(pool, jobs(5, "alice"))
    await claim(pool, 10)
    assert not await pool.keys(f"{pool.default_queue_name}:rate*")
    assert not await pool.keys(f"{pool.default_queue_name}:parked*")
