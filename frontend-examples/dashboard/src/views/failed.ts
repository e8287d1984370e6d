// #/failed: failed tasks grouped by error code (`stats.failuresByCode`, then each code's
// tasks: `tasks(filter: {status: [FAILED], errorCode: [CODE]})`), with Retry per task
// (retryTask) and per group (retryTasks with the group's filter).
import { fill, h } from "../dom";
import type { TaskFilter, TaskRowFragment } from "../gql/graphql";
import { FailuresQuery, RetryTaskMutation, RetryTasksMutation, TasksQuery } from "../operations";
import {
  Refresher,
  action,
  actionError,
  emptyState,
  num,
  pendingState,
  refreshFailed,
  shortId,
  tableHead,
  taskLink,
  time,
} from "../ui";
import type { Ctx } from "./context";

const WINDOWS = [
  { value: "1h", label: "last hour", seconds: 3600 },
  { value: "24h", label: "last 24 hours", seconds: 24 * 3600 },
  { value: "7d", label: "last 7 days", seconds: 7 * 24 * 3600 },
];
const PER_GROUP = 10;
const MAX_GROUPS = 12;

interface Group {
  code: string;
  count: number;
  tasks: TaskRowFragment[];
  more: boolean;
  shown: number;
}

export function mountFailed(root: HTMLElement, ctx: Ctx): () => void {
  let window = WINDOWS.find((w) => w.value === ctx.params.get("window")) ?? WINDOWS[0]!;
  const focusCode = ctx.params.get("code");
  let groups: Group[] | null = null;
  let since = "";
  let loadError: unknown = null;
  let disposed = false;
  const shown = new Map<string, number>(); // per code: tasks asked for
  const retried = new Set<string>(); // task ids retried from here, until they leave the list

  const windowSelect = h(
    "select",
    { id: "failed-window", "data-testid": "failed-window" },
    ...WINDOWS.map((w) => h("option", { value: w.value, selected: w === window }, w.label)),
  );
  const message = h("p", { class: "bulk-message", role: "status", "data-testid": "failed-message" });
  const body = h("div", { class: "failed-groups", "data-testid": "failed-groups" });
  root.append(
    h(
      "section",
      { class: "page", "data-testid": "failed-view" },
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, "Failed tasks"),
        h("label", { for: "failed-window", class: "muted" }, "created in the"),
        windowSelect,
        message,
      ),
      body,
    ),
  );

  const refresher = new Refresher(load, 2000, 30_000);

  function filterOf(code: string): TaskFilter {
    return { status: ["FAILED"], errorCode: [code], createdAfter: since };
  }

  async function load(): Promise<void> {
    since = new Date(Date.now() - window.seconds * 1000).toISOString();
    try {
      const stats = (await ctx.request(FailuresQuery, { since })).stats;
      const codes = stats.failuresByCode.slice(0, MAX_GROUPS);
      const loaded = await Promise.all(
        codes.map(async ({ code, count }) => {
          const first = Math.min(100, shown.get(code) ?? PER_GROUP);
          const page = await ctx.request(TasksQuery, { filter: filterOf(code), first, after: null });
          return {
            code,
            count,
            tasks: page.tasks.edges.map((e) => e.node),
            more: page.tasks.pageInfo.hasNextPage,
            shown: first,
          };
        }),
      );
      if (disposed) return;
      groups = loaded;
      loadError = null;
      const stillFailed = new Set(loaded.flatMap((g) => g.tasks.map((t) => t.id)));
      for (const id of retried) if (!stillFailed.has(id)) retried.delete(id);
    } catch (error) {
      if (disposed) return;
      loadError = error;
    }
    render();
  }

  function render(): void {
    if (groups === null) {
      fill(body, pendingState(loadError, "failures", ctx.apiUrl, () => refresher.now()));
      return;
    }
    body.dataset.loaded = "true";
    if (groups.length === 0) {
      fill(
        body,
        refreshFailed(loadError),
        emptyState(`No task failed in the ${window.label}.`, "Widen the window to look further back."),
      );
      return;
    }
    const most = Math.max(...groups.map((g) => g.count));
    fill(
      body,
      refreshFailed(loadError),
      ...groups.map((group) => renderGroup(group, most)),
    );
    if (focusCode) body.querySelector<HTMLElement>(`[data-code="${CSS.escape(focusCode)}"]`)?.scrollIntoView();
  }

  function renderGroup(group: Group, most: number): HTMLElement {
    const headingId = `group-${group.code.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    const retryAll = h(
      "button",
      { type: "button", "data-testid": "retry-group", "aria-describedby": headingId },
      `Retry all ${group.count}`,
    );
    const error = h("p", { class: "error", hidden: true, role: "alert" });
    retryAll.addEventListener("click", () => {
      retryAll.disabled = true;
      ctx
        .request(RetryTasksMutation, { filter: filterOf(group.code) })
        .then((answer) => {
          message.textContent = `Retried ${answer.retryTasks} ${group.code} ${answer.retryTasks === 1 ? "task" : "tasks"}.`;
          group.tasks.forEach((t) => retried.add(t.id));
          ctx.failuresChanged();
          render();
          refresher.request();
        })
        .catch((e: unknown) => {
          error.hidden = false;
          error.textContent = actionError(e);
          retryAll.disabled = false;
        });
    });
    const more = group.more
      ? h("button", { type: "button", class: "link", "data-testid": "group-more" }, `Show more of ${group.code}`)
      : null;
    more?.addEventListener("click", () => {
      shown.set(group.code, Math.min(100, group.shown + PER_GROUP * 2));
      refresher.now();
    });
    return h(
      "section",
      { class: "panel failed-group", "data-testid": "failed-group", "data-code": group.code, "data-count": group.count },
      h(
        "div",
        { class: "group-head" },
        h("h2", { id: headingId }, h("span", { class: "error-code" }, group.code)),
        h(
          "span",
          { class: "group-count" },
          h("span", { class: "bar-track", "aria-hidden": "true" }, h("span", { class: "bar bar-failed", style: `width:${(group.count / most) * 100}%` })),
          h("span", { "data-testid": "group-count" }, `${group.count} failed`),
        ),
        retryAll,
      ),
      error,
      h(
        "table",
        { class: "grid compact" },
        h("caption", { class: "visually-hidden" }, `Failed tasks with ${group.code}`),
        tableHead("Task", "Type", "Message", num("Attempts"), "Created", action("Action")),
        h("tbody", {}, ...group.tasks.map((task) => renderTask(task))),
      ),
      more,
    );
  }

  function renderTask(task: TaskRowFragment): HTMLElement {
    const done = retried.has(task.id);
    const retry = h(
      "button",
      { type: "button", "data-testid": "retry-task", disabled: done, "aria-label": `Retry task ${shortId(task.id)}` },
      done ? "Retried" : "Retry",
    );
    const row = h(
      "tr",
      { "data-testid": "failed-task", "data-task-id": task.id },
      h("td", {}, taskLink(task.id)),
      h("td", {}, task.type),
      h("td", { class: "message" }, task.error?.message ?? ""),
      h("td", { class: "num" }, String(task.attempts)),
      h("td", {}, time(task.createdAt)),
      h("td", {}, retry),
    );
    retry.addEventListener("click", () => {
      retry.disabled = true;
      ctx
        .request(RetryTaskMutation, { id: task.id })
        .then(() => {
          retried.add(task.id);
          retry.textContent = "Retried";
          message.textContent = `Retried ${shortId(task.id)}.`;
          ctx.failuresChanged();
          refresher.request();
        })
        .catch((e: unknown) => {
          retry.disabled = false;
          message.textContent = actionError(e);
        });
    });
    return row;
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

  render();
  refresher.now();
  return () => {
    disposed = true;
    stopListening();
    refresher.dispose();
  };
}
