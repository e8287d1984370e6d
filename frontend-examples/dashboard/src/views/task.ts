// #/task/ID: one task. Its events from the first (`taskUpdates`, followed live and
// resumed from the last cursor after a reconnect, and again after a retry) give the
// timeline, the status, the progress and the log; `task(id)` gives the rest (input,
// result, artifacts, metrics per attempt), asked again when its status changes.
import { fill, h } from "../dom";
import type { EventFieldsFragment, TaskQuery, TaskStatus } from "../gql/graphql";
import { TERMINAL, addArtifacts } from "../live";
import { CancelTaskMutation, RetryTaskMutation, TaskQuery as TaskDocument, TaskUpdatesSubscription } from "../operations";
import {
  Refresher,
  actionError,
  badge,
  byActor,
  emptyState,
  formatBytes,
  formatSeconds,
  formatTime,
  json,
  num,
  pendingState,
  progressBar,
  refreshFailed,
  shortId,
  tableHead,
  time,
} from "../ui";
import type { Ctx } from "./context";

type Detail = NonNullable<TaskQuery["task"]>;
type Event = EventFieldsFragment;
type LogEvent = Extract<Event, { __typename: "LogAppended" }>;

const MAX_LOG_LINES = 2000;

export function mountTask(root: HTMLElement, ctx: Ctx): () => void {
  const id = ctx.arg ?? "";
  let detail: Detail | null = null;
  let loadError: unknown = null;
  let notFound = false;
  let status: TaskStatus | null = null;
  let statusAt = 0; // when what `status` shows happened (ms)
  let progress: number | null = null;
  let progressMessage: string | null = null;
  let result: unknown = undefined;
  let error: { code: string; message: string } | null = null;
  const events: Event[] = []; // every event but log lines, in order
  let eventCount = 0;
  let cursor: string | null = null;
  let stopFollowing: (() => void) | null = null;
  let following = false;
  let followAgain = false;
  let busy = false;
  let disposed = false;
  let actionProblem: string | null = null;
  let timer: ReturnType<typeof setTimeout> | null = null;

  const view = h("section", { class: "page task-view", "data-testid": "task-view", "data-task-id": id });
  const head = h("div", { class: "task-head" });
  const facts = h("div", { class: "panel facts-panel" });
  const attemptsPanel = h("div", { class: "panel" });
  const timeline = h("ol", { class: "timeline", "data-testid": "timeline" });
  const logs = h("div", {
    class: "logs",
    "data-testid": "logs",
    role: "log",
    "aria-label": "Log",
    tabindex: 0,
  });
  const logsHead = h("h2", {}, "Log");
  const data = h("div", { class: "panel data-panel" });
  view.append(
    head,
    h(
      "div",
      { class: "task-grid" },
      h("div", { class: "task-main" }, facts, attemptsPanel, h("div", { class: "panel" }, logsHead, logs), data),
      h("div", { class: "panel timeline-panel" }, h("h2", {}, "Timeline"), timeline),
    ),
  );
  root.append(view);

  const refresher = new Refresher(loadDetail, 500, null);

  async function loadDetail(): Promise<void> {
    try {
      const answer = await ctx.request(TaskDocument, { id });
      if (disposed) return;
      loadError = null;
      if (!answer.task) {
        notFound = true;
      } else {
        detail = answer.task;
        ctx.live.adopt(answer.task);
        // The newer of the two wins: this answer, or the events received so far.
        const changed = [detail.createdAt, detail.startedAt, detail.finishedAt]
          .map((t) => (t ? Date.parse(t) : 0))
          .reduce((a, b) => Math.max(a, b), 0);
        if (status === null || changed >= statusAt) {
          status = detail.status;
          statusAt = changed;
          progress = detail.progress ?? null;
          progressMessage = detail.progressMessage ?? null;
          result = detail.result;
          error = detail.error ?? null;
        }
      }
    } catch (e) {
      if (disposed) return;
      loadError = e;
    }
    render();
  }

  function follow(): void {
    if (following || disposed) return;
    following = true;
    followAgain = false;
    stopFollowing = ctx.api.subscribe(TaskUpdatesSubscription, { id, after: cursor }, (d) => d.taskUpdates.cursor, {
      next: (d) => {
        cursor = d.taskUpdates.cursor;
        receive(d.taskUpdates);
      },
      error: (e) => {
        following = false;
        if (e.code === "NOT_FOUND") notFound = true;
        else actionProblem = e.message;
        render();
      },
      complete: () => {
        // It completes after a terminal status. If a retry started the task again
        // meanwhile, follow on from the last event.
        following = false;
        if (followAgain) follow();
      },
    });
  }

  function receive(event: Event): void {
    eventCount += 1;
    switch (event.__typename) {
      case "LogAppended":
        appendLog(event);
        view.dataset.events = String(eventCount);
        if (!event.actor) return; // the task's own line; a request (cancel) also goes on the timeline
        break;
      case "StatusChanged":
        // a replayed event older than what the page shows adds to the timeline only
        if (Date.parse(event.at) + 1 >= statusAt) {
          status = event.status;
          statusAt = Date.parse(event.at);
          result = event.result;
          error = event.error ?? null;
          if (event.status === "QUEUED") {
            progress = null;
            progressMessage = null;
          }
        }
        refresher.request(); // attempts, times, metrics: not in the event
        break;
      case "ProgressReported":
        if (Date.parse(event.at) + 1 >= statusAt) {
          progress = event.progress;
          progressMessage = event.message ?? null;
        }
        break;
      case "ArtifactAdded":
        if (detail) addArtifacts(detail, [event.artifact]);
        break;
      default:
        break;
    }
    events.push(event);
    render();
  }

  function appendLog(event: LogEvent): void {
    const stick = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    logs.append(
      h(
        "div",
        { class: `log-line log-${event.level.toLowerCase()}`, "data-testid": "log-line" },
        h("time", { datetime: event.at }, formatTime(event.at)),
        " ",
        event.line,
        byActor(event.actor) ?? "",
      ),
    );
    while (logs.childElementCount > MAX_LOG_LINES) logs.firstElementChild?.remove();
    if (stick) logs.scrollTop = logs.scrollHeight;
  }

  async function act(action: "cancel" | "retry"): Promise<void> {
    busy = true;
    actionProblem = null;
    render();
    try {
      const changed =
        action === "cancel"
          ? (await ctx.request(CancelTaskMutation, { id })).cancelTask
          : (await ctx.request(RetryTaskMutation, { id })).retryTask;
      if (detail) detail.attempts = Math.max(detail.attempts, changed.attempts);
      if (action === "retry") {
        ctx.failuresChanged();
        if (following) followAgain = true;
        else follow();
      }
    } catch (e) {
      actionProblem = actionError(e);
    } finally {
      busy = false;
      render();
    }
  }

  function render(): void {
    if (disposed) return;
    if (notFound) {
      fill(head, emptyState(`No task ${id}.`, "It may belong to another key's owner, or the id is mistyped. See the Tasks view."));
      facts.hidden = attemptsPanel.hidden = data.hidden = true;
      return;
    }
    if (detail === null || status === null) {
      fill(head, pendingState(loadError, "the task", ctx.apiUrl, () => refresher.now()));
      return;
    }
    view.dataset.status = status;
    view.dataset.progress = progress == null ? "" : String(progress);
    view.dataset.events = String(eventCount);
    renderHead(detail, status);
    renderFacts(detail);
    renderAttempts(detail);
    renderData(detail);
    renderTimeline();
  }

  function renderHead(task: Detail, current: TaskStatus): void {
    const cancel = h("button", { type: "button", "data-testid": "cancel", disabled: busy || TERMINAL.has(current) }, "Cancel");
    const retry = h(
      "button",
      { type: "button", "data-testid": "retry", disabled: busy || !(current === "FAILED" || current === "CANCELLED") },
      "Retry",
    );
    cancel.addEventListener("click", () => void act("cancel"));
    retry.addEventListener("click", () => void act("retry"));
    const focusedId = document.activeElement instanceof HTMLElement && head.contains(document.activeElement)
      ? document.activeElement.dataset.testid
      : undefined;
    fill(
      head,
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, badge(current), " ", task.type, " ", h("code", { "data-testid": "task-id", class: "muted" }, task.id)),
        h("div", { class: "actions" }, cancel, retry),
      ),
      current === "RUNNING"
        ? h(
            "div",
            { class: "task-progress" },
            progressBar(progress, "Progress"),
            progressMessage ? h("span", { class: "progress-message" }, progressMessage) : null,
          )
        : null,
      current === "QUEUED" ? h("p", { class: "muted", "data-testid": "waiting" }, waitingText(task)) : null,
      error ? h("p", { class: "error", "data-testid": "error" }, h("strong", {}, error.code), `: ${error.message}`) : null,
      refreshFailed(loadError),
      actionProblem ? h("p", { class: "error", "data-testid": "action-error", role: "alert" }, actionProblem) : null,
    );
    if (focusedId) head.querySelector<HTMLElement>(`[data-testid="${focusedId}"]`)?.focus();
  }

  function renderFacts(task: Detail): void {
    const row = (term: string, value: Node | string | null | undefined, testId?: string) =>
      value == null || value === "" ? [] : [h("dt", {}, term), h("dd", testId ? { "data-testid": testId } : {}, value)];
    fill(
      facts,
      h(
        "dl",
        { class: "facts" },
        ...row("attempts", `${task.attempts}`, "attempts"),
        ...row("max retries", String(task.maxRetries)),
        ...row("queue", task.queue),
        ...row("priority", String(task.priority)),
        ...row("worker", task.workerId ? h("a", { href: "#/workers" }, task.workerId) : null),
        ...row("created", time(task.createdAt)),
        ...row("started", time(task.startedAt)),
        ...row("finished", time(task.finishedAt)),
        ...row("queue wait", task.metrics.queueWaitSeconds == null ? null : formatSeconds(task.metrics.queueWaitSeconds)),
        ...row("run time", task.metrics.runSeconds == null ? null : formatSeconds(task.metrics.runSeconds)),
        ...row("timeout", `${task.timeoutSeconds} s`),
        ...row("labels", task.labels.length ? task.labels.join(", ") : null),
        ...row(
          "workflow",
          task.workflowId ? h("a", { href: `#/workflow/${task.workflowId}` }, `${shortId(task.workflowId)} · step ${task.stepKey ?? "?"}`) : null,
        ),
        ...row("schedule", task.scheduleId ? h("a", { href: "#/schedules" }, shortId(task.scheduleId)) : null),
        ...row("parent", task.parentId ? h("a", { href: `#/task/${task.parentId}` }, h("code", {}, shortId(task.parentId))) : null),
        ...row("idempotency key", task.idempotencyKey),
        ...row("deadline", task.deadline ? time(task.deadline) : null),
      ),
    );
  }

  /** One bar per attempt: its wait (grey) then its run (coloured by how it ended). */
  function renderAttempts(task: Detail): void {
    const attempts = task.metrics.attempts.map((a) => ({
      label: `#${a.attempt}`,
      wait: a.queueWaitSeconds,
      run: a.runSeconds,
      status: a.status,
      worker: a.workerId,
      memory: a.peakMemoryMb,
      finishedAt: a.finishedAt,
    }));
    if (status === "RUNNING" && task.startedAt) {
      const run = Math.max(0, (Date.now() - Date.parse(task.startedAt)) / 1000);
      attempts.push({
        label: `#${task.attempts}`,
        wait: 0,
        run,
        status: "RUNNING",
        worker: task.workerId ?? "",
        memory: null,
        finishedAt: "",
      });
    }
    const longest = Math.max(0.001, ...attempts.map((a) => a.wait + a.run));
    const pct = (seconds: number) => `${Math.max(0.5, (seconds / longest) * 100)}%`;
    fill(
      attemptsPanel,
      h("h2", {}, "Attempts"),
      attempts.length === 0
        ? h("p", { class: "muted" }, status === "QUEUED" ? "Not started yet." : "No finished attempt yet.")
        : h(
            "div",
            { class: "attempt-bars", "data-testid": "attempt-bars" },
            ...attempts.map((a) =>
              h(
                "div",
                { class: "attempt-bar" },
                h("span", { class: "attempt-label" }, a.label),
                h(
                  "span",
                  {
                    class: "attempt-track",
                    role: "img",
                    "aria-label": `attempt ${a.label}: waited ${formatSeconds(a.wait)}, ran ${formatSeconds(a.run)}, ${a.status.toLowerCase()}`,
                  },
                  h("span", { class: "seg seg-wait", style: `width:${pct(a.wait)}` }),
                  h("span", { class: `seg seg-${a.status.toLowerCase()}`, style: `width:${pct(a.run)}` }),
                ),
                h("span", { class: "attempt-text" }, `${formatSeconds(a.wait)} + ${formatSeconds(a.run)}`),
              ),
            ),
          ),
      task.metrics.attempts.length
        ? h(
            "table",
            { class: "grid compact", "data-testid": "metrics" },
            h("caption", { class: "visually-hidden" }, "Metrics per attempt"),
            tableHead(num("Attempt"), "Ended", "Worker", num("Queue wait"), num("Run time"), num("Peak memory"), "Finished"),
            h(
              "tbody",
              {},
              ...task.metrics.attempts.map((a) =>
                h(
                  "tr",
                  { "data-testid": "metrics-row" },
                  h("td", { class: "num" }, String(a.attempt)),
                  h("td", {}, badge(a.status, "attempt-status")),
                  h("td", {}, h("code", {}, a.workerId)),
                  h("td", { class: "num" }, formatSeconds(a.queueWaitSeconds)),
                  h("td", { class: "num" }, formatSeconds(a.runSeconds)),
                  h("td", { class: "num" }, a.peakMemoryMb == null ? "—" : `${a.peakMemoryMb.toFixed(1)} MB`),
                  h("td", {}, time(a.finishedAt)),
                ),
              ),
            ),
          )
        : null,
    );
  }

  function renderData(task: Detail): void {
    const artifacts = task.artifacts;
    fill(
      data,
      h("h2", {}, "Input"),
      h("pre", { "data-testid": "input", tabindex: 0 }, json(task.input)),
      result != null ? h("h2", {}, "Result") : null,
      result != null ? h("pre", { "data-testid": "result", tabindex: 0 }, json(result)) : null,
      h("h2", {}, "Artifacts"),
      artifacts.length
        ? h(
            "ul",
            { class: "artifacts", "data-testid": "artifacts" },
            ...artifacts.map((a) =>
              h(
                "li",
                {},
                h("a", { href: a.url, target: "_blank", rel: "noopener", "data-testid": "artifact-link" }, a.name),
                h("span", { class: "muted" }, ` ${formatBytes(a.size)}, ${a.contentType}`),
              ),
            ),
          )
        : h("p", { class: "muted" }, "None stored."),
    );
    fill(
      logsHead,
      "Log ",
      task.logsUrl
        ? h("a", { href: task.logsUrl, target: "_blank", rel: "noopener", class: "small", "data-testid": "logs-link" }, "(whole log as text)")
        : null,
    );
  }

  function renderTimeline(): void {
    const items: HTMLElement[] = [];
    let attempt = 0;
    for (let i = 0; i < events.length; i++) {
      const event = events[i]!;
      if (event.__typename === "StatusChanged" && event.status === "RUNNING") {
        attempt += 1;
        items.push(h("li", { class: "timeline-attempt", "data-testid": "timeline-attempt" }, `Attempt ${attempt}`));
      }
      if (event.__typename === "ProgressReported") {
        // a run of progress reports is one line: first → last
        let j = i;
        while (events[j + 1]?.__typename === "ProgressReported") j++;
        const last = events[j] as Extract<Event, { __typename: "ProgressReported" }>;
        const count = j - i + 1;
        const text = count === 1
          ? `progress ${Math.round(event.progress * 100)}%${event.message ? ` · ${event.message}` : ""}`
          : `progress ${Math.round(event.progress * 100)}% → ${Math.round(last.progress * 100)}% (${count} reports)`;
        items.push(item("progress", event.at, text));
        i = j;
        continue;
      }
      items.push(describe(event));
    }
    timeline.replaceChildren(...items);
  }

  function item(kind: string, at: string, ...content: (Node | string)[]): HTMLElement {
    return h(
      "li",
      { class: `timeline-item timeline-${kind}`, "data-testid": "timeline-item", "data-kind": kind },
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("time", { datetime: at, title: new Date(at).toLocaleString() }, formatTime(at)),
      h("span", { class: "timeline-text" }, ...content),
    );
  }

  function describe(event: Event): HTMLElement {
    switch (event.__typename) {
      case "StatusChanged":
        return item(
          event.status.toLowerCase(),
          event.at,
          badge(event.status, "event-status"),
          event.error ? h("span", { class: "error-code" }, ` ${event.error.code}: ${event.error.message}`) : "",
          byActor(event.actor) ?? "",
        );
      case "LogAppended": // only a request someone made (cancel requested) is on the timeline
        return item("request", event.at, event.line, byActor(event.actor) ?? "");
      case "ArtifactAdded":
        return item("artifact", event.at, `stored ${event.artifact.name} (${formatBytes(event.artifact.size)})`);
      case "StepReady":
        return item("ready", event.at, `ready: every step before “${event.stepKey}” succeeded`);
      case "WorkflowStatusChanged":
        return item("workflow", event.at, `workflow ${event.workflowStatus.toLowerCase()}`);
      case "TickSkipped":
        return item("skipped", event.at, `schedule skipped its tick of ${formatTime(event.scheduledFor)}`);
      default:
        return item("other", event.at, event.__typename ?? "event");
    }
  }

  function waitingText(task: Detail): string {
    if (task.waitingForParents) return "Waiting for the workflow steps it depends on.";
    if (task.waitingForSlot) return "Waiting for a slot of its concurrency key.";
    if (task.nextAttemptAt && Date.parse(task.nextAttemptAt) > Date.now()) return `Next attempt at ${formatTime(task.nextAttemptAt)}.`;
    if (task.queuePosition != null) return `Waiting in queue ${task.queue}, position ${task.queuePosition}.`;
    return `Waiting in queue ${task.queue}.`;
  }

  // A retry (from here, the table, or elsewhere) moves a finished task back to QUEUED:
  // the log's subscription ended at the terminal status, so follow on from its cursor.
  const stopListening = ctx.live.listen((event) => {
    if (event.taskId !== id || event.__typename !== "StatusChanged" || event.status !== "QUEUED") return;
    if (following) followAgain = true;
    else follow();
  });
  // the running attempt's bar grows
  const tick = () => {
    if (status === "RUNNING" && detail) renderAttempts(detail);
    timer = setTimeout(tick, 1000);
  };
  timer = setTimeout(tick, 1000);

  render();
  refresher.now();
  follow();
  return () => {
    disposed = true;
    stopListening();
    stopFollowing?.();
    refresher.dispose();
    if (timer) clearTimeout(timer);
  };
}
