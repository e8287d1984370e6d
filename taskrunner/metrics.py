"""Prometheus metrics (prometheus-client), the same names on api and workers.

The api serves them at `/metrics`; each worker on its own small HTTP port
(`WORKER_METRICS_PORT`). Counters and histograms are per process: Prometheus sums them
over the replicas it scrapes.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Task run times span milliseconds (echo) to an hour (TASK_MAX_RUNTIME_SECONDS).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900,
                    3600)  # fmt: skip
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

TASKS_SUBMITTED = Counter(
    "taskrunner_tasks_submitted_total", "Tasks accepted by submitTask(s).", ["task_type"]
)
TASKS_COMPLETED = Counter(
    "taskrunner_tasks_completed_total",
    "Task attempts that ended, by final status (a retried failure counts as QUEUED).",
    ["task_type", "status"],
)
TASK_DURATION = Histogram(
    "taskrunner_task_duration_seconds",
    "Run time of a task attempt, RUNNING to its end.",
    ["task_type"],
    buckets=DURATION_BUCKETS,
)
TASK_QUEUE_WAIT = Histogram(
    "taskrunner_task_queue_wait_seconds",
    "From when a task was due (created, or its runAt / retry time) to when it started.",
    ["task_type"],
    buckets=DURATION_BUCKETS,
)
TASKS_RUNNING = Gauge("taskrunner_tasks_running", "Tasks running in this worker now.")
LOOP_BLOCKS = Counter(
    "taskrunner_event_loop_blocked_total",
    "Times a worker's event loop was blocked past WORKER_BLOCK_WARN_SECONDS (by a task body "
    "that does not yield: `task`, or by other code: `worker`).",
    ["culprit"],
)
LOOP_BLOCKED_SECONDS = Histogram(
    "taskrunner_event_loop_blocked_seconds",
    "How long each such block of a worker's event loop lasted.",
    buckets=DURATION_BUCKETS,
)
RETENTION_PURGED = Counter(
    "taskrunner_retention_purged_total",
    "Rows deleted by retention (TASK_RETENTION_DAYS), by kind: tasks (workflow steps "
    "included), workflows, events, artifacts.",
    ["kind"],
)
QUEUE_DEPTH = Gauge("taskrunner_queue_depth", "Jobs waiting in the arq queue (Redis).")
SUBSCRIPTIONS = Gauge(
    "taskrunner_active_subscriptions", "Open GraphQL subscriptions on this api process."
)
GRAPHQL_DURATION = Histogram(
    "taskrunner_graphql_request_duration_seconds",
    "GraphQL operations, by operation name (`anonymous` without one).",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)

MAX_OPERATION_NAMES = 200  # a client choosing names must not grow the label set forever
_operations: set[str] = set()


def operation_label(name: str | None) -> str:
    label = (name or "anonymous")[:64]
    if label in _operations:
        return label
    if len(_operations) >= MAX_OPERATION_NAMES:
        return "other"
    _operations.add(label)
    return label


def serve_worker_metrics(host: str, port: int) -> int | None:
    """Start the worker's /metrics server (a thread); 0 disables it. A busy port is logged,
    not fatal: several workers on one host need distinct ports."""
    if port == 0:
        return None
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as exc:
        log.warning(
            "WORKER_METRICS_PORT %d on %s is not available (%s): no metrics", port, host, exc
        )
        return None
    return int(server.server_port)
