// #/workflows: your workflows (`workflows`), each with its steps' statuses at a glance.
// #/workflow/ID: one workflow's DAG, laid out by dagre (layered, left to right) and drawn
// as SVG, each step coloured by its status, live from `workflowUpdates` (resumed from the
// last cursor, and again after Retry); Cancel and Retry (cancelWorkflow / retryWorkflow).
import { Graph, layout } from "@dagrejs/dagre";
import { fill, h } from "../dom";
import type { EventFieldsFragment, TaskStatus, WorkflowQuery, WorkflowsQuery, WorkflowStatus } from "../gql/graphql";
import { TERMINAL, olderThan } from "../live";
import {
  CancelWorkflowMutation,
  RetryWorkflowMutation,
  WorkflowQuery as WorkflowDocument,
  WorkflowsQuery as WorkflowsDocument,
  WorkflowUpdatesSubscription,
} from "../operations";
import {
  Refresher,
  actionError,
  badge,
  emptyState,
  formatSeconds,
  listReady,
  num,
  pendingState,
  refreshFailed,
  shortId,
  tableHead,
  taskLink,
  time,
} from "../ui";
import type { Ctx } from "./context";

type Summary = WorkflowsQuery["workflows"]["edges"][number]["node"];
type Workflow = NonNullable<WorkflowQuery["workflow"]>;
type Step = Workflow["steps"][number];

const WORKFLOW_STATUSES: WorkflowStatus[] = ["RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];
const TASK_STATUSES: TaskStatus[] = ["SUCCEEDED", "RUNNING", "QUEUED", "FAILED", "CANCELLED"];

// --- the list ---------------------------------------------------------------------------

export function mountWorkflows(root: HTMLElement, ctx: Ctx): () => void {
  let items: Summary[] | null = null;
  let loadError: unknown = null;
  let disposed = false;
  let status = ctx.params.get("status") ?? "";
  const statusSelect = h(
    "select",
    { id: "workflow-status", "data-testid": "workflow-status-filter" },
    h("option", { value: "" }, "any"),
    ...WORKFLOW_STATUSES.map((s) => h("option", { value: s, selected: s === status }, s.toLowerCase())),
  );
  const body = h("div", { "data-testid": "workflows" });
  root.append(
    h(
      "section",
      { class: "page" },
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, "Workflows"),
        h("label", { for: "workflow-status", class: "muted" }, "Status"),
        statusSelect,
      ),
      body,
    ),
  );
  const refresher = new Refresher(load, 2000, 15_000);

  async function load(): Promise<void> {
    try {
      const answer = await ctx.request(WorkflowsDocument, {
        first: 50,
        status: status ? [status as WorkflowStatus] : null,
      });
      if (disposed) return;
      items = answer.workflows.edges.map((e) => e.node);
      loadError = null;
    } catch (error) {
      if (disposed) return;
      loadError = error;
    }
    render();
  }

  function render(): void {
    if (!listReady(body, items, loadError, "workflows", ctx.apiUrl, () => refresher.now(), () =>
      status
        ? emptyState(`No ${status.toLowerCase()} workflow.`, "Pick another status.")
        : emptyState("No workflows yet.", "Submit one with submitWorkflow: GraphiQL's Workflow tab has one ready to run."),
    )) return;
    const problem = refreshFailed(loadError);
    fill(
      body,
      problem,
      h(
        "div",
        { class: "panel" },
        h(
          "table",
          { class: "grid", "data-testid": "workflow-table" },
          h("caption", { class: "visually-hidden" }, "Workflows, newest first"),
          tableHead("Workflow", "Status", "Steps", "Labels", "Created", num("Took")),
          h(
            "tbody",
            {},
            ...items.map((w) =>
              h(
                "tr",
                { "data-testid": "workflow-row", "data-workflow-id": w.id, "data-status": w.status },
                h("th", { scope: "row" }, h("a", { href: `#/workflow/${w.id}`, "data-testid": "workflow-link" }, w.name ?? shortId(w.id))),
                h("td", {}, badge(w.status)),
                h("td", {}, stepStrip(w.steps.map((s) => s.task.status))),
                h("td", {}, ...w.labels.map((l) => h("span", { class: "label" }, l))),
                h("td", {}, time(w.createdAt)),
                h("td", { class: "num" }, w.finishedAt ? formatSeconds((Date.parse(w.finishedAt) - Date.parse(w.createdAt)) / 1000) : ""),
              ),
            ),
          ),
        ),
      ),
    );
  }

  statusSelect.addEventListener("change", () => {
    status = statusSelect.value;
    const params = new URLSearchParams();
    if (status) params.set("status", status);
    ctx.setParams(params);
    refresher.now();
  });
  const stopListening = ctx.live.listen((event) => {
    if (event.__typename === "StatusChanged" || event.__typename === "WorkflowStatusChanged") refresher.request();
  });
  render();
  refresher.now();
  return () => {
    disposed = true;
    stopListening();
    refresher.dispose();
  };
}

/** A bar of the steps by status: what share succeeded, runs, waits, failed. */
function stepStrip(statuses: TaskStatus[]): HTMLElement {
  const counts = TASK_STATUSES.map((s) => [s, statuses.filter((x) => x === s).length] as const).filter(([, n]) => n > 0);
  const text = counts.map(([s, n]) => `${n} ${s.toLowerCase()}`).join(", ");
  return h(
    "span",
    { class: "strip-wrap" },
    h(
      "span",
      { class: "strip", "aria-hidden": "true" },
      ...counts.map(([s, n]) => h("span", { class: `seg seg-${s.toLowerCase()}`, style: `flex:${n}` })),
    ),
    h("span", { class: "muted strip-text" }, text),
  );
}

// --- one workflow -----------------------------------------------------------------------

const NODE_W = 168;
const NODE_H = 52;
const SVG_NS = "http://www.w3.org/2000/svg";

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>, ...children: (Node | string)[]): SVGElementTagNameMap[K] {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  element.append(...children);
  return element;
}

export function mountWorkflow(root: HTMLElement, ctx: Ctx): () => void {
  const id = ctx.arg ?? "";
  let workflow: Workflow | null = null;
  let notFound = false;
  let loadError: unknown = null;
  let disposed = false;
  let cursor: string | null = null;
  let following = false;
  let stopFollowing: (() => void) | null = null;
  const events: EventFieldsFragment[] = []; // but log lines
  let laidOut: string | null = null; // the shape drawn: steps and edges
  const nodes = new Map<string, SVGGElement>();

  const head = h("div", { class: "task-head" });
  const graphBox = h("div", { class: "panel dag-panel" });
  const steps = h("div", { class: "panel" });
  const view = h("section", { class: "page", "data-testid": "workflow-view", "data-workflow-id": id }, head, graphBox, steps);
  root.append(view);

  const refresher = new Refresher(load, 1000, null);

  async function load(): Promise<void> {
    // Events that arrive while the query is out may be newer than its answer: they are
    // applied again on top of it (all of them, for the first answer).
    const mark = workflow === null ? 0 : events.length;
    try {
      const answer = await ctx.request(WorkflowDocument, { id });
      if (disposed) return;
      loadError = null;
      if (!answer.workflow) notFound = true;
      else {
        workflow = answer.workflow;
        for (const event of events.slice(mark)) apply(workflow, event);
      }
    } catch (error) {
      if (disposed) return;
      loadError = error;
    }
    render();
  }

  function follow(): void {
    if (following || disposed) return;
    following = true;
    stopFollowing = ctx.api.subscribe(WorkflowUpdatesSubscription, { id, after: cursor }, (d) => d.workflowUpdates.cursor, {
      next: (d) => {
        cursor = d.workflowUpdates.cursor;
        const event = d.workflowUpdates;
        view.dataset.cursor = cursor;
        if (event.__typename === "LogAppended") return;
        events.push(event);
        if (!workflow) return;
        apply(workflow, event);
        render();
        if (event.__typename === "StatusChanged" || event.__typename === "WorkflowStatusChanged") {
          refresher.request(); // attempts, times
        }
      },
      error: (error) => {
        following = false;
        if (error.code === "NOT_FOUND") notFound = true;
        else loadError = error;
        render();
      },
      complete: () => {
        following = false; // the workflow ended; Retry follows again
      },
    });
  }

  async function act(kind: "cancel" | "retry", button: HTMLButtonElement, errors: HTMLElement): Promise<void> {
    button.disabled = true;
    try {
      if (kind === "cancel") await ctx.request(CancelWorkflowMutation, { id });
      else {
        await ctx.request(RetryWorkflowMutation, { id });
        ctx.failuresChanged();
        follow();
      }
      refresher.request();
    } catch (error) {
      errors.hidden = false;
      errors.textContent = actionError(error);
      button.disabled = false;
    }
  }

  function render(): void {
    if (notFound) {
      fill(head, emptyState(`No workflow ${id}.`, "It may belong to another owner, or the id is mistyped. See Workflows."));
      graphBox.hidden = steps.hidden = true;
      return;
    }
    if (workflow === null) {
      fill(head, pendingState(loadError, "the workflow", ctx.apiUrl, () => refresher.now()));
      return;
    }
    const wf = workflow;
    view.dataset.status = wf.status;
    const cancel = h("button", { type: "button", "data-testid": "cancel-workflow", disabled: wf.status !== "RUNNING" }, "Cancel");
    const retry = h(
      "button",
      { type: "button", "data-testid": "retry-workflow", disabled: !(wf.status === "FAILED" || wf.status === "CANCELLED") },
      "Retry",
    );
    const errors = h("p", { class: "error", hidden: true, role: "alert" });
    cancel.addEventListener("click", () => void act("cancel", cancel, errors));
    retry.addEventListener("click", () => void act("retry", retry, errors));
    fill(
      head,
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, badge(wf.status), " ", wf.name ?? "Workflow", " ", h("code", { class: "muted" }, wf.id)),
        h("div", { class: "actions" }, cancel, retry),
      ),
      h(
        "p",
        { class: "muted" },
        `${wf.stepCount} steps · on a failed step: ${wf.onStepFailure === "CONTINUE" ? "the other branches go on" : "the workflow fails"} · created `,
        time(wf.createdAt),
        wf.finishedAt ? " · finished " : "",
        wf.finishedAt ? time(wf.finishedAt) : "",
      ),
      refreshFailed(loadError),
      errors,
    );
    drawGraph(wf);
    renderSteps(wf);
  }

  function drawGraph(wf: Workflow): void {
    const shape = JSON.stringify(wf.steps.map((s) => [s.key, s.dependsOn]));
    if (shape !== laidOut) {
      laidOut = shape;
      nodes.clear();
      const graph = new Graph();
      graph.setGraph({ rankdir: "LR", nodesep: 22, ranksep: 56, marginx: 8, marginy: 8 });
      graph.setDefaultEdgeLabel(() => ({}));
      for (const step of wf.steps) graph.setNode(step.key, { width: NODE_W, height: NODE_H });
      for (const step of wf.steps) for (const parent of step.dependsOn) graph.setEdge(parent, step.key);
      layout(graph);
      const size = graph.graph() as { width?: number; height?: number };
      const width = Math.ceil(size.width ?? NODE_W);
      const height = Math.ceil(size.height ?? NODE_H);
      const edges = graph.edges().map((e) => {
        const points = (graph.edge(e) as { points?: { x: number; y: number }[] }).points ?? [];
        const d = points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
        return svg("path", { d, class: "dag-edge", "marker-end": "url(#arrow)", "data-from": e.v, "data-to": e.w });
      });
      const drawn = wf.steps.map((step) => {
        const node = graph.node(step.key) as { x: number; y: number };
        const group = svg("g", { transform: `translate(${node.x - NODE_W / 2},${node.y - NODE_H / 2})` });
        nodes.set(step.key, group);
        return group;
      });
      const picture = svg(
        "svg",
        {
          class: "dag",
          viewBox: `0 0 ${width} ${height}`,
          width,
          height,
          role: "group",
          "aria-label": `The workflow's ${wf.steps.length} steps, each linking to its task`,
          "data-testid": "dag",
        },
        svg(
          "defs",
          {},
          svg(
            "marker",
            { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
            svg("path", { d: "M0,0 L10,5 L0,10 z", class: "dag-arrow" }),
          ),
        ),
        ...edges,
        ...drawn,
      );
      fill(graphBox, h("h2", {}, "Steps"), h("div", { class: "dag-scroll" }, picture));
    }
    for (const step of wf.steps) {
      const group = nodes.get(step.key);
      if (group) drawNode(group, step);
    }
  }

  function drawNode(group: SVGGElement, step: Step): void {
    const status = step.task.status;
    const running = status === "RUNNING" && step.task.progress != null;
    const drawn = `${status}|${running ? step.task.progress : ""}`;
    if (group.dataset.drawn === drawn) return; // unchanged: keep the link (and its focus)
    group.dataset.drawn = drawn;
    const link = svg(
      "a",
      { href: `#/task/${step.task.id}`, class: `dag-node node-${status.toLowerCase()}`, "data-testid": "dag-node", "data-step": step.key, "data-status": status },
      svg("rect", { width: NODE_W, height: NODE_H, rx: 8, class: "node-box" }),
      svg("rect", { width: 6, height: NODE_H, rx: 3, class: "node-stripe" }),
      svg("text", { x: 14, y: 21, class: "node-key" }, truncate(step.key, 18)),
      svg("text", { x: 14, y: 39, class: "node-sub" }, `${step.task.type} · ${status.toLowerCase()}`),
      ...(running
        ? [
            svg("rect", { x: 14, y: NODE_H - 7, width: NODE_W - 28, height: 3, rx: 1.5, class: "node-track" }),
            svg("rect", { x: 14, y: NODE_H - 7, width: (NODE_W - 28) * (step.task.progress ?? 0), height: 3, rx: 1.5, class: "node-progress" }),
          ]
        : []),
    );
    const hadFocus = group.contains(document.activeElement);
    group.replaceChildren(link);
    if (hadFocus) link.focus();
  }

  function renderSteps(wf: Workflow): void {
    fill(
      steps,
      h("h2", {}, "Step list"),
      h(
        "table",
        { class: "grid compact", "data-testid": "workflow-steps" },
        h("caption", { class: "visually-hidden" }, "The workflow's steps"),
        tableHead("Step", "Status", "Task", "Type", "Depends on", num("Attempts"), num("Took"), "Error"),
        h(
          "tbody",
          {},
          ...wf.steps.map((s) =>
            h(
              "tr",
              { "data-testid": "workflow-step", "data-step": s.key, "data-status": s.task.status },
              h("th", { scope: "row" }, s.key),
              h("td", {}, badge(s.task.status, "step-status")),
              h("td", {}, taskLink(s.task.id)),
              h("td", {}, s.task.type),
              h("td", {}, s.dependsOn.join(", ") || "—"),
              h("td", { class: "num" }, String(s.task.attempts)),
              h("td", { class: "num" }, s.task.startedAt && s.task.finishedAt ? formatSeconds((Date.parse(s.task.finishedAt) - Date.parse(s.task.startedAt)) / 1000) : ""),
              h("td", {}, s.task.error ? h("span", { class: "error-code", title: s.task.error.message }, s.task.error.code) : ""),
            ),
          ),
        ),
      ),
    );
  }

  render();
  refresher.now();
  follow();
  return () => {
    disposed = true;
    stopFollowing?.();
    refresher.dispose();
  };
}

/** An event on the workflow as the page shows it, unless it is older than that. */
function apply(workflow: Workflow, event: EventFieldsFragment): void {
  if (event.__typename === "WorkflowStatusChanged") {
    if (olderThan(event.at, workflow.finishedAt)) return;
    workflow.status = event.workflowStatus;
    workflow.finishedAt = event.workflowStatus === "RUNNING" ? null : event.at;
    return;
  }
  const step = workflow.steps.find((s) => s.task.id === event.taskId);
  if (!step || olderThan(event.at, step.task.startedAt, step.task.finishedAt)) return;
  if (event.__typename === "StatusChanged") {
    step.task.status = event.status;
    step.task.error = event.error ?? null;
    if (event.status === "RUNNING") step.task.startedAt = event.at;
    if (event.status === "QUEUED") step.task.progress = null;
    step.task.finishedAt = TERMINAL.has(event.status) ? event.at : null;
  } else if (event.__typename === "ProgressReported") {
    step.task.progress = event.progress;
  }
}

function truncate(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
