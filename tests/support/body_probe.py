"""A task body that counts itself, for tests that must know how many bodies run: the real
`sleep` body wrapped, registered under its own name on a real worker (`run_worker(settings,
functions=[probe.job()])`), so the api accepts it as `sleep`."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from arq.worker import Function

from workers.catalog import catalog
from workers.settings import arq_function
from workers.task_context import TaskContext


@dataclass
class BodyProbe:
    running: set[tuple[uuid.UUID, int]] = field(default_factory=set)  # (task, attempt) now
    started: list[tuple[uuid.UUID, int]] = field(default_factory=list)  # every body begun
    most: int = 0  # most bodies of one task running at once
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def job(self, name: str = "sleep") -> Function:
        base = catalog()[name]

        async def run(ctx: TaskContext, input: Any) -> Any:
            key = (ctx.task_id, ctx.attempt)
            self.running.add(key)
            self.started.append(key)
            self.most = max(self.most, len(self.bodies_of(ctx.task_id)))
            self.changed.set()
            try:
                return await base.run(ctx, input)
            finally:
                self.running.discard(key)
                self.changed.set()

        return arq_function(replace(base, run=run))

    def bodies_of(self, task_id: uuid.UUID) -> list[int]:
        """The attempts of `task_id` whose body runs now."""
        return sorted(a for t, a in self.running if t == task_id)

    async def wait(self, check: Any, within: float) -> None:
        """Until `check()` holds (it is re-checked whenever a body starts or ends)."""
        async with asyncio.timeout(within):
            while not check():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.05)
