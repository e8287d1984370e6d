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

A group shares its fate: if `flush` raises for a group of several units, each unit is run
again alone, so one bad unit fails only its own writer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - one writer's unit of work
R = TypeVar("R")  # its result

log = logging.getLogger(__name__)


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
        self._flushers: set[asyncio.Task[None]] = set()
        self.groups = 0  # flushes run (for tests and benchmarks)
        self.largest = 0  # most units in one flush

    async def submit(self, unit: I) -> R:
        """Run `unit` in the next group; its result, or the exception its run raised."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((unit, future))
        if len(self._flushers) < self._max_flushers:
            flusher = asyncio.create_task(self._run(), name="group-commit")
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return await future

    async def _run(self) -> None:
        while self._waiting:
            group = self._waiting[: self._max_items]
            del self._waiting[: self._max_items]
            group = [(unit, future) for unit, future in group if not future.cancelled()]
            if not group:
                continue
            self.groups += 1
            self.largest = max(self.largest, len(group))
            try:
                results = await self._flush([unit for unit, _ in group])
            except Exception as exc:
                if len(group) == 1:
                    _settle(group[0][1], exc)
                    continue
                log.debug("a group of %d failed (%r); running each alone", len(group), exc)
                for unit, future in group:
                    try:
                        (result,) = await self._flush([unit])
                    except Exception as alone:
                        _settle(future, alone)
                    else:
                        _settle(future, result)
                continue
            except BaseException as exc:  # cancelled (shutdown): the writers must not hang
                for _, future in group:
                    _settle(future, exc)
                for _, future in self._waiting:
                    _settle(future, exc)
                self._waiting.clear()
                raise
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
