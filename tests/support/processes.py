"""Subprocesses of a test (`python -m taskrunner ...`, a probe module): started in the
repository with the environment given (see environment.process_env), waited for until
ready, and always stopped: SIGTERM, then SIGKILL if it does not exit in time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from taskrunner.config import Settings
from taskrunner.embedded import free_port
from tests.support.environment import process_env, repo_root

Process = asyncio.subprocess.Process


async def spawn(
    *args: str, env: Mapping[str, str], module: str = "taskrunner", **options: Any
) -> Process:
    """`python -m MODULE ARGS` in the repository; `options` go to create_subprocess_exec
    (stdout, stderr, start_new_session ...)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=repo_root(), env=dict(env), **options
    )


async def stop(proc: Process, within: float = 15) -> int:
    """SIGTERM (unless it has exited), SIGKILL after `within` s; its exit code."""
    if proc.returncode is None:
        proc.terminate()
        try:
            return await asyncio.wait_for(proc.wait(), within)
        except TimeoutError:
            proc.kill()
    return await proc.wait()


@contextlib.asynccontextmanager
async def running(*args: str, env: Mapping[str, str], **options: Any) -> AsyncIterator[Process]:
    """`spawn(*args, ...)`, stopped on leaving (if it has not exited by then)."""
    proc = await spawn(*args, env=env, **options)
    try:
        yield proc
    finally:
        await stop(proc)


async def run(
    *args: str, env: Mapping[str, str], module: str = "taskrunner", within: float = 60
) -> tuple[int, str, str]:
    """`python -m MODULE ARGS` to its end (killed after `within` s): exit code, stdout,
    stderr."""
    proc = await spawn(
        *args,
        env=env,
        module=module,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"python -m {module} {' '.join(args)} ran past {within}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def keys_cli(env: Mapping[str, str], *args: str) -> tuple[int, str, str]:
    """`taskrunner keys ARGS`: exit code, stdout, stderr."""
    return await run("keys", *args, env=env)


async def wait_ready(url: str, proc: Process | None = None, within: float = 30) -> None:
    """Until the api at `url` answers /readyz with 200; fails if `proc` exits first."""
    async with httpx.AsyncClient(base_url=url) as client, asyncio.timeout(within):
        while True:
            if proc is not None and proc.returncode is not None:
                raise AssertionError(f"the api exited with {proc.returncode} at start")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)


def _log_to(log: Path | None) -> Any:
    return log.open("wb") if log is not None else contextlib.nullcontext(None)


@contextlib.asynccontextmanager
async def api_process(
    settings: Settings, log: Path | None = None, **env: str
) -> AsyncIterator[str]:
    """`taskrunner api` on a free port, its stderr in `log` (if given); yields its base URL
    once it is ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _log_to(log) as stderr:
        environment = process_env(settings, PORT=str(port), **env)
        async with running("api", env=environment, stderr=stderr) as proc:
            await wait_ready(url, proc)
            yield url


@contextlib.asynccontextmanager
async def api_processes(settings: Settings, count: int, **env: str) -> AsyncIterator[list[str]]:
    """`count` api processes started at once (`api_process`'s); yields their base URLs once
    every one is ready."""
    ports = [free_port() for _ in range(count)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    async with contextlib.AsyncExitStack() as stack:
        procs = [
            await stack.enter_async_context(
                running("api", env=process_env(settings, PORT=str(port), **env))
            )
            for port in ports
        ]
        await asyncio.gather(
            *(wait_ready(url, proc) for url, proc in zip(urls, procs, strict=True))
        )
        yield urls


@contextlib.asynccontextmanager
async def worker_process(
    settings: Settings, log: Path | None = None, **env: str
) -> AsyncIterator[Process]:
    """`taskrunner worker`, its stderr in `log` (if given)."""
    with _log_to(log) as stderr:
        async with running("worker", env=process_env(settings, **env), stderr=stderr) as proc:
            yield proc


def dev_env(data_dir: Path, port: int, **env: str) -> dict[str, str]:
    """For `taskrunner dev` as a user starts it: its own servers under `data_dir` (not the
    test's), serving on `port`."""
    return {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "DATA_DIR": str(data_dir),
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        **env,
    }


async def ctrl_c(proc: Process, within: float = 60) -> int:
    """What Ctrl-C in a terminal does to `proc`'s process group; its exit code."""
    os.killpg(proc.pid, signal.SIGINT)
    return await asyncio.wait_for(proc.wait(), within)


def pid_alive(pid_file: Path) -> bool:
    """Whether the process a pid file (postmaster.pid, redis.pid) names is running."""
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def popen(*args: str, env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`spawn` for synchronous code (a thread): `python -m taskrunner ARGS`, its stdout
    and stderr in `log`; stopped on leaving as `stop` does."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskrunner", *args],
            cwd=repo_root(),
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
