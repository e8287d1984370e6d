// #/workers: live workers (`workers`): heartbeat age, memory, the queues each serves, and
// the tasks each runs (one `tasks(filter: {ids})` for all of them), kept live.
import { fill, h } from "../dom";
import type { TaskRowFragment, WorkerFieldsFragment } from "../gql/graphql";
import { TasksQuery, WorkersQuery } from "../operations";
import {
  Refresher,
  ago,
  badge,
  emptyState,
  formatBytes,
  formatSeconds,
  listReady,
  progressBar,
  refreshFailed,
  shortId,
  taskLink,
} from "../ui";
import type { Ctx } from "./context";

const STALE_SECONDS = 15; // a heartbeat older than this is worth a look

export function mountWorkers(root: HTMLElement, ctx: Ctx): () => void {
  let workers: WorkerFieldsFragment[] | null = null;
  const running = new Map<string, TaskRowFragment>();
  let loadError: unknown = null;
  let disposed = false;
  const body = h("div", { class: "workers", "data-testid": "workers" });
  root.append(
    h(
      "section",
      { class: "page" },
      h("div", { class: "page-head" }, h("h1", {}, "Workers"), h("span", { class: "muted" }, "from their heartbeats, live")),
      body,
    ),
  );

  const refresher = new Refresher(load, 2000, 3000);

  async function load(): Promise<void> {
    try {
      const answer = (await ctx.request(WorkersQuery, {})).workers;
      const ids = answer.flatMap((w) => w.runningTaskIds);
      running.clear();
      if (ids.length) {
        const tasks = await ctx.request(TasksQuery, { filter: { ids }, first: Math.min(100, ids.length), after: null });
        for (const edge of tasks.tasks.edges) running.set(edge.node.id, edge.node);
      }
      if (disposed) return;
      workers = answer;
      loadError = null;
    } catch (error) {
      if (disposed) return;
      loadError = error;
    }
    render();
  }

  function render(): void {
    if (!listReady(body, workers, loadError, "workers", ctx.apiUrl, () => refresher.now(), () =>
      emptyState("No live workers.", "Start one: `make dev` runs one, or `taskrunner worker` (WORKER_QUEUES names its queues). Queued tasks wait until then."),
    )) return;
    const problem = refreshFailed(loadError);
    const most = Math.max(1, ...workers.map((w) => w.memoryBytes ?? 0));
    fill(body, problem, h("div", { class: "cards" }, ...workers.map((w) => card(w, most))));
  }

  function card(worker: WorkerFieldsFragment, most: number): HTMLElement {
    const age = (Date.now() - Date.parse(worker.lastHeartbeatAt)) / 1000;
    return h(
      "article",
      { class: "panel card worker", "data-testid": "worker", "data-worker-id": worker.id, "aria-labelledby": `w-${cssId(worker.id)}` },
      h(
        "div",
        { class: "card-head" },
        h("h2", { id: `w-${cssId(worker.id)}` }, h("code", {}, worker.id)),
        h(
          "span",
          {
            class: `pill heartbeat ${age > STALE_SECONDS ? "pill-stale" : "pill-fresh"}`,
            "data-at": worker.lastHeartbeatAt,
            "data-testid": "heartbeat",
          },
          `heartbeat ${ago(worker.lastHeartbeatAt)}`,
        ),
      ),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "host"),
        h("dd", {}, `${worker.host} (pid ${worker.pid})`),
        h("dt", {}, "up"),
        h("dd", {}, formatSeconds((Date.now() - Date.parse(worker.startedAt)) / 1000)),
        h("dt", {}, "queues"),
        h("dd", {}, ...worker.queues.map((q) => h("span", { class: "label label-queue" }, q))),
        h("dt", {}, "memory"),
        h(
          "dd",
          { "data-testid": "memory" },
          h("span", { class: "bar-track small", "aria-hidden": "true" }, h("span", { class: "bar bar-memory", style: `width:${((worker.memoryBytes ?? 0) / most) * 100}%` })),
          ` ${formatBytes(worker.memoryBytes)}`,
        ),
      ),
      h("h3", {}, `Running (${worker.runningTaskIds.length})`),
      worker.runningTaskIds.length === 0
        ? h("p", { class: "muted" }, "Idle.")
        : h(
            "ul",
            { class: "running", "data-testid": "running-tasks" },
            ...worker.runningTaskIds.map((id) => {
              const task = running.get(id);
              return h(
                "li",
                { "data-testid": "running-task", "data-task-id": id },
                taskLink(id),
                task ? h("span", {}, ` ${task.type} `) : null,
                task ? badge(task.status, "running-status") : null,
                task ? progressBar(task.progress, `Progress of ${shortId(id)}`) : null,
              );
            }),
          ),
    );
  }

  const stopListening = ctx.live.listen((event) => {
    if (event.__typename === "StatusChanged") refresher.request();
  });
  const ticker = setInterval(() => {
    for (const beat of root.querySelectorAll<HTMLElement>(".heartbeat")) {
      const age = (Date.now() - Date.parse(beat.dataset.at ?? "")) / 1000;
      beat.textContent = `heartbeat ${ago(beat.dataset.at)}`;
      beat.classList.toggle("pill-stale", age > STALE_SECONDS);
      beat.classList.toggle("pill-fresh", age <= STALE_SECONDS);
    }
  }, 1000);
  render();
  refresher.now();
  return () => {
    disposed = true;
    stopListening();
    refresher.dispose();
    clearInterval(ticker);
  };
}

function cssId(text: string): string {
  return text.replace(/[^A-Za-z0-9_-]/g, "_");
}
