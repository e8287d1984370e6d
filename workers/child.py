"""The child process of a process task (workers.processes): `python -m workers.child`.

It reads requests from stdin and writes messages to the pipe that was its stdout (its own
stdout then goes to stderr, so a `print` in a task cannot corrupt the protocol); one JSON
object per line each way. A request runs one task body: its module imported by name, its
input rebuilt from the validated JSON the parent sends, and `run(ctx, input)` called
(`asyncio.run` for an async one). Progress, log lines (`ctx.log` and Python `logging`) and
artifacts (written to a temporary file the parent stores) go to the parent as they happen;
the body's result or error ends the request.

SIGTERM (a timeout, a cancel) raises `Terminated` in the body, so its `finally` blocks run;
the child then exits. The parent sends SIGKILL if it has not exited after
TASK_KILL_GRACE_SECONDS."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import signal
import sys
import tempfile
import traceback
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from pydantic_core import to_jsonable_python

from taskrunner.retries import RetryPolicy, retryable
from taskrunner.transitions import error_of

LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})


class Terminated(BaseException):
    """Raised in the body by SIGTERM: its time is over, or it was cancelled."""


class ArtifactRefused(Exception):
    """The parent did not store an artifact (over a limit, the attempt moved on)."""

    def __init__(self, message: str, code: str = "LIMIT_EXCEEDED") -> None:
        super().__init__(message)
        self.code = code


class Channel:
    """The protocol's two ends: requests in, messages out."""

    def __init__(self, inbox: BinaryIO, outbox: BinaryIO) -> None:
        self.inbox, self.outbox = inbox, outbox

    def send(self, message: dict[str, Any]) -> None:
        self.outbox.write(orjson.dumps(message, default=to_jsonable_python) + b"\n")
        self.outbox.flush()

    def receive(self) -> dict[str, Any] | None:
        line = self.inbox.readline()
        return orjson.loads(line) if line else None


class ProcessContext:
    """What a process task's body is handed as `ctx` (the in-process TaskContext's
    counterpart, with plain methods)."""

    def __init__(
        self, channel: Channel, task_id: uuid.UUID, attempt: int, parent_results: dict[str, Any]
    ) -> None:
        self._channel = channel
        self.task_id = task_id
        self.attempt = attempt
        self.parent_results = parent_results

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress in [0, 1] (clamped), with an optional message."""
        value = min(1.0, max(0.0, float(fraction)))
        self._channel.send({"op": "progress", "fraction": value, "message": message})

    def log(self, line: str, level: str = "info") -> None:
        """Append a log line (level: debug, info, warning or error)."""
        if level not in LOG_LEVELS:
            raise ValueError(f"level must be one of {sorted(LOG_LEVELS)}, not {level!r}")
        self._channel.send({"op": "log", "line": str(line), "level": level})

    def artifact(
        self, name: str, data: bytes | Path, content_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """Store a file the task produced (bytes, or a Path the parent reads); its record
        (id, name, size). Over a limit: ArtifactRefused, nothing kept."""
        temporary = None
        if isinstance(data, bytes | bytearray):
            fd, temporary = tempfile.mkstemp(prefix="taskrunner-artifact-")
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            path = temporary
        else:
            path = str(Path(data).resolve())
        try:
            self._channel.send(
                {"op": "artifact", "name": name, "path": path, "content_type": content_type}
            )
            reply = self._channel.receive()
        finally:
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
        if reply is None:
            raise Terminated()
        if not reply.get("ok"):
            raise ArtifactRefused(str(reply.get("error")), str(reply.get("code") or "TASK_ERROR"))
        return dict(reply["artifact"])


class _ToParent(logging.Handler):
    """Records logged by the body become its log lines, as in the worker."""

    def __init__(self, ctx: ProcessContext) -> None:
        super().__init__(logging.DEBUG)
        self.ctx = ctx
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = (
                "error"
                if record.levelno >= logging.ERROR
                else "warning"
                if record.levelno >= logging.WARNING
                else "info"
                if record.levelno >= logging.INFO
                else "debug"
            )
            self.ctx.log(self.format(record), level)
        except Exception:
            self.handleError(record)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def run_one(channel: Channel, request: dict[str, Any]) -> bool:
    """Run the body the request names and send how it ended; whether this child may run
    another (not after SIGTERM)."""
    sys.path[:] = request.get("sys_path") or sys.path
    module = importlib.import_module(request["module"])
    body = getattr(module, request.get("function") or "run")
    data = module.Input.model_validate(request["input"])
    policy = getattr(module, "RETRY", RetryPolicy())
    ctx = ProcessContext(
        channel,
        uuid.UUID(request["task_id"]),
        int(request["attempt"]),
        request.get("parent_results") or {},
    )
    handler = _ToParent(ctx)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        result = (
            asyncio.run(body(ctx, data)) if inspect.iscoroutinefunction(body) else body(ctx, data)
        )
        try:
            payload = to_jsonable_python(result)
            orjson.dumps(payload)
        except Exception as exc:
            channel.send({"op": "bad_result", "message": f"result is not JSON-serializable: {exc}"})
        else:
            channel.send({"op": "done", "result": payload})
        return True
    except Terminated:
        channel.send({"op": "terminated"})
        return False
    except Exception as exc:
        code, message = error_of(exc)
        channel.send(
            {
                "op": "error",
                "code": code.value,
                "message": message,
                "traceback": "".join(traceback.format_exception(exc)),
                "retryable": retryable(policy, exc),
            }
        )
        return True
    finally:
        root.removeHandler(handler)


def main() -> None:
    # The protocol takes the pipe that is stdout; what the body prints goes to stderr.
    outbox = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker's Ctrl-C is the worker's
    logging.getLogger().setLevel(logging.INFO)
    channel = Channel(sys.stdin.buffer, outbox)
    channel.send({"op": "ready", "pid": os.getpid()})
    try:
        while (request := channel.receive()) is not None:
            if not run_one(channel, request):
                break
    except Terminated:
        pass


if __name__ == "__main__":
    main()
