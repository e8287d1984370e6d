// Small pieces every view uses: status badges, progress bars, times and sizes, the
// loading / empty / error states (each saying what to do), and a refresher that re-runs a
// view's query on events without flooding the api.
import { ApiError, toApiError } from "./api";
import { fill, h } from "./dom";
import type { ActorFieldsFragment, TaskStatus, WorkflowStatus } from "./gql/graphql";

export const STATUSES: readonly TaskStatus[] = ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];

export function badge(status: TaskStatus | WorkflowStatus, testId = "status"): HTMLElement {
  return h("span", { class: `badge badge-${status.toLowerCase()}`, "data-testid": testId }, status);
}

/** Who made a change: "alice-ci (acme)" for an API key, the part's name for the service. */
export function actorText(actor: ActorFieldsFragment): string {
  return actor.kind === "API_KEY" ? `${actor.name} (${actor.owner ?? ""})` : actor.name;
}

/** " · by alice-ci (acme)": who made a change, next to what changed (nothing if unknown). */
export function byActor(actor: ActorFieldsFragment | null | undefined, at?: string | null): HTMLElement | null {
  if (!actor) return null;
  const what = actor.kind === "API_KEY" ? `API key ${actor.name} of owner ${actor.owner ?? ""}` : `the service (${actor.name})`;
  return h(
    "span",
    { class: "actor muted", "data-testid": "actor", "data-actor-kind": actor.kind, title: at ? `${what}, ${new Date(at).toLocaleString()}` : what },
    ` · by ${actorText(actor)}`,
  );
}

export function progressBar(progress: number | null | undefined, label: string): HTMLElement {
  return h(
    "span",
    { class: "progress" },
    h("progress", {
      "data-testid": "progress",
      max: 1,
      value: progress ?? undefined,
      "aria-label": label,
    }),
    h("span", { class: "progress-text" }, progress == null ? "" : `${Math.round(progress * 100)}%`),
  );
}

export function formatTime(iso: string | null | undefined): string {
  if (!iso) return "—";
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

export function time(iso: string | null | undefined): HTMLElement | string {
  return iso ? h("time", { datetime: iso, title: new Date(iso).toLocaleString() }, formatTime(iso)) : "—";
}

/** 0.0123 → "12 ms", 75 → "1m 15s". */
export function formatSeconds(seconds: number | null | undefined): string {
  if (seconds == null || !Number.isFinite(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.round(seconds % 60)}s`;
  const hours = Math.floor(seconds / 3600);
  if (hours < 48) return `${hours}h ${Math.round((seconds % 3600) / 60)}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

/** How long ago, e.g. "3 s ago". */
export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return "—";
  const seconds = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  return `${formatSeconds(seconds)} ago`;
}

export function formatBytes(bytes: number | null | undefined): string {
  if (bytes == null) return "—";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}

export function json(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

export function shortId(id: string): string {
  return id.slice(0, 8);
}

export function taskLink(id: string, text = shortId(id)): HTMLElement {
  return h("a", { href: `#/task/${id}`, class: "id", title: id, "data-testid": "task-link" }, h("code", {}, text));
}

// --- states -----------------------------------------------------------------------------

export const KEY_HINT = "create a key with `taskrunner keys create NAME`, or use the one `make dev` prints";

/** What went wrong and what to do about it, for an error of the api. */
export function explain(error: unknown, apiUrl: string): { title: string; hint: string; code: string } {
  const err = toApiError(error);
  const code = err.code ?? "ERROR";
  switch (code) {
    case "UNREACHABLE":
      return { code, title: `Cannot reach the API at ${apiUrl}.`, hint: "Is `make dev` running?" };
    case "UNAUTHENTICATED":
      return { code, title: "The API refused the key.", hint: `To get one, ${KEY_HINT}.` };
    case "FORBIDDEN":
      return { code, title: err.message, hint: "An admin key can: `taskrunner keys create NAME --admin`." };
    default:
      return { code, title: err.message, hint: "Try again; the api's log says more." };
  }
}

export function errorState(error: unknown, apiUrl: string, retry?: () => void): HTMLElement {
  const { title, hint, code } = explain(error, apiUrl);
  const button = retry ? h("button", { type: "button" }, "Try again") : null;
  button?.addEventListener("click", retry!);
  return h(
    "div",
    { class: "state state-error", role: "alert", "data-testid": "error-state", "data-code": code },
    h("p", { class: "state-title" }, title),
    h("p", {}, hint),
    button,
  );
}

/** A column of `tableHead`: a label, or `num(label)` for one whose cells are numbers
 * (right-aligned like them), or `action(label)` for a column of buttons whose label only
 * screen readers hear. */
export type Column = string | { label: string; kind: "num" | "action" };
export const num = (label: string): Column => ({ label, kind: "num" });
export const action = (label: string): Column => ({ label, kind: "action" });

/** A table's `<thead>`: one `<th scope="col">` per column. */
export function tableHead(...columns: Column[]): HTMLElement {
  return h(
    "thead",
    {},
    h(
      "tr",
      {},
      ...columns.map((column) =>
        typeof column === "string"
          ? h("th", { scope: "col" }, column)
          : column.kind === "num"
            ? h("th", { scope: "col", class: "num" }, column.label)
            : h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, column.label)),
      ),
    ),
  );
}

export function loadingState(what: string): HTMLElement {
  return h("p", { class: "state state-loading", "data-testid": "loading", role: "status" }, `Loading ${what}…`);
}

/** A view's body before its first answer: the error that stopped it (with Try again), or
 * "Loading …". */
export function pendingState(error: unknown, what: string, apiUrl: string, retry: () => void): HTMLElement {
  return error ? errorState(error, apiUrl, retry) : loadingState(what);
}

/** Above data already shown: the error of the last refresh, if it failed (else null). */
export function refreshFailed(error: unknown): HTMLElement | null {
  return error ? h("p", { class: "error", role: "alert" }, `Could not refresh: ${actionError(error)}`) : null;
}

/** The start of a list view's render. Until its first answer (`items` null) the body shows
 * the pending state; with no items, `empty()` under the last refresh's error. True when
 * there are items for the view to show (under `refreshFailed(error)`). */
export function listReady<T>(
  body: HTMLElement,
  items: T[] | null,
  error: unknown,
  what: string,
  apiUrl: string,
  retry: () => void,
  empty: () => HTMLElement,
): items is T[] {
  if (items === null) {
    fill(body, pendingState(error, what, apiUrl, retry));
    return false;
  }
  body.dataset.loaded = "true";
  if (items.length === 0) {
    fill(body, refreshFailed(error), empty());
    return false;
  }
  return true;
}

export function emptyState(title: string, hint: string | Node): HTMLElement {
  return h(
    "div",
    { class: "state state-empty", "data-testid": "empty-state" },
    h("p", { class: "state-title" }, title),
    h("p", {}, hint),
  );
}

export function actionError(error: unknown): string {
  const err = error instanceof ApiError ? error : toApiError(error);
  return err.code ? `${err.code}: ${err.message}` : err.message;
}

// --- refreshing -------------------------------------------------------------------------

/**
 * Runs `load` at most once per `minGap` ms however often it is asked for (one run in flight
 * at a time; a request during a run schedules one more after it), and every `every` ms.
 */
export class Refresher {
  private last = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private running = false;
  private again = false;
  private urgent = false; // asked for with now() during a run: run again right after it
  private readonly interval: ReturnType<typeof setInterval> | null;
  private disposed = false;

  constructor(
    private readonly load: () => Promise<void>,
    private readonly minGap: number,
    every: number | null,
  ) {
    this.interval = every ? setInterval(() => this.request(), every) : null;
  }

  /** Run now (unless a run is in flight: then once more after it). */
  now(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.running) this.urgent = true;
    void this.run();
  }

  request(): void {
    if (this.disposed || this.timer) return;
    if (this.running) {
      this.again = true;
      return;
    }
    const wait = Math.max(0, this.last + this.minGap - Date.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.run();
    }, wait);
  }

  private async run(): Promise<void> {
    if (this.disposed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    this.last = Date.now();
    try {
      await this.load();
    } finally {
      this.running = false;
      if (this.urgent) {
        this.urgent = this.again = false;
        void this.run();
      } else if (this.again) {
        this.again = false;
        this.request();
      }
    }
  }

  dispose(): void {
    this.disposed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.interval) clearInterval(this.interval);
  }
}

/** Buttons that run a mutation: disabled meanwhile, the error shown in `errors`. */
export async function busy<T>(button: HTMLButtonElement, errors: HTMLElement, action: () => Promise<T>): Promise<T | undefined> {
  button.disabled = true;
  errors.hidden = true;
  errors.textContent = "";
  try {
    return await action();
  } catch (error) {
    errors.hidden = false;
    errors.textContent = actionError(error);
    return undefined;
  } finally {
    button.disabled = false;
  }
}
