// #/schedules: your schedules (`schedules`): cadence, next and last run, skipped ticks, the
// latest runs' statuses; Pause / Resume and Trigger (run its task now).
import { fill, h } from "../dom";
import type { SchedulesQuery } from "../gql/graphql";
import {
  PauseScheduleMutation,
  ResumeScheduleMutation,
  SchedulesQuery as SchedulesDocument,
  TriggerScheduleMutation,
} from "../operations";
import {
  Refresher,
  action,
  actionError,
  byActor,
  emptyState,
  formatSeconds,
  listReady,
  num,
  refreshFailed,
  shortId,
  tableHead,
  time,
} from "../ui";
import type { Ctx } from "./context";

type Schedule = SchedulesQuery["schedules"]["edges"][number]["node"];

export function mountSchedules(root: HTMLElement, ctx: Ctx): () => void {
  let schedules: Schedule[] | null = null;
  let loadError: unknown = null;
  let disposed = false;
  const message = h("p", { class: "bulk-message", role: "status", "data-testid": "schedules-message" });
  const body = h("div", { "data-testid": "schedules" });
  root.append(
    h("section", { class: "page" }, h("div", { class: "page-head" }, h("h1", {}, "Schedules"), message), body),
  );

  const refresher = new Refresher(load, 2000, 5000);

  async function load(): Promise<void> {
    try {
      const answer = await ctx.request(SchedulesDocument, { first: 50 });
      if (disposed) return;
      schedules = answer.schedules.edges.map((e) => e.node);
      loadError = null;
    } catch (error) {
      if (disposed) return;
      loadError = error;
    }
    render();
  }

  function render(): void {
    if (!listReady(body, schedules, loadError, "schedules", ctx.apiUrl, () => refresher.now(), () =>
      emptyState("No schedules yet.", "Create one with the createSchedule mutation: GraphiQL's Schedule tab has one ready to run."),
    )) return;
    const problem = refreshFailed(loadError);
    fill(
      body,
      problem,
      h(
        "div",
        { class: "panel table-scroll" },
        h(
          "table",
          { class: "grid", "data-testid": "schedule-table" },
          h("caption", { class: "visually-hidden" }, "Schedules"),
          tableHead("Name", "Runs", "Task", "State", "Next run", "Last run", "Latest runs", num("Skipped"), action("Actions")),
          h("tbody", {}, ...schedules.map(row)),
        ),
      ),
    );
  }

  function row(schedule: Schedule): HTMLElement {
    const toggle = h(
      "button",
      { type: "button", "data-testid": schedule.paused ? "resume-schedule" : "pause-schedule", "aria-label": `${schedule.paused ? "Resume" : "Pause"} ${schedule.name}` },
      schedule.paused ? "Resume" : "Pause",
    );
    const trigger = h("button", { type: "button", "data-testid": "trigger-schedule", "aria-label": `Run now: ${schedule.name}` }, "Run now");
    toggle.addEventListener("click", () => {
      toggle.disabled = true;
      const action = schedule.paused
        ? ctx.request(ResumeScheduleMutation, { id: schedule.id }).then((d) => d.resumeSchedule)
        : ctx.request(PauseScheduleMutation, { id: schedule.id }).then((d) => d.pauseSchedule);
      action
        .then((changed) => {
          Object.assign(schedule, changed);
          message.textContent = `${changed.name} ${changed.paused ? "paused" : "resumed"}.`;
          render();
        })
        .catch((e: unknown) => {
          message.textContent = actionError(e);
          toggle.disabled = false;
        });
    });
    trigger.addEventListener("click", () => {
      trigger.disabled = true;
      ctx
        .request(TriggerScheduleMutation, { id: schedule.id })
        .then((d) => {
          fill(message, `${schedule.name} ran: task `, h("a", { href: `#/task/${d.triggerSchedule.id}`, "data-testid": "triggered-task" }, shortId(d.triggerSchedule.id)), ".");
          refresher.request();
        })
        .catch((e: unknown) => (message.textContent = actionError(e)))
        .finally(() => (trigger.disabled = false));
    });
    const type = typeof schedule.task === "object" && schedule.task ? Object.keys(schedule.task)[0] ?? "?" : "?";
    const runs = schedule.tasks.edges.map((e) => e.node).reverse();
    return h(
      "tr",
      { "data-testid": "schedule-row", "data-schedule-id": schedule.id, "data-paused": String(schedule.paused) },
      h("th", { scope: "row" }, schedule.name),
      h("td", {}, schedule.cron ? h("code", {}, `${schedule.cron}`, h("span", { class: "muted" }, ` ${schedule.timezone}`)) : every(schedule.everySeconds)),
      h("td", {}, h("code", {}, type)),
      h(
        "td",
        {},
        schedule.paused
          ? h("span", { class: "pill pill-paused", "data-testid": "schedule-state" }, "paused")
          : h("span", { class: "pill pill-fresh", "data-testid": "schedule-state" }, "active"),
        byActor(schedule.changedBy ?? schedule.createdBy, schedule.changedAt ?? schedule.createdAt),
      ),
      h("td", {}, schedule.paused ? "—" : time(schedule.nextRunAt)),
      h("td", {}, time(schedule.lastRunAt)),
      h(
        "td",
        { class: "runs" },
        runs.length === 0
          ? h("span", { class: "muted" }, "none yet")
          : h(
              "span",
              { class: "run-dots" },
              ...runs.map((t) =>
                h("a", {
                  href: `#/task/${t.id}`,
                  class: `run-dot dot-${t.status.toLowerCase()}`,
                  title: `${t.status.toLowerCase()}, ${new Date(t.createdAt).toLocaleString()}`,
                  "aria-label": `run of ${new Date(t.createdAt).toLocaleString()}: ${t.status.toLowerCase()}`,
                }),
              ),
            ),
      ),
      h("td", { class: "num" }, String(schedule.skippedTicks)),
      h("td", { class: "actions" }, toggle, trigger),
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

function every(seconds: number | null | undefined): string {
  if (seconds == null) return "—";
  if (seconds % 86400 === 0) return seconds === 86400 ? "every day" : `every ${seconds / 86400} days`;
  if (seconds % 3600 === 0) return seconds === 3600 ? "every hour" : `every ${seconds / 3600} h`;
  if (seconds % 60 === 0) return seconds === 60 ? "every minute" : `every ${seconds / 60} min`;
  return `every ${formatSeconds(seconds)}`;
}
