"""Logs read cleanly as a user starts the processes: the api's console lines carry no
`color_message=` (uvicorn's coloured copy of each message), and a worker under the arq CLI
prints each line once, in our format (arq's own logging config would print every arq line
a second time, plain)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from tests.support.environment import process_env, repo_root
from tests.support.processes import api_process
from tests.support.stack import Stack
from tests.support.tasks import WATCH, submit


async def test_the_api_console_lines_carry_no_color_message(api: Stack, tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    async with api_process(api.settings, log, LOG_FORMAT="console", LOG_LEVEL="INFO"):
        pass
    text = log.read_text()
    assert "Uvicorn running on" in text and "Finished server process" in text, text
    assert "color_message" not in text, text


async def test_a_worker_under_the_arq_cli_prints_each_line_once(api: Stack) -> None:
    env = {**process_env(api.settings), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    arq = Path(sys.executable).parent / "arq"
    proc = await asyncio.create_subprocess_exec(
        str(arq),
        "workers.settings.WorkerSettings",
        cwd=repo_root(),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        task_id = await submit(api, {"echo": {"message": "once"}})
        async with asyncio.timeout(30):
            events = await api.subscribe(WATCH, id=task_id)
        assert events[-1]["taskUpdates"]["status"] == "SUCCEEDED"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    lines = [line for line in err.decode().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is ours: JSON
    events_ = [r["event"] for r in records]
    assert sum(e.startswith("Starting worker for") for e in events_) == 1, events_
    assert events_.count("task_started") == 1 and events_.count("task_succeeded") == 1
    assert not any({"asctime", "message", "color_message"} & set(r) for r in records), records
