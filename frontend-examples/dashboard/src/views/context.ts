// What a view gets from the shell, and what it gives back (a function that unmounts it).
import type { Api } from "../api";
import type { TaskTypesQuery, TypedDocumentString } from "../gql/graphql";
import type { Live } from "../live";

export interface Ctx {
  api: Api;
  live: Live;
  apiUrl: string;
  /** The route's argument: #/task/ID → ID. */
  arg: string | null;
  /** The route's query: #/tasks?status=FAILED. */
  params: URLSearchParams;
  /** A query or mutation; a refused key also ends the session (the shell says what to do). */
  request<R, V>(document: TypedDocumentString<R, V>, variables: V): Promise<R>;
  /** The task types (asked once per connection). */
  taskTypes(): Promise<TaskTypesQuery["taskTypes"]>;
  /** Keep the view's state in the address (replaces the history entry). */
  setParams(params: URLSearchParams): void;
  /** Failures were retried: the nav's count changes. */
  failuresChanged(): void;
}

export type Mount = (root: HTMLElement, ctx: Ctx) => () => void;
