// The dashboard: a submit form generated from `taskTypes`, a task list kept live by one
// `tasksUpdates` subscription, and a task view that follows its logs with `taskUpdates`.
//
// State: `tasks` holds what the page knows of each task. A snapshot (a query's or a
// mutation's answer) only ever creates an entry; from then on events change it. The
// event stream is gap-free and in commit order, so replaying events on top of a snapshot
// converges to the truth even when the snapshot already reflected some of them.
import "./style.css";
import { Api, ApiError, toApiError, type ConnectionState } from "./api";
import { loadConnection, saveConnection } from "./connection";
import { byTestId, fill, h } from "./dom";
import { buildForm, type GeneratedForm, type JsonSchema } from "./form";
import type {
  ArtifactFieldsFragment,
  EventFieldsFragment,
  TaskFieldsFragment,
  TaskQuery,
  TaskSpecInput,
  TaskStatus,
  TaskTypesQuery,
} from "./gql/graphql";
import {
  CancelTaskMutation,
  RecentTasksQuery,
  RetryTaskMutation,
  SubmitTaskMutation,
  TaskQuery as TaskDocument,
  TaskTypesQuery as TaskTypesDocument,
  TasksUpdatesSubscription,
  TaskUpdatesSubscription,
} from "./operations";

type Task = TaskFieldsFragment & { eventsSeen: number };
type Detail = NonNullable<TaskQuery["task"]>;
type LogEvent = Extract<EventFieldsFragment, { __typename: "LogAppended" }>;

interface View {
  id: string;
  detail: Detail | null;
  cursor: string | null; // of the last taskUpdates event: where the log follows on from
  stop: (() => void) | null;
  following: boolean;
  followAgain: boolean; // the task started again while the log's subscription was ending
  busy: boolean;
  detailRequests: number; // answers to older requests are dropped
  actionError: string | null;
  head: HTMLElement;
  body: HTMLElement;
  logsHead: HTMLElement;
  logs: HTMLElement;
}

const RECENT = 50;
const MAX_LOG_LINES = 1000;
const TERMINAL: ReadonlySet<TaskStatus> = new Set<TaskStatus>(["SUCCEEDED", "FAILED", "CANCELLED"]);
const STATUS_LABEL: Record<TaskStatus, string> = {
  QUEUED: "queued",
  RUNNING: "running",
  SUCCEEDED: "succeeded",
  FAILED: "failed",
  CANCELLED: "cancelled",
};

const connectionForm = document.querySelector<HTMLFormElement>("#connection-form")!;
const connectionState = byTestId(document, "connection");
const submitForm = document.querySelector<HTMLFormElement>("#submit-form")!;
const typeSelect = byTestId<HTMLSelectElement>(submitForm, "task-type");
const typeDescription = byTestId(submitForm, "task-type-description");
const fieldsRoot = byTestId(submitForm, "fields");
const labelsInput = byTestId<HTMLInputElement>(submitForm, "labels");
const submitButton = byTestId<HTMLButtonElement>(submitForm, "submit");
const submitError = byTestId(submitForm, "submit-error");
const taskList = byTestId(document, "task-list");
const noTasks = byTestId(document, "no-tasks");
const viewRoot = byTestId(document, "task-view");

let api: Api | null = null;
let stopFeed: (() => void) | null = null;
let feedCursor: string | null = null; // of the last tasksUpdates event
const tasks = new Map<string, Task>();
const pending = new Map<string, EventFieldsFragment[]>(); // events of tasks being fetched
const rows = new Map<string, HTMLLIElement>();
let taskTypes: TaskTypesQuery["taskTypes"] = [];
let form: GeneratedForm | null = null;
let selected: View | null = null;

// --- connection -------------------------------------------------------------------------

function setConnection(state: ConnectionState, detail?: string): void {
  const text: Record<ConnectionState, string> = {
    connecting: "connecting…",
    connected: "live",
    reconnecting: "reconnecting…",
    closed: "not connected",
    refused: "API key refused",
  };
  connectionState.dataset.state = state;
  connectionState.textContent = detail ? `${text[state]}: ${detail}` : text[state];
}

function connect(): void {
  const data = new FormData(connectionForm);
  const { apiUrl, key } = saveConnection({
    apiUrl: String(data.get("apiUrl") ?? ""),
    key: String(data.get("key") ?? ""),
  });
  byTestId<HTMLInputElement>(connectionForm, "api-url").value = apiUrl;
  teardown();
  if (!key) {
    setConnection("closed", "paste an API key (taskrunner keys create NAME, or the one make dev prints)");
    return;
  }
  const current = new Api(apiUrl, key, setConnection);
  api = current;
  startFeed(current); // before the snapshot, so that no change falls between the two
  void loadTaskTypes(current);
  void loadRecentTasks(current);
}

function teardown(): void {
  stopFeed?.();
  stopFeed = null;
  feedCursor = null;
  selected?.stop?.();
  selected = null;
  void api?.close();
  api = null;
  tasks.clear();
  pending.clear();
  rows.clear();
  taskList.replaceChildren();
  renderView();
  updateEmpty();
}

function failed(current: Api, error: unknown): void {
  if (api !== current) return;
  const err = toApiError(error);
  setConnection(err.code === "UNAUTHENTICATED" ? "refused" : "closed", err.message);
}

// --- the live feed: every event of the caller's tasks ---------------------------------

function startFeed(current: Api): void {
  stopFeed = current.subscribe(
    TasksUpdatesSubscription,
    { after: feedCursor },
    (data) => data.tasksUpdates.cursor,
    {
      next: (data) => {
        feedCursor = data.tasksUpdates.cursor;
        taskList.dataset.cursor = feedCursor;
        applyEvent(data.tasksUpdates);
      },
      error: (error) => {
        if (error.code === "UNAUTHENTICATED") {
          failed(current, error); // a revoked key: retrying will not help
          return;
        }
        // e.g. LIMIT_EXCEEDED when the page fell too far behind: resume from our cursor.
        console.warn(`tasksUpdates ended (${error.message}); resuming from the last cursor`);
        setTimeout(() => api === current && startFeed(current), 1000);
      },
    },
  );
}

function applyEvent(event: EventFieldsFragment): void {
  const task = tasks.get(event.taskId);
  if (task === undefined) {
    // A task this page has not seen (submitted elsewhere, or older than the list):
    // fetch it, keeping its events until it arrives.
    const waiting = pending.get(event.taskId);
    if (waiting) waiting.push(event);
    else {
      pending.set(event.taskId, [event]);
      void fetchTask(event.taskId);
    }
    return;
  }
  task.eventsSeen += 1;
  const before = task.status;
  switch (event.__typename) {
    case "StatusChanged":
      task.status = event.status;
      task.result = event.result;
      task.error = event.error ?? null;
      if (event.status === "QUEUED") {
        task.progress = null; // a retry starts over
        task.progressMessage = null;
      }
      break;
    case "ProgressReported":
      task.progress = event.progress;
      task.progressMessage = event.message ?? null;
      break;
    case "ArtifactAdded":
      addArtifacts(task, [event.artifact]);
      break;
    case "LogAppended":
      break; // the task view follows logs with its own subscription
  }
  renderRow(task);
  if (selected?.id === task.id) selectedChanged(event, before);
}

/** Make an entry from a snapshot, unless there is one (events have kept it current). */
function addTask(snapshot: TaskFieldsFragment): Task {
  const known = tasks.get(snapshot.id);
  if (known) return known;
  const task: Task = { ...snapshot, eventsSeen: 0 };
  tasks.set(task.id, task);
  renderRow(task);
  const waiting = pending.get(task.id) ?? [];
  pending.delete(task.id);
  for (const event of waiting) applyEvent(event);
  updateEmpty();
  return task;
}

async function fetchTask(id: string): Promise<void> {
  const current = api;
  try {
    const data = await current?.request(TaskDocument, { id });
    if (api !== current) return;
    if (data?.task) addTask(data.task);
    else pending.delete(id);
  } catch (error) {
    pending.delete(id);
    console.warn(`could not load task ${id}`, error);
  }
}

function addArtifacts(task: Task, artifacts: ArtifactFieldsFragment[]): void {
  const byId = new Map(task.artifacts.map((a) => [a.id, a]));
  for (const artifact of artifacts) byId.set(artifact.id, artifact); // newer links win
  task.artifacts = [...byId.values()];
}

async function loadRecentTasks(current: Api): Promise<void> {
  try {
    const data = await current.request(RecentTasksQuery, { first: RECENT });
    if (api !== current) return;
    for (const edge of data.tasks.edges) addTask(edge.node);
  } catch (error) {
    failed(current, error);
  }
}

// --- the task list ----------------------------------------------------------------------

function badge(status: TaskStatus): HTMLElement {
  return h(
    "span",
    { class: `badge badge-${status.toLowerCase()}`, "data-testid": "status", title: STATUS_LABEL[status] },
    status,
  );
}

function progressBar(task: Task): HTMLElement {
  return h(
    "span",
    { class: "progress" },
    h("progress", { "data-testid": "progress", max: 1, value: task.progress ?? undefined }),
    h("span", { class: "progress-text" }, task.progress == null ? "" : `${Math.round(task.progress * 100)}%`),
  );
}

function formatTime(iso: string | null | undefined): string {
  return iso ? new Date(iso).toLocaleTimeString() : "—";
}

function renderRow(task: Task): void {
  let row = rows.get(task.id);
  if (row === undefined) {
    row = h("li", { "data-testid": "task-row", "data-task-id": task.id, tabindex: 0 });
    row.addEventListener("click", () => select(task.id));
    row.addEventListener("keydown", (e) => e.key === "Enter" && select(task.id));
    rows.set(task.id, row);
    const created = Date.parse(task.createdAt);
    const older = [...taskList.querySelectorAll<HTMLElement>("[data-task-id]")].find(
      (other) => Date.parse(tasks.get(other.dataset.taskId ?? "")?.createdAt ?? "") < created,
    );
    taskList.insertBefore(row, older ?? null); // newest first
  }
  row.dataset.status = task.status;
  row.dataset.progress = task.progress == null ? "" : String(task.progress);
  row.dataset.events = String(task.eventsSeen);
  row.classList.toggle("selected", selected?.id === task.id);
  fill(
    row,
    badge(task.status),
    h("span", { class: "type" }, task.type),
    h("code", { class: "id", title: task.id }, task.id.slice(0, 8)),
    h("time", { datetime: task.createdAt }, formatTime(task.createdAt)),
    task.status === "RUNNING" ? progressBar(task) : null,
    task.error ? h("span", { class: "error-code", title: task.error.message }, task.error.code) : null,
  );
}

function updateEmpty(): void {
  noTasks.hidden = tasks.size > 0;
}

// --- the task view ----------------------------------------------------------------------

function select(id: string): void {
  selected?.stop?.();
  selected = {
    id,
    detail: null,
    cursor: null,
    stop: null,
    following: false,
    followAgain: false,
    busy: false,
    detailRequests: 0,
    actionError: null,
    head: h("div", { class: "view-head" }),
    body: h("div", { class: "view-body" }),
    logsHead: h("h4", {}, "Log"),
    logs: h("div", { class: "logs", "data-testid": "logs" }),
  };
  viewRoot.dataset.taskId = id;
  viewRoot.replaceChildren(selected.head, selected.body, selected.logsHead, selected.logs);
  for (const [rowId, row] of rows) row.classList.toggle("selected", rowId === id);
  renderView();
  void loadDetail(selected);
  followLogs(selected);
}

/** The task's events from the start (or after the last one seen), then live ones. */
function followLogs(view: View): void {
  if (api === null || view.following) return;
  view.following = true;
  view.followAgain = false;
  view.stop = api.subscribe(
    TaskUpdatesSubscription,
    { id: view.id, after: view.cursor },
    (data) => data.taskUpdates.cursor,
    {
      next: (data) => {
        view.cursor = data.taskUpdates.cursor;
        if (data.taskUpdates.__typename === "LogAppended") appendLog(view, data.taskUpdates);
      },
      error: (error) => {
        view.following = false;
        view.actionError = error.message;
        renderView();
      },
      complete: () => {
        // It completes after a terminal status. If a retry started the task again
        // meanwhile, follow on from the last event.
        view.following = false;
        if (selected === view && view.followAgain) followLogs(view);
      },
    },
  );
}

function appendLog(view: View, event: LogEvent): void {
  view.logs.append(
    h(
      "div",
      { class: `log-line log-${event.level.toLowerCase()}`, "data-testid": "log-line" },
      h("time", { datetime: event.at }, formatTime(event.at)),
      " ",
      event.line,
    ),
  );
  while (view.logs.childElementCount > MAX_LOG_LINES) view.logs.firstElementChild?.remove();
  view.logs.scrollTop = view.logs.scrollHeight;
}

function selectedChanged(event: EventFieldsFragment, before: TaskStatus): void {
  const view = selected!;
  if (event.__typename === "StatusChanged") {
    void loadDetail(view); // attempts, times, the log file: not in the event
    if (TERMINAL.has(before) && !TERMINAL.has(event.status)) {
      // Retried: the log's subscription ended (or is ending) at the terminal status.
      if (view.following) view.followAgain = true;
      else followLogs(view);
    }
  }
  renderView();
}

async function loadDetail(view: View): Promise<void> {
  const current = api;
  const request = ++view.detailRequests;
  try {
    const data = await current?.request(TaskDocument, { id: view.id });
    if (api !== current || selected !== view || request !== view.detailRequests || !data?.task) return;
    view.detail = data.task;
    const task = addTask(data.task);
    task.attempts = Math.max(task.attempts, data.task.attempts); // events do not carry it
    addArtifacts(task, data.task.artifacts);
    renderView();
  } catch (error) {
    view.actionError = toApiError(error).message;
    renderView();
  }
}

async function act(view: View, action: "cancel" | "retry"): Promise<void> {
  if (api === null) return;
  view.busy = true;
  view.actionError = null;
  renderView();
  try {
    const changed =
      action === "cancel"
        ? (await api.request(CancelTaskMutation, { id: view.id })).cancelTask
        : (await api.request(RetryTaskMutation, { id: view.id })).retryTask;
    // Its status arrives as an event; the attempt count is only in the answer.
    const task = tasks.get(changed.id);
    if (task) task.attempts = Math.max(task.attempts, changed.attempts);
  } catch (error) {
    view.actionError =
      error instanceof ApiError ? `${error.code ?? "ERROR"}: ${error.message}` : String(error);
  } finally {
    view.busy = false;
    renderView();
  }
}

function json(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function renderView(): void {
  if (selected === null) {
    delete viewRoot.dataset.taskId;
    delete viewRoot.dataset.status;
    viewRoot.replaceChildren(h("p", { class: "empty" }, "Select a task, or submit one."));
    return;
  }
  const view = selected;
  const task = tasks.get(view.id);
  if (task === undefined) {
    view.head.replaceChildren(h("p", { class: "empty" }, "Loading…"));
    return;
  }
  viewRoot.dataset.status = task.status;
  const cancel = h(
    "button",
    { type: "button", "data-testid": "cancel", disabled: view.busy || TERMINAL.has(task.status) },
    "Cancel",
  );
  const retry = h(
    "button",
    {
      type: "button",
      "data-testid": "retry",
      disabled: view.busy || !["FAILED", "CANCELLED"].includes(task.status),
    },
    "Retry",
  );
  cancel.addEventListener("click", () => void act(view, "cancel"));
  retry.addEventListener("click", () => void act(view, "retry"));
  fill(
    view.head,
    h("h3", {}, badge(task.status), " ", task.type, " ", h("code", { "data-testid": "task-id" }, task.id)),
    task.status === "RUNNING" ? progressBar(task) : null,
    task.progressMessage && task.status === "RUNNING"
      ? h("p", { class: "progress-message" }, task.progressMessage)
      : null,
    h("div", { class: "actions" }, cancel, retry),
    view.actionError ? h("p", { class: "error", "data-testid": "action-error" }, view.actionError) : null,
  );
  const detail = view.detail;
  fill(
    view.body,
    h(
      "dl",
      {},
      h("dt", {}, "attempts"),
      h("dd", { "data-testid": "attempts" }, String(task.attempts)),
      h("dt", {}, "created"),
      h("dd", {}, formatTime(task.createdAt)),
      h("dt", {}, "started"),
      h("dd", {}, formatTime(detail?.startedAt)),
      h("dt", {}, "finished"),
      h("dd", {}, formatTime(detail?.finishedAt)),
      task.labels.length ? h("dt", {}, "labels") : null,
      task.labels.length ? h("dd", {}, task.labels.join(", ")) : null,
    ),
    detail ? h("h4", {}, "Input") : null,
    detail ? h("pre", { "data-testid": "input" }, json(detail.input)) : null,
    task.result != null ? h("h4", {}, "Result") : null,
    task.result != null ? h("pre", { "data-testid": "result" }, json(task.result)) : null,
    task.error
      ? h("p", { class: "error", "data-testid": "error" }, `${task.error.code}: ${task.error.message}`)
      : null,
    task.artifacts.length ? h("h4", {}, "Artifacts") : null,
    task.artifacts.length
      ? h(
          "ul",
          { class: "artifacts", "data-testid": "artifacts" },
          ...task.artifacts.map((a) =>
            h(
              "li",
              {},
              h(
                "a",
                { href: a.url, target: "_blank", rel: "noopener", "data-testid": "artifact-link" },
                a.name,
              ),
              ` ${formatSize(a.size)}, ${a.contentType}`,
            ),
          ),
        )
      : null,
  );
  fill(
    view.logsHead,
    "Log ",
    detail?.logsUrl
      ? h("a", { href: detail.logsUrl, target: "_blank", rel: "noopener", class: "small" }, "(whole file)")
      : null,
  );
}

// --- the submit form --------------------------------------------------------------------

async function loadTaskTypes(current: Api): Promise<void> {
  try {
    const data = await current.request(TaskTypesDocument, {});
    if (api !== current) return;
    taskTypes = data.taskTypes;
    const previous = localStorage.getItem("taskrunner.taskType") ?? typeSelect.value;
    typeSelect.replaceChildren(...taskTypes.map((t) => h("option", { value: t.name }, t.name)));
    if (taskTypes.some((t) => t.name === previous)) typeSelect.value = previous;
    renderFields();
  } catch (error) {
    failed(current, error);
  }
}

function renderFields(): void {
  const type = taskTypes.find((t) => t.name === typeSelect.value);
  if (type === undefined) return;
  localStorage.setItem("taskrunner.taskType", type.name);
  typeDescription.textContent = type.description;
  form = buildForm(type.inputSchema as JsonSchema);
  fieldsRoot.replaceChildren(...form.fields);
}

function showSubmitError(message: string | null): void {
  submitError.hidden = message === null;
  submitError.textContent = message ?? "";
}

async function submit(): Promise<void> {
  if (api === null || form === null) return;
  showSubmitError(null);
  let input: Record<string, unknown>;
  try {
    input = form.read();
  } catch (error) {
    showSubmitError(String(error instanceof Error ? error.message : error));
    return;
  }
  // TaskSpecInput is @oneOf: exactly one field, named for the type, holding its input.
  // The form is built at run time from the type's JSON Schema: the api checks the rest.
  const task = { [typeSelect.value]: input } as unknown as TaskSpecInput;
  const labels = labelsInput.value
    .split(",")
    .map((l) => l.trim())
    .filter(Boolean);
  submitButton.disabled = true;
  try {
    const data = await api.request(SubmitTaskMutation, { task, options: labels.length ? { labels } : null });
    select(addTask(data.submitTask).id);
  } catch (error) {
    const err = toApiError(error);
    showSubmitError(err.code ? `${err.code}: ${err.message}` : err.message);
  } finally {
    submitButton.disabled = false;
  }
}

// --- start ------------------------------------------------------------------------------

connectionForm.addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
typeSelect.addEventListener("change", renderFields);
submitForm.addEventListener("submit", (event) => {
  event.preventDefault();
  void submit();
});

const initial = loadConnection();
byTestId<HTMLInputElement>(connectionForm, "api-url").value = initial.apiUrl;
byTestId<HTMLInputElement>(connectionForm, "api-key").value = initial.key;
connect();
