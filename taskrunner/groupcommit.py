"""Group commit: concurrent writers of one process share a transaction.

One transaction per state change caps PostgreSQL at a few hundred commits per second on a
small machine, and most of a short transaction's cost is its round trips (BEGIN, lock,
write, COMMIT), not its rows. Here a writer hands its unit of work to a `GroupCommit`; the
first one starts a flusher that takes everything queued so far (up to `max_items`) and runs
it through one call of `flush`, while later writers queue up for the next round. Up to
`flushers` groups are in flight at once (one waits for its COMMIT while the next is being
written). Nothing waits on a timer: an idle process commits at once, a busy one commits
in groups as large as the load makes them.

Groups may commit in any order, as separate transactions would: the journal's row locks,
per-task `seq` and xid checks keep each task's history in order.

A refused group is retried unit by unit: when `flush` raises `Refused` (nothing was
committed, e.g. PostgreSQL rejected one unit's row), each unit runs again alone, so one bad
unit fails only its own writer. Any other exception (the commit itself failed, and may or
may not have happened) goes to every writer of the group: running their units again could
apply them twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - one writer's unit of work
R = TypeVar("R")  # its result

log = logging.getLogger(__name__)


class Refused(Exception):
    """Raised by a flush when nothing was committed; `__cause__` is the reason."""


def _reason(exc: BaseException) -> BaseException:
    return exc.__cause__ if isinstance(exc, Refused) and exc.__cause__ is not None else exc


class GroupCommit(Generic[I, R]):
    """Runs `flush(units) -> results` (one result per unit, same order) for groups of units
    submitted concurrently."""

    def __init__(
        self,
        flush: Callable[[list[I]], Awaitable[list[R]]],
        max_items: int,
        flushers: int = 2,
    ) -> None:
        self._flush = flush
        self._max_items = max_items
        self._max_flushers = flushers
        self._waiting: list[tuple[I, asyncio.Future[R]]] = []
        self._flushers: set[asyncio.Task[None]] = set()  # strong references to the tasks
        self._running = 0  # flushers that will still look at `_waiting`
        self.groups = 0  # flushes run (for tests and benchmarks)
        self.largest = 0  # most units in one flush

    async def submit(self, unit: I) -> R:
        """Run `unit` in the next group; its result, or the exception its run raised."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((unit, future))
        if self._running < self._max_flushers:
            self._running += 1
            flusher = asyncio.create_task(self._run(), name="group-commit")
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return await future

    async def _run(self) -> None:
        group: list[tuple[I, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                group = [
                    (unit, future)
                    for unit, future in self._waiting[: self._max_items]
                    if not future.cancelled()
                ]
                del self._waiting[: self._max_items]
                if group:
                    await self._flush_group(group)
                group = []
        except BaseException as exc:  # cancelled (shutdown): no writer may hang
            for _, future in [*group, *self._waiting]:
                _settle(future, exc)
            self._waiting.clear()
            raise
        finally:
            # in the same step as the loop found nothing waiting: a writer arriving next
            # starts a flusher of its own
            self._running -= 1

    async def _flush_group(self, group: list[tuple[I, asyncio.Future[R]]]) -> None:
        self.groups += 1
        self.largest = max(self.largest, len(group))
        try:
            results = await self._flush([unit for unit, _ in group])
        except Refused as exc:
            if len(group) == 1:
                _settle(group[0][1], _reason(exc))
                return
            log.debug("a group of %d was refused (%r); running each alone", len(group), exc)
            for unit, future in group:
                try:
                    (result,) = await self._flush([unit])
                except Exception as alone:
                    _settle(future, _reason(alone))
                else:
                    _settle(future, result)
            return
        except Exception as exc:
            for _, future in group:
                _settle(future, exc)
            return
        for (_, future), result in zip(group, results, strict=True):
            _settle(future, result)


def _settle(future: asyncio.Future[R], outcome: R | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        if isinstance(outcome, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(outcome)
    else:
        future.set_result(outcome)
