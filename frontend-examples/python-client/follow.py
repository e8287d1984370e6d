# ruff: noqa: T201  (a command-line tool: it prints)
"""Submit a task and follow it to the end, with the typed client in taskrunner_client/.

    python follow.py --key "$TASKRUNNER_API_KEY" --sleep 2
    python follow.py --key "$TASKRUNNER_API_KEY" --task '{"echo": {"message": "hi"}}'
    python follow.py --key "$TASKRUNNER_API_KEY" --id TASK_ID [--after CURSOR]

Prints each event (status, progress, log lines, artifacts) as it happens. Exits 0 when
the task SUCCEEDED, 1 when it FAILED or was CANCELLED, 2 on a usage, input or connection
error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from gql.transport.exceptions import TransportError
from taskrunner_client import (
    FINISHED,
    TaskEventArtifactAdded,
    TaskEventBase,
    TaskEventLogAppended,
    TaskEventProgressReported,
    TaskEventStatusChanged,
    TaskEventStepReady,
    TaskEventTickSkipped,
    TaskEventWorkflowStatusChanged,
    TaskOptionsInput,
    TaskrunnerClient,
    TaskrunnerError,
    TaskStatus,
    task_spec,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("TASKRUNNER_URL", "http://127.0.0.1:8000/graphql"),
        help="the GraphQL endpoint (default: $TASKRUNNER_URL or %(default)s)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("TASKRUNNER_API_KEY"),
        help="the API key `make dev` prints (default: $TASKRUNNER_API_KEY; none: send none)",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--sleep", type=float, metavar="SECONDS", help="submit a sleep task")
    what.add_argument("--task", metavar="JSON", help='submit this TaskSpecInput: {"echo": {...}}')
    what.add_argument("--id", help="follow this existing task instead of submitting one")
    parser.add_argument("--after", metavar="CURSOR", help="with --id: resume after this event")
    parser.add_argument(
        "--options", metavar="JSON", help='TaskOptionsInput: {"labels": ["demo"], "maxRetries": 0}'
    )
    args = parser.parse_args(argv)
    if args.after is not None and args.id is None:
        parser.error("--after goes with --id")
    for name in ("task", "options"):
        if getattr(args, name) is not None:
            try:
                value = json.loads(getattr(args, name))
            except json.JSONDecodeError as error:
                parser.error(f"--{name} is not JSON: {error}")
            if not isinstance(value, dict):
                parser.error(f"--{name} must be a JSON object")
            setattr(args, name, value)
    if args.sleep is not None:
        args.task = {"sleep": {"seconds": args.sleep}}
    return args


def describe(event: TaskEventBase) -> str:
    """One line for an event."""
    at = event.at.astimezone().strftime("%H:%M:%S.%f")[:-3]
    if isinstance(event, TaskEventStatusChanged):
        text = f"status {event.status}"
        if event.error is not None:
            text += f" error={event.error.code}: {event.error.message}"
        if event.status is TaskStatus.SUCCEEDED:
            text += f" result={json.dumps(event.result)}"
    elif isinstance(event, TaskEventProgressReported):
        text = f"progress {event.progress:.0%}" + (f" {event.message}" if event.message else "")
    elif isinstance(event, TaskEventLogAppended):
        text = f"log {event.level} " + event.line.rstrip("\n").replace("\n", "\n    ")
    elif isinstance(event, TaskEventArtifactAdded):
        artifact = event.artifact
        text = f"artifact {artifact.name} ({artifact.size} bytes) {artifact.url}"
    elif isinstance(event, TaskEventTickSkipped):
        text = f"tick skipped: schedule {event.schedule_id} at {event.scheduled_for.isoformat()}"
    elif isinstance(event, TaskEventStepReady):
        text = f"step {event.step_key} ready (workflow {event.workflow_id})"
    elif isinstance(event, TaskEventWorkflowStatusChanged):
        text = f"workflow {event.workflow_id} {event.workflow_status}"
    else:
        text = f"{type(event).__name__} (an event this client does not know)"
    return f"{at} {text}"


async def run(args: argparse.Namespace) -> int:
    client = TaskrunnerClient(args.url, args.key)
    if args.id is None:
        options = None if args.options is None else TaskOptionsInput.model_validate(args.options)
        task = await client.submit_task(task_spec(args.task), options)
        print(f"submitted {task.id} ({task.type}, {task.status})", flush=True)
        task_id, after = task.id, None
    else:
        task_id, after = args.id, args.after
    final: TaskStatus | None = None
    async for event in client.follow(task_id, after):
        print(describe(event), flush=True)
        if isinstance(event, TaskEventStatusChanged) and event.status in FINISHED:
            final = event.status
    if final is None:
        print(f"the stream of {task_id} ended before the task did", file=sys.stderr)
        return 2
    return 0 if final is TaskStatus.SUCCEEDED else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        print("stopped following (the task goes on)", file=sys.stderr)
        return 130
    except (ValueError, TaskrunnerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (TransportError, ConnectionError, OSError) as error:
        print(f"error: cannot talk to {args.url}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
