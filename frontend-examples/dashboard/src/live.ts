// The live feed: one `tasksUpdates` subscription for the whole page, and the store of the
// tasks the page shows.
//
// The store holds what the page knows of each task it has shown. A snapshot (a query's
// or a mutation's answer) only ever creates an entry; from then on events change it. The
// stream is gap-free and in commit order, so replaying events on top of a snapshot
// converges to the truth even when the snapshot already reflected some of them. Events
// of a task the store does not know wait in `pending` until a view's next query brings
// the task (then they are replayed), or are dropped once that query came back without it.
import type { Api } from "./api";
import type { ArtifactFieldsFragment, EventFieldsFragment, TaskRowFragment, TaskStatus } from "./gql/graphql";
import { TasksUpdatesSubscription } from "./operations";

export type TaskEvent = EventFieldsFragment;
export type LiveTask = TaskRowFragment & { eventsSeen: number; artifacts?: ArtifactFieldsFragment[] };
type Listener = (event: TaskEvent) => void;

export const TERMINAL: ReadonlySet<TaskStatus> = new Set<TaskStatus>(["SUCCEEDED", "FAILED", "CANCELLED"]);
const MAX_TASKS = 5000; // store entries kept (the oldest go first; they are fetched again)
const MAX_PENDING = 2000; // unknown tasks whose events are kept for the next query
const MAX_PENDING_EVENTS = 500; // of one of them (a chatty task): then its snapshot will do

export class Live {
  readonly tasks = new Map<string, LiveTask>();
  private readonly pending = new Map<string, { seq: number; events: TaskEvent[] }>();
  private readonly listeners = new Set<Listener>();
  private stop: (() => void) | null = null;
  private stopped = false;
  cursor: string | null = null; // of the last tasksUpdates event
  seq = 0; // events received so far: a query sent at seq N has seen events up to N

  constructor(
    private readonly api: Api,
    private readonly onFatal: (error: Error) => void,
  ) {}

  start(): void {
    this.stop = this.api.subscribe(
      TasksUpdatesSubscription,
      { after: this.cursor },
      (data) => data.tasksUpdates.cursor,
      {
        next: (data) => this.receive(data.tasksUpdates),
        error: (error) => {
          if (error.code === "UNAUTHENTICATED") {
            this.onFatal(error); // a revoked key: retrying will not help
            return;
          }
          // e.g. LIMIT_EXCEEDED when the page fell too far behind: resume from our cursor.
          console.warn(`tasksUpdates ended (${error.message}); resuming from the last cursor`);
          setTimeout(() => !this.stopped && this.start(), 1000);
        },
      },
    );
  }

  dispose(): void {
    this.stopped = true;
    this.stop?.();
    this.listeners.clear();
  }

  /** Call `listener` with every event (after the store has applied it). */
  listen(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private receive(event: TaskEvent): void {
    this.seq += 1;
    this.cursor = event.cursor;
    document.body.dataset.feedCursor = event.cursor;
    const task = this.tasks.get(event.taskId);
    if (task) apply(task, event);
    else {
      let waiting = this.pending.get(event.taskId);
      if (waiting === undefined) {
        waiting = { seq: this.seq, events: [] };
        this.pending.set(event.taskId, waiting);
        if (this.pending.size > MAX_PENDING) {
          this.pending.delete(this.pending.keys().next().value as string);
        }
      }
      waiting.seq = this.seq;
      waiting.events.push(event);
      if (waiting.events.length > MAX_PENDING_EVENTS) waiting.events.shift();
    }
    for (const listener of this.listeners) listener(event);
  }

  /** The entry of a task from a snapshot: made unless there is one (events kept it current). */
  adopt(snapshot: TaskRowFragment): LiveTask {
    let task = this.tasks.get(snapshot.id);
    if (task) {
      // Fields no event carries (attempts, times) may be newer in the snapshot.
      task.attempts = Math.max(task.attempts, snapshot.attempts);
      task.startedAt = snapshot.startedAt ?? task.startedAt;
      task.finishedAt = TERMINAL.has(task.status) ? (snapshot.finishedAt ?? task.finishedAt) : null;
      this.tasks.delete(snapshot.id); // most recently used last
      this.tasks.set(snapshot.id, task);
      return task;
    }
    task = { ...snapshot, eventsSeen: 0 };
    this.tasks.set(task.id, task);
    const waiting = this.pending.get(task.id);
    this.pending.delete(task.id);
    for (const event of waiting?.events ?? []) apply(task, event);
    while (this.tasks.size > MAX_TASKS) this.tasks.delete(this.tasks.keys().next().value as string);
    return task;
  }

  /** A query sent at `seq` came back: unknown tasks' events up to it are not wanted. */
  settled(seq: number): void {
    for (const [id, waiting] of this.pending) if (waiting.seq <= seq) this.pending.delete(id);
  }
}

export function apply(task: LiveTask, event: TaskEvent): void {
  task.eventsSeen += 1;
  switch (event.__typename) {
    case "StatusChanged":
      task.status = event.status;
      task.error = event.error ?? null;
      if (event.status === "RUNNING") task.startedAt = event.at;
      if (TERMINAL.has(event.status)) task.finishedAt = event.at;
      else task.finishedAt = null;
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
      if (task.artifacts) addArtifacts(task, [event.artifact]);
      break;
    default:
      break;
  }
}

export function addArtifacts(task: { artifacts?: ArtifactFieldsFragment[] }, artifacts: ArtifactFieldsFragment[]): void {
  const byId = new Map((task.artifacts ?? []).map((a) => [a.id, a]));
  for (const artifact of artifacts) byId.set(artifact.id, artifact); // newer links win
  task.artifacts = [...byId.values()];
}

/**
 * Whether an event is older than what a snapshot already showed (its last change at one
 * of `known`): a replayed event that would step the page back in time. Events and rows
 * take their times from the database's clock; 1 ms of slack covers rounding.
 */
export function olderThan(eventAt: string, ...known: (string | null | undefined)[]): boolean {
  const latest = Math.max(0, ...known.map((t) => (t ? Date.parse(t) : 0)));
  return Date.parse(eventAt) + 1 < latest;
}
