// Talking to the api: queries and mutations over HTTP (plain fetch), subscriptions over
// one graphql-transport-ws websocket (graphql-ws). The API key travels as
// `Authorization: Bearer <key>`: a header on HTTP, the connection_init payload on the socket.
import { createClient, type Client } from "graphql-ws";
import type { TypedDocumentString } from "./gql/graphql";

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed" | "refused";

export class ApiError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

const FORBIDDEN = 4403; // the api closes the socket with it for a missing or revoked key

interface GraphQLErrorShape {
  message: string;
  extensions?: { code?: string };
}

/** The first error of a GraphQL response (or a websocket close) as an ApiError. */
export function toApiError(reason: unknown): ApiError {
  if (reason instanceof ApiError) return reason;
  if (Array.isArray(reason) && reason.length > 0) {
    const first = reason[0] as GraphQLErrorShape;
    return new ApiError(first.message, first.extensions?.code);
  }
  if (reason instanceof CloseEvent) {
    const text = `websocket closed (${reason.code}${reason.reason ? `: ${reason.reason}` : ""})`;
    return new ApiError(text, reason.code === FORBIDDEN ? "UNAUTHENTICATED" : undefined);
  }
  return new ApiError(reason instanceof Error ? reason.message : String(reason));
}

export interface Sink<R> {
  next(data: R): void;
  error?(error: ApiError): void;
  complete?(): void;
}

export class Api {
  private readonly ws: Client;

  constructor(
    readonly baseUrl: string,
    private readonly key: string,
    onState: (state: ConnectionState, detail?: string) => void,
  ) {
    const wsUrl = `${baseUrl.replace(/^http/, "ws")}/graphql`;
    this.ws = createClient({
      url: wsUrl,
      connectionParams: () => ({ Authorization: `Bearer ${this.key}` }),
      // Reconnect for as long as the page is open, quickly at first: 0.25 s, 0.5 s, 1 s,
      // 2 s, then every 3 s. A refused key (4403) is final.
      retryAttempts: Infinity,
      shouldRetry: (event) => !(event instanceof CloseEvent && event.code === FORBIDDEN),
      retryWait: (retries) =>
        new Promise((resolve) =>
          setTimeout(resolve, Math.min(250 * 2 ** retries, 3000) + Math.random() * 200),
        ),
      keepAlive: 10_000,
      on: {
        connecting: (isRetry) => onState(isRetry ? "reconnecting" : "connecting"),
        connected: () => onState("connected"),
        closed: (event) => {
          if (event instanceof CloseEvent && event.code === FORBIDDEN) onState("refused", event.reason);
          else onState("closed");
        },
      },
    });
  }

  /** One query or mutation over HTTP; throws ApiError with the error's `extensions.code`. */
  async request<R, V>(document: TypedDocumentString<R, V>, variables: V): Promise<R> {
    let response: Response;
    try {
      response = await fetch(`${this.baseUrl}/graphql`, {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          Authorization: `Bearer ${this.key}`,
        },
        body: JSON.stringify({ query: document.toString(), variables }),
      });
    } catch (error) {
      throw new ApiError(`cannot reach ${this.baseUrl}: ${String(error)}`, "UNREACHABLE");
    }
    let body: { data?: R | null; errors?: GraphQLErrorShape[] };
    try {
      body = (await response.json()) as typeof body;
    } catch {
      throw new ApiError(`${response.status} ${response.statusText} from ${this.baseUrl}/graphql`);
    }
    if (body.errors?.length) throw toApiError(body.errors);
    if (body.data == null) throw new ApiError(`no data in the answer (${response.status})`);
    return body.data;
  }

  /**
   * A subscription that survives reconnects without a gap. graphql-ws re-sends a
   * subscription's payload after every reconnect; we keep its `after` variable at the
   * cursor of the last event received, so the server resumes right after it.
   * Returns a function that ends the subscription.
   */
  subscribe<R, V extends { after?: string | null }>(
    document: TypedDocumentString<R, V>,
    variables: V,
    cursorOf: (data: R) => string,
    sink: Sink<R>,
  ): () => void {
    const payload = { query: document.toString(), variables: { ...variables } };
    return this.ws.subscribe<R>(payload, {
      next: (result) => {
        if (result.errors?.length) {
          sink.error?.(toApiError(result.errors));
          return;
        }
        if (result.data == null) return;
        payload.variables.after = cursorOf(result.data);
        sink.next(result.data);
      },
      error: (error) => sink.error?.(toApiError(error)),
      complete: () => sink.complete?.(),
    });
  }

  /** Close the websocket; every subscription ends. */
  async close(): Promise<void> {
    await this.ws.dispose();
  }
}
