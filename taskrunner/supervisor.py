"""`taskrunner dev`'s supervision: its api and worker as child processes, started again
with backoff when one dies, stopped together on Ctrl-C or SIGTERM (signals held while a
child starts, so none is left behind)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from taskrunner.errors import ConfigError


class Stop(Exception):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt."""


_held_signals: list[BaseException] | None = None


def raise_stop(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C and SIGTERM stop `taskrunner dev` at once, except inside `signals_held()`:
    there they are raised on leaving it."""
    exc: BaseException = KeyboardInterrupt() if signum == signal.SIGINT else Stop()
    if _held_signals is not None:
        _held_signals.append(exc)
        return
    raise exc


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Defer Ctrl-C and SIGTERM over a few lines that must not be cut short, such as
    starting a child and recording it (one started but not recorded would never be
    stopped)."""
    global _held_signals
    outer, _held_signals = _held_signals, []
    try:
        yield
    finally:
        held, _held_signals = _held_signals, outer
        if held:
            raise held[0]


def describe_exit(returncode: int) -> str:
    """How a process ended: `exit code 3`, or `killed by SIGKILL` (what the kernel's OOM
    killer sends)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Supervised:
    """One process of the dev stack, started again whenever it exits: after `first_delay`,
    doubling while it keeps dying (a crash loop costs little) up to `max_delay`, and back
    to `first_delay` once a run lasted `stable_after`. `check()` does the watching: call it
    often."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str],
        first_delay: float = 0.5,
        max_delay: float = 10.0,
        stable_after: float = 30.0,
        stop_timeout: float = 15.0,
        say: Callable[[str], None] = _say,
        **popen: Any,
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        self.stop_timeout = stop_timeout
        self.say = say
        self.popen = popen
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None
        self._next_delay = first_delay

    def start(self) -> subprocess.Popen[bytes]:
        with signals_held():
            self.process = process = subprocess.Popen(self.args, env=self.env, **self.popen)
            self.started_at = time.monotonic()
            self.restart_at = None
        return process

    def check(self) -> float | None:
        """Start it again if its delay is over. If it has just exited, say so and return
        the delay before it starts again."""
        now = time.monotonic()
        if self.process is None:
            if self.restart_at is not None and now >= self.restart_at:
                self.say(f"{self.name} started again (pid {self.start().pid})")
            return None
        code = self.process.poll()
        if code is None:
            return None
        if now - self.started_at >= self.stable_after:
            self._next_delay = self.first_delay
        delay = self._next_delay
        self._next_delay = min(delay * 2, self.max_delay)
        self.process, self.restart_at = None, now + delay
        self.say(f"{self.name} exited ({describe_exit(code)}); restarting in {delay:.1f} s")
        return delay

    def terminate(self) -> None:
        """SIGTERM (the worker hands its running tasks back), and no restart."""
        self.restart_at = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        """Wait `stop_timeout` for it to end after `terminate()`, then SIGKILL."""
        if self.process is None:
            return
        try:
            self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def stop(self) -> None:
        self.terminate()
        self.wait_stopped()


def wait_ready(url: str, children: list[Supervised], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.process is not None and (code := child.process.poll()) is not None:
                raise ConfigError(
                    f"the {child.name} exited at start ({describe_exit(code)}): see its "
                    "output above"
                )
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise ConfigError(f"the api did not become ready at {url} within {timeout:.0f}s")


def stop_children(children: list[Supervised]) -> None:
    for child in children:
        child.terminate()
    for child in children:
        child.wait_stopped()


def require_free_port(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            raise ConfigError(
                f"PORT {port} is already in use on {host}: stop what listens there, or set "
                f"PORT to a free port (e.g. PORT={port + 1} make dev)"
            ) from None
