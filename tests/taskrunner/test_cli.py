"""`taskrunner dev` as a user runs it: prints the GraphiQL URL, serves GraphiQL, stops
everything on Ctrl-C, and keeps the tasks for the next start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import httpx

from taskrunner.embedded import free_port
from tests.support.environment import repo_root
from tests.support.processes import ctrl_c, dev_env, keys_cli, pid_alive, spawn
from tests.support.stack import Stack
from tests.support.tasks import WATCH


async def _start_dev(data_dir: Path, port: int) -> tuple[asyncio.subprocess.Process, str, str]:
    """Start `taskrunner dev`; its GraphiQL URL and the development API key it prints."""
    proc = await spawn(
        "dev",
        env=dev_env(data_dir, port),
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, like a terminal job
    )
    assert proc.stdout is not None
    async with asyncio.timeout(90):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "taskrunner dev exited before printing the GraphiQL line"
            if line.startswith("GraphiQL: "):
                url = line.removeprefix("GraphiQL: ").strip()
                dashboard_line = (await proc.stdout.readline()).decode()
                assert dashboard_line.startswith("Dashboard: "), dashboard_line
                key_line = (await proc.stdout.readline()).decode()
                assert key_line.startswith("API key: "), key_line
                return proc, url, key_line.removeprefix("API key: ").strip()


async def test_dev_serves_graphiql_stops_on_ctrl_c_and_keeps_tasks(tmp_path: Path) -> None:
    port = free_port()
    proc, url, key = await _start_dev(tmp_path / "data", port)
    try:
        assert url == f"http://127.0.0.1:{port}/graphql"
        async with httpx.AsyncClient() as client:
            page = await client.get(url, headers={"Accept": "text/html"})
        assert page.status_code == 200 and "graphiql" in page.text.lower()
        assert f'"Authorization": "Bearer {key}"' in page.text  # the page comes authorised
        stack = Stack(url.removesuffix("/graphql"), settings=None, key=key)  # type: ignore[arg-type]
        task_id = (
            await stack.execute('mutation { submitTask(task: {echo: {message: "kept"}}) { id } }')
        )["submitTask"]["id"]
        # `taskrunner keys` finds the running dev stack's database by itself
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        code, out, _ = await keys_cli({**env, "DATA_DIR": str(tmp_path / "data")}, "list")
        assert code == 0 and out.splitlines()[1].split()[:3] == ["dev", "dev", "user"]
    finally:
        code = await ctrl_c(proc)
    assert code == 0
    assert not pid_alive(tmp_path / "data" / "postgres" / "postmaster.pid")
    assert not pid_alive(tmp_path / "data" / "redis" / "redis.pid")

    proc, url, again = await _start_dev(tmp_path / "data", port)
    assert again == key  # the same development key on every start
    try:
        listed = await stack.execute("{ tasks { edges { node { id type status } } } }")
    finally:
        assert await ctrl_c(proc) == 0
    nodes = [e["node"] for e in listed["tasks"]["edges"]]
    assert [n["id"] for n in nodes] == [task_id]
    assert nodes[0]["status"] == "SUCCEEDED"


_STARTED: dict[int, asyncio.Event] = {}


async def _wait_started_then_drain(proc: asyncio.subprocess.Process) -> None:
    """Note arq's "Starting worker" line (its signal handlers are set by then), then keep
    reading stderr so the pipe never fills."""
    started = _STARTED.setdefault(proc.pid, asyncio.Event())
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        if b"Starting worker" in line:
            started.set()


async def _started(proc: asyncio.subprocess.Process) -> None:
    await _STARTED.setdefault(proc.pid, asyncio.Event()).wait()


async def test_the_arq_cli_runs_the_worker(api: Stack) -> None:
    """Scaling workers is `arq workers.settings.WorkerSettings`, once per replica."""
    env = {
        **os.environ,
        "DATABASE_URL": api.settings.require_database_url(),
        "REDIS_URL": api.settings.require_redis_url(),
        "LOG_LEVEL": "WARNING",
    }
    arq = Path(sys.executable).parent / "arq"
    workers = [
        await asyncio.create_subprocess_exec(
            str(arq),
            "workers.settings.WorkerSettings",
            cwd=repo_root(),
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    drains = [asyncio.create_task(_wait_started_then_drain(w)) for w in workers]
    try:
        await asyncio.wait_for(asyncio.gather(*(_started(w) for w in workers)), 60)
        ids = [
            (
                await api.execute(
                    f'mutation {{ submitTask(task: {{echo: {{message: "{i}"}}}}) {{ id }} }}'
                )
            )["submitTask"]["id"]
            for i in range(6)
        ]
        for task_id in ids:
            events = await api.subscribe(WATCH, id=task_id)
            assert events[-1]["taskUpdates"]["status"] == "SUCCEEDED"
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(w.wait(), 30) for w in workers]
        for drain in drains:
            drain.cancel()
    assert codes == [0, 0], "workers must stop cleanly on SIGTERM"


async def test_graphiql_is_served_with_its_assets_from_this_server(api: Stack) -> None:
    """GraphiQL works without internet: every script and stylesheet comes from the api
    itself, and each matches the integrity hash the page declares."""
    from api.graphiql import sri_mismatches

    async with httpx.AsyncClient(base_url=api.url) as client:
        page = await client.get("/graphql", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert "unpkg.com" not in page.text and "https://" not in page.text.split("<body")[0]
        assert sri_mismatches(page.text) == []
        assets = re.findall(r'(?:src|href)="(/static/graphiql/[^"]+)"', page.text)
        assert len(assets) == 7
        for asset in assets:
            response = await client.get(asset)
            assert response.status_code == 200 and len(response.content) > 500, asset


async def test_dev_refuses_a_busy_port_naming_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await spawn(
            "dev",
            env={**os.environ, "DATA_DIR": str(tmp_path), "PORT": str(port)},
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert f"PORT {port} is already in use" in err.decode()
    assert not (tmp_path / "postgres").exists()  # nothing was started
