// The console's shell: the connection (a saved key, `?key=`, or the dev key the api hands
// out under `taskrunner dev`), the live feed, the nav, and hash routes to the views:
// #/overview, #/tasks, #/failed, #/task/ID, #/workers, #/queues, #/schedules,
// #/workflows, #/workflow/ID.
import "./style.css";
import { Api, toApiError, type ConnectionState } from "./api";
import { fetchDevKey, forgetKey, loadConnection, saveConnection } from "./connection";
import { byTestId, h } from "./dom";
import type { TaskTypesQuery } from "./gql/graphql";
import { Live } from "./live";
import { FailuresQuery, TaskTypesQuery as TaskTypesDocument } from "./operations";
import { KEY_HINT, Refresher, emptyState } from "./ui";
import type { Ctx, Mount } from "./views/context";
import { mountFailed } from "./views/failed";
import { mountOverview } from "./views/overview";
import { mountQueues } from "./views/queues";
import { mountSchedules } from "./views/schedules";
import { mountTask } from "./views/task";
import { mountTasks } from "./views/tasks";
import { mountWorkers } from "./views/workers";
import { mountWorkflow, mountWorkflows } from "./views/workflows";

const VIEWS: Record<string, { title: string; nav: string; mount: Mount }> = {
  overview: { title: "Overview", nav: "overview", mount: mountOverview },
  tasks: { title: "Tasks", nav: "tasks", mount: mountTasks },
  failed: { title: "Failed tasks", nav: "failed", mount: mountFailed },
  task: { title: "Task", nav: "tasks", mount: mountTask },
  workers: { title: "Workers", nav: "workers", mount: mountWorkers },
  queues: { title: "Queues", nav: "queues", mount: mountQueues },
  schedules: { title: "Schedules", nav: "schedules", mount: mountSchedules },
  workflows: { title: "Workflows", nav: "workflows", mount: mountWorkflows },
  workflow: { title: "Workflow", nav: "workflows", mount: mountWorkflow },
};

const viewRoot = byTestId(document, "view");
const connectionBox = byTestId<HTMLDetailsElement>(document, "connection-box");
const connectionForm = byTestId<HTMLFormElement>(document, "connection-form");
const connectionBadge = byTestId(document, "connection");
const apiUrlInput = byTestId<HTMLInputElement>(connectionForm, "api-url");
const keyInput = byTestId<HTMLInputElement>(connectionForm, "api-key");
const failedCount = byTestId(document, "nav-failed-count");

interface Session {
  api: Api;
  live: Live;
  apiUrl: string;
  dev: boolean; // connected with the dev key of config.json
  taskTypes: Promise<TaskTypesQuery["taskTypes"]> | null;
  failures: Refresher;
  stopFailures: () => void;
}

let session: Session | null = null;
let problem: { state: ConnectionState; detail: string } | null = null; // why there is none
let unmount: (() => void) | null = null;

// --- connection -------------------------------------------------------------------------

const STATE_TEXT: Record<ConnectionState, string> = {
  connecting: "connecting…",
  connected: "live",
  reconnecting: "reconnecting…",
  closed: "not connected",
  refused: "key refused",
};

function showState(state: ConnectionState, detail?: string): void {
  connectionBadge.dataset.state = state;
  const dev = state === "connected" && session?.dev ? " (dev key)" : "";
  connectionBadge.textContent = `${STATE_TEXT[state]}${dev}`;
  connectionBadge.title = detail ?? "";
}

function teardown(): void {
  unmount?.();
  unmount = null;
  if (session) {
    session.failures.dispose();
    session.stopFailures();
    session.live.dispose();
    void session.api.close();
  }
  session = null;
}

function refused(error: Error): void {
  teardown();
  problem = { state: "refused", detail: error.message };
  showState("refused", error.message);
  render();
}

async function connect(typed: boolean): Promise<void> {
  teardown();
  let { apiUrl, key } = typed
    ? saveConnection({ apiUrl: apiUrlInput.value, key: keyInput.value })
    : loadConnection();
  apiUrlInput.value = apiUrl;
  let dev = false;
  if (!key) {
    // No key saved or typed: under `taskrunner dev` the api hands out its dev key.
    showState("connecting", "asking the api for its dev key");
    const devKey = await fetchDevKey();
    if (devKey) {
      key = devKey;
      dev = true;
    }
  }
  if (!key) {
    problem = { state: "closed", detail: "no key" };
    showState("closed", "no API key");
    render();
    return;
  }
  problem = null;
  const api = new Api(apiUrl, key, (state, detail) => {
    if (session?.api !== api) return;
    if (state === "refused") refused(new Error(detail || "the api closed the websocket (4403)"));
    else showState(state, detail);
  });
  const live = new Live(api, refused);
  const failures = new Refresher(() => loadFailures(), 3000, 30_000);
  session = {
    api,
    live,
    apiUrl,
    dev,
    taskTypes: null,
    failures,
    stopFailures: live.listen((event) => {
      if (event.__typename === "StatusChanged" && event.status === "FAILED") failures.request();
    }),
  };
  live.start(); // before any view's query, so that no change falls between the two
  failures.now();
  render();
}

async function loadFailures(): Promise<void> {
  const current = session;
  if (!current) return;
  try {
    const data = await current.api.request(FailuresQuery, { since: null });
    if (session !== current) return;
    const total = data.stats.failuresByCode.reduce((sum, c) => sum + c.count, 0);
    failedCount.textContent = total ? String(total) : "";
    failedCount.title = total ? `${total} failed in the last hour` : "";
  } catch (error) {
    if (toApiError(error).code === "UNAUTHENTICATED" && session === current) refused(toApiError(error));
  }
}

// --- routes -----------------------------------------------------------------------------

function parseRoute(): { name: string; arg: string | null; params: URLSearchParams } {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path = "", query = ""] = raw.split("?", 2);
  const [name = "", arg = null] = path.split("/", 2);
  return {
    name: name in VIEWS ? name : "overview",
    arg: arg ? decodeURIComponent(arg) : null,
    params: new URLSearchParams(query),
  };
}

function render(): void {
  unmount?.();
  unmount = null;
  const route = parseRoute();
  const view = VIEWS[route.name]!;
  document.title = `${view.title} · taskrunner console`;
  for (const link of document.querySelectorAll<HTMLAnchorElement>(".nav a")) {
    if (link.dataset.view === view.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  viewRoot.dataset.view = route.name;
  formHome();
  viewRoot.replaceChildren();
  if (session === null) {
    viewRoot.append(noSession());
    return;
  }
  const current = session;
  const ctx: Ctx = {
    api: current.api,
    live: current.live,
    apiUrl: current.apiUrl,
    arg: route.arg,
    params: route.params,
    request: async (document, variables) => {
      try {
        return await current.api.request(document, variables);
      } catch (error) {
        const err = toApiError(error);
        if (err.code === "UNAUTHENTICATED" && session === current) setTimeout(() => refused(err));
        throw err;
      }
    },
    taskTypes: () => {
      current.taskTypes ??= current.api.request(TaskTypesDocument, {}).then((d) => d.taskTypes);
      current.taskTypes.catch(() => (current.taskTypes = null));
      return current.taskTypes;
    },
    setParams: (params) => {
      const query = params.toString();
      const hash = `#/${route.name}${route.arg ? `/${encodeURIComponent(route.arg)}` : ""}${query ? `?${query}` : ""}`;
      history.replaceState(null, "", hash);
    },
    failuresChanged: () => current.failures.request(),
  };
  unmount = view.mount(viewRoot, ctx);
}

/**
 * What to do when there is no connection (no key, or a refused one): the connection form
 * moves from the badge's popup into the page, under the explanation.
 */
function noSession(): HTMLElement {
  const hint = `Paste an API key below and press Connect: ${KEY_HINT}.`;
  let state: HTMLElement;
  if (problem?.state === "refused") {
    state = h(
      "div",
      { class: "state state-error", role: "alert", "data-testid": "key-refused" },
      h("p", { class: "state-title" }, "The API refused the key."),
      h("p", { class: "small" }, `It said: ${problem.detail}`),
      h("p", {}, hint),
    );
  } else if (problem?.detail === "no key") {
    state = h("div", { "data-testid": "no-key" }, emptyState("No API key yet.", hint));
  } else {
    return h("p", { class: "state state-loading", role: "status" }, "Connecting…");
  }
  connectionBox.open = false;
  connectionForm.classList.add("connection-inline");
  return h("div", { class: "no-session" }, state, connectionForm);
}

/** The connection form back in the badge's popup. */
function formHome(): void {
  if (connectionForm.parentElement !== connectionBox) {
    connectionForm.classList.remove("connection-inline");
    connectionBox.append(connectionForm);
  }
}

// --- start ------------------------------------------------------------------------------

connectionForm.addEventListener("submit", (event) => {
  event.preventDefault();
  connectionBox.open = false;
  void connect(true);
});
byTestId(connectionForm, "forget-key").addEventListener("click", () => {
  forgetKey();
  keyInput.value = "";
  void connect(false);
});
window.addEventListener("hashchange", render);

const initial = loadConnection();
apiUrlInput.value = initial.apiUrl;
keyInput.value = initial.key;
void connect(false);
