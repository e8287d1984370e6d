"""Workers choose their queues from the command line: `taskrunner worker --queues`, and the
arq CLI through WORKER_QUEUES (one queue per process there); a bad choice stops start-up
with a message naming the setting."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.support.environment import process_env, repo_root
from tests.support.processes import spawn, stop
from tests.support.stack import Stack, make_key
from tests.support.tasks import WATCH

SUBMIT_ON = (
    "mutation($q: String) "
    '{ submitTask(task: {echo: {message: "q"}}, options: {queue: $q}) { id queue } }'
)

GET = "query($id: ID!) { task(id: $id) { status attempts } }"


async def _runs_on(api: Stack, queue: str) -> None:
    task = (await api.execute(SUBMIT_ON, q=queue))["submitTask"]
    assert task["queue"] == queue
    async with asyncio.timeout(30):
        events = await api.subscribe(WATCH, id=task["id"])
    assert events[-1]["taskUpdates"]["status"] == "SUCCEEDED"


async def test_taskrunner_worker_serves_the_queues_given(api: Stack) -> None:
    proc = await spawn("worker", "--queues", "alpha,beta", env=process_env(api.settings))
    try:
        await _runs_on(api, "beta")
        await _runs_on(api, "alpha")
    finally:
        assert await stop(proc) == 0


async def test_the_arq_cli_serves_the_one_queue_of_worker_queues(api: Stack) -> None:
    """It runs gamma's tasks, and, although arq's Worker claims without reading the paused
    flag, starts none while gamma is paused."""
    env = {**process_env(api.settings), "WORKER_QUEUES": "gamma"}
    arq = Path(sys.executable).parent / "arq"
    proc = await asyncio.create_subprocess_exec(
        str(arq), "workers.settings.WorkerSettings", cwd=repo_root(), env=env
    )
    try:
        await _runs_on(api, "gamma")
        admin = api.as_key(await make_key(api.settings, "ops", admin=True))
        await admin.execute('mutation { pauseQueue(name: "gamma") { paused } }')
        task = (await api.execute(SUBMIT_ON, q="gamma"))["submitTask"]
        for _ in range(25):  # 2.5 s
            await asyncio.sleep(0.1)
            found = await api.execute(GET, id=task["id"])
            assert found["task"]["status"] == "QUEUED"
            assert found["task"]["attempts"] == 0
        await admin.execute('mutation { resumeQueue(name: "gamma") { paused } }')
        async with asyncio.timeout(30):
            events = await api.subscribe(WATCH, id=task["id"])
        assert events[-1]["taskUpdates"]["status"] == "SUCCEEDED"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_bad_queue_choices_stop_start_up_naming_the_setting(api: Stack) -> None:
    bad = await spawn(
        "worker",
        "--queues",
        "Not A Queue",
        env=process_env(api.settings),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(bad.communicate(), 60)
    assert bad.returncode == 2
    assert "WORKER_QUEUES" in err.decode() and "'Not A Queue' is not a queue name" in err.decode()

    env = {**os.environ, **process_env(api.settings), "WORKER_QUEUES": "a,b"}
    arq = Path(sys.executable).parent / "arq"
    several = await asyncio.create_subprocess_exec(
        str(arq),
        "workers.settings.WorkerSettings",
        cwd=repo_root(),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(several.communicate(), 60)
    assert several.returncode != 0
    assert "WORKER_QUEUES: the arq CLI serves one queue per process" in err.decode()
