// #/tasks: the submit form, and a table of tasks with filters (status, type, label, created
// range, id) and pages (`tasks(filter, first, after)`), kept live by the feed. Rows have
// checkboxes: the selected tasks are cancelled or retried together (cancelTasks /
// retryTasks with `TaskFilter.ids`). The filters live in the address: #/tasks?status=FAILED.
import { fill, h } from "../dom";
import { buildForm, type GeneratedForm, type JsonSchema } from "../form";
import type { TaskFilter, TaskSpecInput, TaskStatus, TaskTypesQuery } from "../gql/graphql";
import { TERMINAL, type LiveTask } from "../live";
import {
  CancelTasksMutation,
  RetryTasksMutation,
  SubmitTaskMutation,
  TasksQuery,
} from "../operations";
import {
  Refresher,
  STATUSES,
  actionError,
  badge,
  busy,
  emptyState,
  errorState,
  formatSeconds,
  loadingState,
  progressBar,
  refreshFailed,
  shortId,
  time,
} from "../ui";
import type { Ctx } from "./context";

const PAGE_SIZES = [25, 50, 100];

export function mountTasks(root: HTMLElement, ctx: Ctx): () => void {
  const disposers: (() => void)[] = [];
  const head = h(
    "div",
    { class: "page-head" },
    h("h1", {}, "Tasks"),
    h("span", { class: "muted" }, "newest first, live"),
  );
  const submit = submitPanel(ctx);
  disposers.push(submit.dispose);
  const table = taskTable(ctx, { params: ctx.params, keepInAddress: true });
  disposers.push(table.dispose);
  root.append(h("section", { class: "page" }, head, h("div", { class: "tasks-layout" }, submit.element, table.element)));
  return () => disposers.forEach((d) => d());
}

// --- the submit form --------------------------------------------------------------------

function submitPanel(ctx: Ctx): { element: HTMLElement; dispose: () => void } {
  const typeSelect = h("select", { name: "type", "data-testid": "task-type", id: "task-type" });
  const description = h("small", { "data-testid": "task-type-description" });
  const fields = h("div", { "data-testid": "fields" });
  const labels = h("input", { name: "labels", "data-testid": "labels", placeholder: "demo, nightly", id: "task-labels" });
  const button = h("button", { type: "submit", "data-testid": "submit" }, "Submit");
  const error = h("p", { class: "error", "data-testid": "submit-error", hidden: true, role: "alert" });
  const form = h(
    "form",
    { id: "submit-form", "data-testid": "submit-form", "aria-labelledby": "submit-title" },
    h(
      "div",
      { class: "field" },
      h("label", { class: "field-name", for: "task-type" }, "Type"),
      typeSelect,
      description,
    ),
    fields,
    h(
      "div",
      { class: "field" },
      h("label", { class: "field-name", for: "task-labels" }, "Labels"),
      labels,
      h("small", {}, "Comma-separated, to filter tasks by."),
    ),
    button,
    error,
  );
  const element = h("aside", { class: "panel submit-panel" }, h("h2", { id: "submit-title" }, "Submit a task"), form);
  let types: TaskTypesQuery["taskTypes"] = [];
  let generated: GeneratedForm | null = null;
  let disposed = false;

  function renderFields(): void {
    const type = types.find((t) => t.name === typeSelect.value);
    if (type === undefined) return;
    localStorage.setItem("taskrunner.taskType", type.name);
    description.textContent = type.description;
    generated = buildForm(type.inputSchema as JsonSchema);
    fields.replaceChildren(...generated.fields);
  }

  function showError(message: string | null): void {
    error.hidden = message === null;
    error.textContent = message ?? "";
  }

  ctx
    .taskTypes()
    .then((loaded) => {
      if (disposed) return;
      types = loaded;
      const previous = localStorage.getItem("taskrunner.taskType") ?? "";
      typeSelect.replaceChildren(...types.map((t) => h("option", { value: t.name }, t.name)));
      if (types.some((t) => t.name === previous)) typeSelect.value = previous;
      renderFields();
    })
    .catch((e: unknown) => !disposed && showError(actionError(e)));

  typeSelect.addEventListener("change", renderFields);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (generated === null) return;
    showError(null);
    let input: Record<string, unknown>;
    try {
      input = generated.read();
    } catch (e) {
      showError(e instanceof Error ? e.message : String(e));
      return;
    }
    // TaskSpecInput is @oneOf: exactly one field, named for the type, holding its input.
    // The form is built at run time from the type's JSON Schema: the api checks the rest.
    const task = { [typeSelect.value]: input } as unknown as TaskSpecInput;
    const list = labels.value
      .split(",")
      .map((l) => l.trim())
      .filter(Boolean);
    void busy(button, error, async () => {
      const data = await ctx.request(SubmitTaskMutation, { task, options: list.length ? { labels: list } : null });
      ctx.live.adopt(data.submitTask);
      location.hash = `#/task/${data.submitTask.id}`;
    });
  });
  return {
    element,
    dispose: () => {
      disposed = true;
    },
  };
}

// --- the table --------------------------------------------------------------------------

export interface TableOptions {
  params: URLSearchParams;
  keepInAddress: boolean;
}

interface Filters {
  status: TaskStatus[];
  type: string;
  label: string;
  createdAfter: string; // datetime-local values (the browser's time zone)
  createdBefore: string;
  id: string;
}

function readFilters(params: URLSearchParams): Filters {
  return {
    status: (params.get("status") ?? "")
      .split(",")
      .filter((s): s is TaskStatus => (STATUSES as readonly string[]).includes(s)),
    type: params.get("type") ?? "",
    label: params.get("label") ?? "",
    createdAfter: params.get("createdAfter") ?? "",
    createdBefore: params.get("createdBefore") ?? "",
    id: params.get("id") ?? "",
  };
}

function toParams(filters: Filters, size: number): URLSearchParams {
  const params = new URLSearchParams();
  if (filters.status.length) params.set("status", filters.status.join(","));
  for (const name of ["type", "label", "createdAfter", "createdBefore", "id"] as const) {
    if (filters[name]) params.set(name, filters[name]);
  }
  if (size !== PAGE_SIZES[0]) params.set("size", String(size));
  return params;
}

function isoOf(local: string): string | null {
  if (!local) return null;
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? null : date.toISOString();
}

function toFilter(filters: Filters): TaskFilter {
  return {
    status: filters.status.length ? filters.status : null,
    type: filters.type ? [filters.type] : null,
    label: filters.label || null,
    createdAfter: isoOf(filters.createdAfter),
    createdBefore: isoOf(filters.createdBefore),
    ids: filters.id.trim() ? filters.id.split(/[\s,]+/).filter(Boolean) : null,
  };
}

/** Where the focus is inside `root` (a row's control), to put it back after a re-render. */
function focused(root: HTMLElement): (() => void) | null {
  const active = document.activeElement;
  if (!(active instanceof HTMLElement) || !root.contains(active)) return null;
  const row = active.closest<HTMLElement>("[data-task-id]")?.dataset.taskId;
  const testId = active.dataset.testid;
  if (!row || !testId) return null;
  return () =>
    root.querySelector<HTMLElement>(`[data-task-id="${row}"] [data-testid="${testId}"], [data-task-id="${row}"][data-testid="${testId}"]`)?.focus();
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function taskTable(ctx: Ctx, options: TableOptions): { element: HTMLElement; dispose: () => void } {
  const filters = readFilters(options.params);
  let size = Number(options.params.get("size")) || PAGE_SIZES[0]!;
  if (!PAGE_SIZES.includes(size)) size = PAGE_SIZES[0]!;
  const cursors: (string | null)[] = [null]; // the `after` of each page seen; last: this one
  let nextCursor: string | null = null;
  let rowIds: string[] = [];
  let loaded = false;
  let loadError: unknown = null;
  const selected = new Set<string>();
  const dirty = new Set<string>();
  let frame: number | null = null;
  let disposed = false;

  // filters
  const statusBoxes = STATUSES.map((status) => {
    const box = h("input", {
      type: "checkbox",
      value: status,
      checked: filters.status.includes(status),
      "data-testid": `filter-status-${status}`,
    });
    return { status, box, label: h("label", { class: `chip chip-${status.toLowerCase()}` }, box, status.toLowerCase()) };
  });
  const typeSelect = h(
    "select",
    { id: "filter-type", "data-testid": "filter-type" },
    h("option", { value: "" }, "any type"),
    filters.type ? h("option", { value: filters.type }, filters.type) : null,
  );
  typeSelect.value = filters.type;
  const labelInput = h("input", { id: "filter-label", "data-testid": "filter-label", value: filters.label, placeholder: "nightly", size: 10 });
  const afterInput = h("input", { id: "filter-after", type: "datetime-local", step: 1, "data-testid": "filter-created-after", value: filters.createdAfter });
  const beforeInput = h("input", { id: "filter-before", type: "datetime-local", step: 1, "data-testid": "filter-created-before", value: filters.createdBefore });
  const idInput = h("input", { id: "filter-id", "data-testid": "filter-id", value: filters.id, placeholder: "task id", size: 14 });
  const clear = h("button", { type: "button", "data-testid": "filter-clear" }, "Clear filters");
  const filterForm = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter tasks", "data-testid": "filters" },
    h("fieldset", { class: "chips" }, h("legend", {}, "Status"), ...statusBoxes.map((s) => s.label)),
    h("span", { class: "filter" }, h("label", { for: "filter-type" }, "Type"), typeSelect),
    h("span", { class: "filter" }, h("label", { for: "filter-label" }, "Label"), labelInput),
    h("span", { class: "filter" }, h("label", { for: "filter-after" }, "Created after"), afterInput),
    h("span", { class: "filter" }, h("label", { for: "filter-before" }, "before"), beforeInput),
    h("span", { class: "filter" }, h("label", { for: "filter-id" }, "ID"), idInput),
    clear,
  );
  ctx
    .taskTypes()
    .then((types) => {
      if (disposed) return;
      typeSelect.replaceChildren(
        h("option", { value: "" }, "any type"),
        ...types.map((t) => h("option", { value: t.name }, t.name)),
      );
      typeSelect.value = filters.type;
    })
    .catch(() => undefined);

  // bulk actions
  const selectAll = h("input", { type: "checkbox", "data-testid": "select-all", "aria-label": "Select every task on this page" });
  const selectedCount = h("span", { "data-testid": "selected-count", "aria-live": "polite" });
  const cancelSelected = h("button", { type: "button", "data-testid": "cancel-selected" }, "Cancel selected");
  const retrySelected = h("button", { type: "button", "data-testid": "retry-selected" }, "Retry selected");
  const clearSelection = h("button", { type: "button", "data-testid": "clear-selection" }, "Clear selection");
  const bulkMessage = h("span", { class: "bulk-message", "data-testid": "bulk-message", role: "status" });
  const bulkError = h("p", { class: "error", "data-testid": "bulk-error", hidden: true, role: "alert" });
  const bulk = h(
    "div",
    { class: "bulk", "data-testid": "bulk-bar", role: "toolbar", "aria-label": "Selected tasks" },
    selectedCount,
    cancelSelected,
    retrySelected,
    clearSelection,
    bulkMessage,
  );

  // table and pages
  const tbody = h("tbody", { "data-testid": "task-list" });
  const table = h(
    "table",
    { class: "grid tasks-table", "data-testid": "task-table" },
    h("caption", { class: "visually-hidden" }, "Tasks, newest first"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col", class: "check" }, selectAll),
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col" }, "Type"),
        h("th", { scope: "col" }, "ID"),
        h("th", { scope: "col" }, "Progress"),
        h("th", { scope: "col", class: "num" }, "Attempts"),
        h("th", { scope: "col" }, "Created"),
        h("th", { scope: "col", class: "num" }, "Took"),
        h("th", { scope: "col" }, "Labels · queue"),
        h("th", { scope: "col" }, "Error"),
      ),
    ),
    tbody,
  );
  const state = h("div", { class: "table-state" });
  const newer = h("button", { type: "button", "data-testid": "page-newer" }, "← Newer");
  const older = h("button", { type: "button", "data-testid": "page-older" }, "Older →");
  const pageText = h("span", { class: "muted", "data-testid": "page-number" });
  const sizeSelect = h(
    "select",
    { id: "page-size", "data-testid": "page-size" },
    ...PAGE_SIZES.map((n) => h("option", { value: n, selected: n === size }, String(n))),
  );
  const pager = h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    newer,
    pageText,
    older,
    h("label", { for: "page-size", class: "muted" }, "per page"),
    sizeSelect,
  );
  const element = h(
    "div",
    { class: "panel table-panel", "data-testid": "task-table-panel" },
    filterForm,
    bulk,
    bulkError,
    h("div", { class: "table-scroll" }, table),
    state,
    pager,
  );

  const refresher = new Refresher(load, 1500, null);

  function currentFilter(): TaskFilter {
    return toFilter(filters);
  }

  /** The filters and page a query asks for (kept on the panel once answered). */
  function query(): string {
    const shown = toParams(filters, size);
    shown.set("page", String(cursors.length));
    return shown.toString();
  }

  async function load(): Promise<void> {
    const seq = ctx.live.seq;
    const asked = query();
    const after = cursors[cursors.length - 1] ?? null;
    const bad = filters.id.split(/[\s,]+/).find((id) => id && !UUID.test(id));
    if (bad) {
      loadError = new Error(`"${bad}" is not a task id (they look like 0d3c5f2e-…)`);
      renderAll();
      return;
    }
    try {
      const data = await ctx.request(TasksQuery, { filter: currentFilter(), first: size, after });
      if (disposed || asked !== query()) return; // the filters changed meanwhile: asked again
      rowIds = data.tasks.edges.map((edge) => ctx.live.adopt(edge.node).id);
      ctx.live.settled(seq);
      nextCursor = data.tasks.pageInfo.hasNextPage ? (data.tasks.pageInfo.endCursor ?? null) : null;
      loaded = true;
      loadError = null;
      element.dataset.query = asked; // what the rows answer (for tests, and the curious)
    } catch (error) {
      if (disposed) return;
      loadError = error;
    }
    renderAll();
  }

  function restart(): void {
    cursors.splice(0, cursors.length, null);
    selected.clear();
    if (options.keepInAddress) ctx.setParams(toParams(filters, size));
    refresher.now();
  }

  function renderAll(): void {
    const focus = focused(tbody);
    tbody.replaceChildren(...rowIds.map((id) => renderRow(id)));
    focus?.();
    const page = cursors.length;
    if (loadError && !loaded) fill(state, errorState(loadError, ctx.apiUrl, () => refresher.now()));
    else if (loadError) fill(state, refreshFailed(loadError));
    else if (!loaded) fill(state, loadingState("tasks"));
    else if (rowIds.length === 0) {
      const filtered = [...toParams(filters, PAGE_SIZES[0]!).keys()].length > 0;
      fill(
        state,
        filtered
          ? emptyState("No task matches these filters.", "Clear the filters, or widen the created range.")
          : emptyState("No tasks yet.", "Submit one with the form, from GraphiQL, or with a script (see the README)."),
      );
    } else fill(state);
    newer.disabled = page === 1;
    older.disabled = nextCursor === null;
    pageText.textContent = `page ${page}`;
    renderSelection();
  }

  function renderRow(id: string): HTMLTableRowElement {
    const task = ctx.live.tasks.get(id);
    const row = h("tr", { "data-testid": "task-row", "data-task-id": id });
    if (task) fillRow(row, task);
    return row;
  }

  function fillRow(row: HTMLTableRowElement, task: LiveTask): void {
    row.dataset.status = task.status;
    row.dataset.progress = task.progress == null ? "" : String(task.progress);
    row.dataset.events = String(task.eventsSeen);
    const isSelected = selected.has(task.id);
    row.setAttribute("aria-selected", String(isSelected));
    const box = h("input", {
      type: "checkbox",
      "data-testid": "row-select",
      checked: isSelected,
      "aria-label": `Select task ${shortId(task.id)} (${task.type}, ${task.status.toLowerCase()})`,
    });
    box.addEventListener("change", () => {
      if (box.checked) selected.add(task.id);
      else selected.delete(task.id);
      row.setAttribute("aria-selected", String(box.checked));
      renderSelection();
    });
    const focus = focused(row);
    const took =
      task.startedAt && task.finishedAt ? (Date.parse(task.finishedAt) - Date.parse(task.startedAt)) / 1000 : null;
    fill(
      row,
      h("td", { class: "check" }, box),
      h("td", {}, badge(task.status)),
      h("td", { class: "type" }, task.type, task.stepKey ? h("span", { class: "muted" }, ` · ${task.stepKey}`) : null),
      h("td", {}, h("a", { href: `#/task/${task.id}`, class: "id", title: task.id, "data-testid": "task-link" }, h("code", {}, shortId(task.id)))),
      h("td", { class: "progress-cell" }, task.status === "RUNNING" ? progressBar(task.progress, `Progress of ${shortId(task.id)}`) : null),
      h("td", { class: "num", "data-testid": "row-attempts" }, String(task.attempts)),
      h("td", {}, time(task.createdAt)),
      h("td", { class: "num" }, TERMINAL.has(task.status) ? formatSeconds(took) : ""),
      h(
        "td",
        { class: "labels" },
        ...task.labels.map((l) => h("span", { class: "label" }, l)),
        task.queue !== "default" ? h("span", { class: "label label-queue" }, task.queue) : null,
      ),
      h("td", {}, task.error ? h("span", { class: "error-code", title: task.error.message }, task.error.code) : null),
    );
    focus?.();
  }

  function renderSelection(): void {
    const onPage = rowIds.filter((id) => selected.has(id)).length;
    selectAll.checked = rowIds.length > 0 && onPage === rowIds.length;
    selectAll.indeterminate = onPage > 0 && onPage < rowIds.length;
    const chosen = [...selected].map((id) => ctx.live.tasks.get(id)).filter((t): t is LiveTask => t !== undefined);
    selectedCount.textContent = selected.size ? `${selected.size} selected` : "Select tasks to cancel or retry them together";
    cancelSelected.disabled = !chosen.some((t) => !TERMINAL.has(t.status));
    retrySelected.disabled = !chosen.some((t) => t.status === "FAILED" || t.status === "CANCELLED");
    clearSelection.disabled = selected.size === 0;
    bulk.classList.toggle("bulk-active", selected.size > 0);
  }

  function flush(): void {
    frame = null;
    for (const id of dirty) {
      const row = tbody.querySelector<HTMLTableRowElement>(`tr[data-task-id="${id}"]`);
      const task = ctx.live.tasks.get(id);
      if (row && task) fillRow(row, task);
    }
    dirty.clear();
    renderSelection();
  }

  async function bulkAction(kind: "cancel" | "retry", button: HTMLButtonElement): Promise<void> {
    const ids = [...selected];
    const done = await busy(button, bulkError, async () =>
      kind === "cancel"
        ? (await ctx.request(CancelTasksMutation, { filter: { ids } })).cancelTasks
        : (await ctx.request(RetryTasksMutation, { filter: { ids } })).retryTasks,
    );
    if (done === undefined) return;
    bulkMessage.textContent = `${kind === "cancel" ? "Cancelled" : "Retried"} ${done} of ${ids.length} ${ids.length === 1 ? "task" : "tasks"}.`;
    selected.clear();
    if (kind === "retry") ctx.failuresChanged();
    renderAll();
    refresher.request();
  }

  // wiring
  for (const { status, box } of statusBoxes) {
    box.addEventListener("change", () => {
      filters.status = STATUSES.filter((s) => (s === status ? box.checked : filters.status.includes(s)));
      restart();
    });
  }
  typeSelect.addEventListener("change", () => {
    filters.type = typeSelect.value;
    restart();
  });
  let typing: ReturnType<typeof setTimeout> | null = null;
  for (const [input, name] of [
    [labelInput, "label"],
    [idInput, "id"],
    [afterInput, "createdAfter"],
    [beforeInput, "createdBefore"],
  ] as const) {
    input.addEventListener("input", () => {
      filters[name] = input.value.trim();
      if (typing) clearTimeout(typing);
      typing = setTimeout(restart, 300);
    });
  }
  filterForm.addEventListener("submit", (e) => e.preventDefault());
  clear.addEventListener("click", () => {
    Object.assign(filters, readFilters(new URLSearchParams()));
    for (const { box } of statusBoxes) box.checked = false;
    typeSelect.value = "";
    for (const input of [labelInput, idInput, afterInput, beforeInput]) input.value = "";
    restart();
  });
  selectAll.addEventListener("change", () => {
    for (const id of rowIds) {
      if (selectAll.checked) selected.add(id);
      else selected.delete(id);
    }
    for (const id of rowIds) dirty.add(id);
    flush();
  });
  cancelSelected.addEventListener("click", () => void bulkAction("cancel", cancelSelected));
  retrySelected.addEventListener("click", () => void bulkAction("retry", retrySelected));
  clearSelection.addEventListener("click", () => {
    selected.clear();
    for (const id of rowIds) dirty.add(id);
    flush();
  });
  newer.addEventListener("click", () => {
    cursors.pop();
    refresher.now();
  });
  older.addEventListener("click", () => {
    cursors.push(nextCursor);
    refresher.now();
  });
  sizeSelect.addEventListener("change", () => {
    size = Number(sizeSelect.value);
    restart();
  });

  const stopListening = ctx.live.listen((event) => {
    if (rowIds.includes(event.taskId)) {
      dirty.add(event.taskId);
      frame ??= requestAnimationFrame(flush);
    } else if (cursors.length === 1 && event.__typename === "StatusChanged") {
      refresher.request(); // a task this page does not show yet: the first page may have it
    }
  });

  renderAll();
  refresher.now();
  return {
    element,
    dispose: () => {
      disposed = true;
      stopListening();
      refresher.dispose();
      if (frame !== null) cancelAnimationFrame(frame);
      if (typing) clearTimeout(typing);
    },
  };
}
