// #/queues: the named queues (`queues`): depth, running, workers, oldest wait; Pause and
// Resume (pauseQueue / resumeQueue, admin keys).
import { fill, h } from "../dom";
import type { QueueFieldsFragment } from "../gql/graphql";
import { PauseQueueMutation, QueuesQuery, ResumeQueueMutation } from "../operations";
import {
  Refresher,
  action,
  actionError,
  ago,
  byActor,
  emptyState,
  listReady,
  num,
  refreshFailed,
  tableHead,
} from "../ui";
import type { Ctx } from "./context";

export function mountQueues(root: HTMLElement, ctx: Ctx): () => void {
  let queues: QueueFieldsFragment[] | null = null;
  let loadError: unknown = null;
  let disposed = false;
  const message = h("p", { class: "bulk-message", role: "status", "data-testid": "queues-message" });
  const body = h("div", { "data-testid": "queues" });
  root.append(
    h(
      "section",
      { class: "page" },
      h("div", { class: "page-head" }, h("h1", {}, "Queues"), h("span", { class: "muted" }, "pausing one lets running tasks finish and starts nothing new from it"), message),
      body,
    ),
  );

  const refresher = new Refresher(load, 2000, 5000);

  async function load(): Promise<void> {
    try {
      const answer = (await ctx.request(QueuesQuery, {})).queues;
      if (disposed) return;
      queues = answer;
      loadError = null;
    } catch (error) {
      if (disposed) return;
      loadError = error;
    }
    render();
  }

  function render(): void {
    if (!listReady(body, queues, loadError, "queues", ctx.apiUrl, () => refresher.now(), () =>
      emptyState("No queues.", "A queue appears once a task type, a task or a worker names it."),
    )) return;
    const problem = refreshFailed(loadError);
    const deepest = Math.max(1, ...queues.map((q) => q.queued + q.running));
    fill(
      body,
      problem,
      h(
        "div",
        { class: "panel" },
        h(
          "table",
          { class: "grid", "data-testid": "queue-table" },
          h("caption", { class: "visually-hidden" }, "Queues"),
          tableHead("Queue", "State", "Depth", num("Waiting"), num("Running"), num("Workers"), "Oldest waiting", action("Action")),
          h("tbody", {}, ...queues.map((q) => row(q, deepest))),
        ),
      ),
    );
  }

  function row(queue: QueueFieldsFragment, deepest: number): HTMLElement {
    const button = h(
      "button",
      { type: "button", "data-testid": queue.paused ? "resume-queue" : "pause-queue", "aria-label": `${queue.paused ? "Resume" : "Pause"} queue ${queue.name}` },
      queue.paused ? "Resume" : "Pause",
    );
    button.addEventListener("click", () => {
      button.disabled = true;
      const action = queue.paused
        ? ctx.request(ResumeQueueMutation, { name: queue.name }).then((d) => d.resumeQueue)
        : ctx.request(PauseQueueMutation, { name: queue.name }).then((d) => d.pauseQueue);
      action
        .then((changed) => {
          message.textContent = `${changed.name} ${changed.paused ? "paused" : "resumed"}.`;
          Object.assign(queue, changed);
          render();
        })
        .catch((e: unknown) => {
          message.textContent = actionError(e);
          button.disabled = false;
        });
    });
    const noWorkers = queue.workers === 0 && queue.queued > 0;
    return h(
      "tr",
      { "data-testid": "queue-row", "data-queue": queue.name, "data-paused": String(queue.paused), "data-queued": queue.queued },
      h("th", { scope: "row" }, h("code", {}, queue.name)),
      h(
        "td",
        {},
        queue.paused
          ? h("span", { class: "pill pill-paused", "data-testid": "queue-state" }, "paused")
          : h("span", { class: "pill pill-fresh", "data-testid": "queue-state" }, "active"),
        byActor(queue.changedBy, queue.changedAt),
        noWorkers ? h("span", { class: "pill pill-stale", title: "Tasks wait here but no live worker serves this queue" }, "no worker") : null,
      ),
      h(
        "td",
        { class: "depth" },
        h(
          "span",
          { class: "bar-track", "aria-hidden": "true" },
          h("span", { class: "bar bar-running", style: `width:${(queue.running / deepest) * 100}%` }),
          h("span", { class: "bar bar-queued", style: `width:${(queue.queued / deepest) * 100}%` }),
        ),
      ),
      h("td", { class: "num" }, String(queue.queued)),
      h("td", { class: "num" }, String(queue.running)),
      h("td", { class: "num" }, String(queue.workers)),
      h("td", {}, queue.oldestQueuedAt ? ago(queue.oldestQueuedAt) : "—"),
      h("td", {}, button),
    );
  }

  const stopListening = ctx.live.listen((event) => {
    if (event.__typename === "StatusChanged") refresher.request();
  });
  render();
  refresher.now();
  return () => {
    disposed = true;
    stopListening();
    refresher.dispose();
  };
}
