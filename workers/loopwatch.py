"""A watchdog outside the worker's event loop: a thread that notices when the loop stops
turning (a task body that blocks: `time.sleep`, a CPU loop, a C call that does not yield),
and says which asyncio task held it and for how long.

The loop runs a ticker that stamps the time every TICK_SECONDS. The thread looks at the
stamp as often: older than WORKER_BLOCK_WARN_SECONDS means the loop is blocked. It then
reads the task the loop is running (`asyncio.current_task(loop)` from the thread: a task
body runs in an asyncio task named `task:<id>`, see workers.runner), logs
`event_loop_blocked` (WARNING) when the block ends with its task id and duration (and
`event_loop_still_blocked` every STILL_BLOCKED_EVERY seconds while it lasts), and counts it
in `taskrunner_event_loop_blocked_total` / `_seconds`. Blocking work belongs in a process
task (workers.processes); the heartbeats are written from a thread of their own
(workers.background), so a few seconds of block do not get the worker declared dead."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from taskrunner import metrics
from taskrunner.logs import event

log = logging.getLogger(__name__)

TICK_SECONDS = 0.05
STILL_BLOCKED_EVERY = 5.0
TASK_PREFIX = "task:"


@dataclass
class Block:
    """A block seen so far: since when (the last tick before it), and who held the loop."""

    since: float
    culprit: str | None  # the asyncio task's name, None: no task (a callback)
    reported: float = 0.0  # when a "still blocked" line was last written


@dataclass
class LoopWatch:
    loop: asyncio.AbstractEventLoop
    warn_seconds: float
    last_tick: float = field(default_factory=time.monotonic)
    blocks: int = 0  # blocks reported
    last: tuple[dict[str, str], float] | None = None  # the last one: who, how long
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    async def tick(self) -> None:
        """The loop's side: stamp the time, forever."""
        while True:
            self.last_tick = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _watch(self) -> None:
        block: Block | None = None
        while not self._stop.wait(TICK_SECONDS):
            now, last = time.monotonic(), self.last_tick
            if now - last > self.warn_seconds:
                if block is not None and block.since != last:  # the loop turned unseen
                    self._report(block, max(0.0, last - block.since - TICK_SECONDS))
                    block = None
                if block is None:
                    block = Block(last, self._culprit(), reported=now)
                elif now - block.reported >= STILL_BLOCKED_EVERY:
                    block.reported = now
                    event(
                        "event_loop_still_blocked",
                        logging.WARNING,
                        blocked_seconds=round(now - last, 2),
                        **_who(block.culprit),
                    )
            elif block is not None:  # it turned again: the block is over
                self._report(block, max(0.0, last - block.since - TICK_SECONDS))
                block = None

    def _culprit(self) -> str | None:
        try:
            task = asyncio.current_task(self.loop)  # a read of the loop's current task
        except RuntimeError:
            return None
        return task.get_name() if task is not None else None

    def _report(self, block: Block, seconds: float) -> None:
        self.blocks += 1
        who = _who(block.culprit)
        self.last = (who, seconds)
        metrics.LOOP_BLOCKS.labels("task" if "task_id" in who else "worker").inc()
        metrics.LOOP_BLOCKED_SECONDS.observe(seconds)
        event("event_loop_blocked", logging.WARNING, blocked_seconds=round(seconds, 2), **who)


def _who(culprit: str | None) -> dict[str, str]:
    if culprit is not None and culprit.startswith(TASK_PREFIX):
        return {"task_id": culprit[len(TASK_PREFIX) :]}
    return {"asyncio_task": culprit or "(none)"}


async def watch_loop(warn_seconds: float) -> None:
    """Run the watchdog until cancelled (a background task of the worker)."""
    watch = LoopWatch(asyncio.get_running_loop(), warn_seconds)
    watch.start()
    try:
        await watch.tick()
    finally:
        with contextlib.suppress(Exception):
            watch.stop()
