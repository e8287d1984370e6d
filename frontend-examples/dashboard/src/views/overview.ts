// #/overview: counts by status, throughput and failure rate per bucket, queue wait and run
// time p50/p95 (`stats`), queue depths (`queues`) and workers (`workers`), in one query.
// Asked again on status changes (at most every 2 s) and every 15 s (the window moves).
import { timeChart, type Chart } from "../charts";
import { fill, h } from "../dom";
import type { OverviewQuery } from "../gql/graphql";
import { OverviewQuery as OverviewDocument } from "../operations";
import {
  Refresher,
  STATUSES,
  ago,
  emptyState,
  formatBytes,
  formatSeconds,
  pendingState,
  refreshFailed,
} from "../ui";
import type { Ctx } from "./context";

const WINDOWS = [
  { value: "1h", label: "last hour", seconds: 3600, bucket: 60 },
  { value: "6h", label: "last 6 hours", seconds: 6 * 3600, bucket: 300 },
  { value: "24h", label: "last 24 hours", seconds: 24 * 3600, bucket: 900 },
];

const COLORS = {
  QUEUED: "#6e7781",
  RUNNING: "#0969da",
  SUCCEEDED: "#1a7f37",
  FAILED: "#cf222e",
  CANCELLED: "#9a6700",
  p50: "#0969da",
  p95: "#8250df",
};

export function mountOverview(root: HTMLElement, ctx: Ctx): () => void {
  let window = WINDOWS.find((w) => w.value === ctx.params.get("window")) ?? WINDOWS[0]!;
  let data: OverviewQuery | null = null;
  let loadError: unknown = null;
  let disposed = false;

  const windowSelect = h(
    "select",
    { id: "overview-window", "data-testid": "overview-window" },
    ...WINDOWS.map((w) => h("option", { value: w.value, selected: w === window }, w.label)),
  );
  const updated = h("span", { class: "muted", "data-testid": "overview-updated", "aria-live": "off" });
  const status = h("div", { class: "overview-state" });
  const counts = h("div", { class: "tiles", "data-testid": "counts" });
  const timings = h("div", { class: "tiles tiles-small", "data-testid": "timings" });
  const perBucket = (label: string) => `per ${window.bucket === 60 ? "minute" : `${window.bucket / 60} minutes`} · ${label}`;
  const charts: Chart[] = [];
  const throughput = timeChart(
    "Throughput: tasks finished",
    "chart-throughput",
    [
      { label: "succeeded", color: COLORS.SUCCEEDED, kind: "bars" },
      { label: "failed", color: COLORS.FAILED, kind: "bars" },
      { label: "cancelled", color: COLORS.CANCELLED, kind: "bars" },
    ],
    (v) => String(Math.round(v)),
  );
  const failureRate = timeChart(
    "Failure rate: failed of finished",
    "chart-failure-rate",
    [{ label: "failed", color: COLORS.FAILED, kind: "line", format: (v) => (v == null ? "—" : `${v.toFixed(1)}%`) }],
    (v) => `${Math.round(v)}%`,
  );
  const seconds = (v: number | null) => formatSeconds(v);
  const queueWait = timeChart(
    "Queue wait",
    "chart-queue-wait",
    [
      { label: "p50", color: COLORS.p50, kind: "line", format: seconds },
      { label: "p95", color: COLORS.p95, kind: "line", format: seconds },
    ],
    axisSeconds,
  );
  const runTime = timeChart(
    "Run time",
    "chart-run-time",
    [
      { label: "p50", color: COLORS.p50, kind: "line", format: seconds },
      { label: "p95", color: COLORS.p95, kind: "line", format: seconds },
    ],
    axisSeconds,
  );
  charts.push(throughput, failureRate, queueWait, runTime);
  const queues = h("div", { class: "panel" });
  const workers = h("div", { class: "panel" });
  const failures = h("div", { class: "panel" });
  const chartNote = h("p", { class: "muted chart-note" });
  const content = h(
    "div",
    { class: "page", hidden: true }, // until the first answer
    counts,
    timings,
    chartNote,
    h("div", { class: "charts" }, ...charts.map((c) => c.element)),
    h("div", { class: "overview-lists" }, queues, workers, failures),
  );

  root.append(
    h(
      "section",
      { class: "page overview", "data-testid": "overview" },
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, "Overview"),
        h("label", { for: "overview-window", class: "muted" }, "Tasks created in the"),
        windowSelect,
        updated,
      ),
      status,
      content,
    ),
  );

  const refresher = new Refresher(load, 2000, 15_000);

  async function load(): Promise<void> {
    const since = new Date(Date.now() - window.seconds * 1000).toISOString();
    try {
      const answer = await ctx.request(OverviewDocument, { since, bucketSeconds: window.bucket });
      if (disposed) return;
      data = answer;
      loadError = null;
    } catch (error) {
      if (disposed) return;
      loadError = error;
    }
    render();
  }

  function render(): void {
    if (data === null) {
      fill(status, pendingState(loadError, "the overview", ctx.apiUrl, () => refresher.now()));
      return;
    }
    content.hidden = false;
    fill(status, refreshFailed(loadError));
    root.querySelector<HTMLElement>(".overview")!.dataset.loaded = "true";
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    const stats = data.stats;
    const sinceLocal = toLocalInput(stats.since);

    // counts by status, each a link to those tasks
    const byStatus = new Map(stats.counts.map((c) => [c.status, c.count]));
    const total = stats.counts.reduce((sum, c) => sum + c.count, 0);
    fill(
      counts,
      ...STATUSES.map((s) =>
        h(
          "a",
          {
            class: `tile tile-${s.toLowerCase()}`,
            href: `#/tasks?status=${s}&createdAfter=${encodeURIComponent(sinceLocal)}`,
            "data-testid": `count-${s}`,
            "data-count": byStatus.get(s) ?? 0,
            title: `List the ${s.toLowerCase()} tasks`,
          },
          h("span", { class: "tile-value" }, String(byStatus.get(s) ?? 0)),
          h("span", { class: "tile-label" }, s.toLowerCase()),
          h("span", {
            class: "tile-bar",
            style: `width:${total ? ((byStatus.get(s) ?? 0) / total) * 100 : 0}%`,
            "aria-hidden": "true",
          }),
        ),
      ),
    );
    const finished = (byStatus.get("SUCCEEDED") ?? 0) + (byStatus.get("FAILED") ?? 0) + (byStatus.get("CANCELLED") ?? 0);
    fill(
      timings,
      smallTile("queue wait p50", formatSeconds(stats.queueWait.p50), "wait-p50"),
      smallTile("queue wait p95", formatSeconds(stats.queueWait.p95), "wait-p95"),
      smallTile("run time p50", formatSeconds(stats.runTime.p50), "run-p50"),
      smallTile("run time p95", formatSeconds(stats.runTime.p95), "run-p95"),
      smallTile(
        "failed of finished",
        finished ? `${(((byStatus.get("FAILED") ?? 0) / finished) * 100).toFixed(1)}%` : "—",
        "failure-share",
      ),
    );

    // charts
    const x = stats.buckets.map((b) => Date.parse(b.start) / 1000);
    const last = stats.buckets[stats.buckets.length - 1];
    const lastFull = stats.buckets[stats.buckets.length - 2] ?? last;
    chartNote.textContent = perBucket("by when tasks finished");
    throughput.update(
      x,
      [stats.buckets.map((b) => b.succeeded), stats.buckets.map((b) => b.failed), stats.buckets.map((b) => b.cancelled)],
      lastFull
        ? `Last full bucket: ${lastFull.succeeded} succeeded, ${lastFull.failed} failed, ${lastFull.cancelled} cancelled; ${sum(stats.buckets, (b) => b.succeeded + b.failed + b.cancelled)} finished in the window.`
        : "Nothing finished yet.",
    );
    const rates = stats.buckets.map((b) => {
      const done = b.succeeded + b.failed + b.cancelled;
      return done ? (b.failed / done) * 100 : null;
    });
    const failedAll = sum(stats.buckets, (b) => b.failed);
    const doneAll = sum(stats.buckets, (b) => b.succeeded + b.failed + b.cancelled);
    failureRate.update(
      x,
      [rates],
      doneAll ? `${((failedAll / doneAll) * 100).toFixed(1)}% of the ${doneAll} tasks that finished in the window failed.` : "Nothing finished yet.",
    );
    queueWait.update(
      x,
      [stats.buckets.map((b) => b.queueWait.p50 ?? null), stats.buckets.map((b) => b.queueWait.p95 ?? null)],
      `Over the window: p50 ${formatSeconds(stats.queueWait.p50)}, p95 ${formatSeconds(stats.queueWait.p95)}.`,
    );
    runTime.update(
      x,
      [stats.buckets.map((b) => b.runTime.p50 ?? null), stats.buckets.map((b) => b.runTime.p95 ?? null)],
      `Over the window: p50 ${formatSeconds(stats.runTime.p50)}, p95 ${formatSeconds(stats.runTime.p95)}.`,
    );

    renderQueues();
    renderWorkers();
    renderFailures();
  }

  function renderQueues(): void {
    if (!data) return;
    const deepest = Math.max(1, ...data.queues.map((q) => q.queued + q.running));
    fill(
      queues,
      h("h2", {}, h("a", { href: "#/queues" }, "Queues")),
      data.queues.length === 0
        ? emptyState("No queues.", "A queue appears once a task type or a worker names it.")
        : h(
            "ul",
            { class: "bars", "data-testid": "overview-queues" },
            ...data.queues.map((q) =>
              h(
                "li",
                { "data-testid": "overview-queue", "data-queue": q.name, "data-queued": q.queued },
                h("span", { class: "bar-name" }, q.name, q.paused ? h("span", { class: "pill pill-paused" }, "paused") : null),
                h(
                  "span",
                  { class: "bar-track", "aria-hidden": "true" },
                  h("span", { class: "bar bar-running", style: `width:${(q.running / deepest) * 100}%` }),
                  h("span", { class: "bar bar-queued", style: `width:${(q.queued / deepest) * 100}%` }),
                ),
                h(
                  "span",
                  { class: "bar-text" },
                  `${q.queued} waiting · ${q.running} running · ${q.workers} ${q.workers === 1 ? "worker" : "workers"}`,
                  q.oldestQueuedAt ? ` · oldest ${ago(q.oldestQueuedAt)}` : "",
                ),
              ),
            ),
          ),
    );
  }

  function renderWorkers(): void {
    if (!data) return;
    fill(
      workers,
      h("h2", {}, h("a", { href: "#/workers" }, "Workers"), ` (${data.workers.length})`),
      data.workers.length === 0
        ? emptyState("No live workers.", "Start one: `make dev` runs one, or `taskrunner worker`.")
        : h(
            "ul",
            { class: "bars", "data-testid": "overview-workers" },
            ...data.workers.map((w) =>
              h(
                "li",
                { "data-testid": "overview-worker" },
                h("span", { class: "bar-name" }, h("code", {}, w.id)),
                h(
                  "span",
                  { class: "bar-text" },
                  `${w.runningTaskIds.length} running · ${formatBytes(w.memoryBytes)} · `,
                  h("span", { class: "heartbeat", "data-at": w.lastHeartbeatAt }, `beat ${ago(w.lastHeartbeatAt)}`),
                ),
              ),
            ),
          ),
    );
  }

  function renderFailures(): void {
    if (!data) return;
    const codes = data.stats.failuresByCode;
    const most = Math.max(1, ...codes.map((c) => c.count));
    fill(
      failures,
      h("h2", {}, h("a", { href: "#/failed" }, "Failures by code")),
      codes.length === 0
        ? h("p", { class: "muted", "data-testid": "no-failures" }, "No task failed in the window.")
        : h(
            "ul",
            { class: "bars", "data-testid": "overview-failures" },
            ...codes.map((c) =>
              h(
                "li",
                {},
                h("a", { class: "bar-name", href: `#/failed?code=${encodeURIComponent(c.code)}` }, c.code),
                h("span", { class: "bar-track", "aria-hidden": "true" }, h("span", { class: "bar bar-failed", style: `width:${(c.count / most) * 100}%` })),
                h("span", { class: "bar-text" }, String(c.count)),
              ),
            ),
          ),
    );
  }

  windowSelect.addEventListener("change", () => {
    window = WINDOWS.find((w) => w.value === windowSelect.value) ?? WINDOWS[0]!;
    const params = new URLSearchParams();
    if (window !== WINDOWS[0]) params.set("window", window.value);
    ctx.setParams(params);
    refresher.now();
  });
  const stopListening = ctx.live.listen((event) => {
    if (event.__typename === "StatusChanged") refresher.request();
  });
  const ticker = setInterval(() => {
    for (const beat of root.querySelectorAll<HTMLElement>(".heartbeat")) beat.textContent = `beat ${ago(beat.dataset.at)}`;
  }, 1000);

  render();
  refresher.now();
  return () => {
    disposed = true;
    stopListening();
    refresher.dispose();
    clearInterval(ticker);
    charts.forEach((c) => c.dispose());
  };
}

function smallTile(label: string, value: string, testId: string): HTMLElement {
  return h(
    "div",
    { class: "tile tile-small", "data-testid": testId },
    h("span", { class: "tile-value" }, value),
    h("span", { class: "tile-label" }, label),
  );
}

function sum<T>(items: T[], of: (item: T) => number): number {
  return items.reduce((total, item) => total + of(item), 0);
}

function axisSeconds(v: number): string {
  if (v === 0) return "0";
  if (v < 1) return `${Math.round(v * 1000)}ms`;
  if (v < 120) return `${+v.toFixed(1)}s`;
  return `${Math.round(v / 60)}m`;
}

/** An ISO time as a datetime-local value in this browser's zone (the tasks filter's). */
export function toLocalInput(iso: string): string {
  const date = new Date(iso);
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}
