// Type declarations for herald-realtime (herald-client.js).

/** A position in a room's or user's history. */
export interface Position {
  offset: number;
  epoch: string;
}

/** A notification, exactly as the server sent it. */
export interface Notification<T = unknown> {
  type: "notification";
  id: string;
  room?: string;
  user?: string;
  offset?: number;
  epoch?: string;
  data: T;
  ts: number;
}

/** Timers and randomness, injectable for tests. */
export interface Clock {
  setTimeout(f: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
  random(): number;
}

export interface Options {
  /** The WebSocket URL, e.g. `ws://127.0.0.1:3001/local`. */
  url: string;
  /** A token; or `getToken`, called on every connect and before `exp`. */
  token?: string;
  getToken?: () => Promise<string>;
  /** SSE endpoint (default: the URL's http(s) form + `/events`; on AWS the `StreamUrl`). */
  sseUrl?: string;
  /** Long polling endpoint (default: the URL's http(s) form + `/poll`; on AWS the `PollUrl`). */
  pollUrl?: string;
  /**
   * A WebSocket implementation (default: `globalThis.WebSocket`). Browsers and Node 22+ have
   * one built in; in Node 20 pass the `ws` package's: `import WebSocket from "ws"`.
   */
  WebSocket?: unknown;
  fetch?: typeof globalThis.fetch;
  clock?: Partial<Clock>;
  backoffBase?: number;
  backoffCap?: number;
  stableAfter?: number;
  pingInterval?: number;
  pongTimeout?: number;
  refreshBefore?: number;
  fallbackAfter?: number;
  upgradeInterval?: number;
  pollWait?: number;
  requestTimeout?: number;
  gapTimeout?: number;
  maxHeld?: number;
}

export type Transport = "websocket" | "sse" | "poll";

export interface StateEvent {
  transport: Transport | null;
  code?: number;
  reason?: string;
  /** On `disconnected`: how long until the next attempt, in ms. */
  retryIn?: number;
}

export interface RecoveryFailed {
  room?: string;
  user?: string;
  since: Position;
  position: Position | null;
}

export interface Events {
  connecting: StateEvent;
  /** The connection is up and its subscriptions are in place. */
  connected: StateEvent;
  disconnected: StateEvent;
  fallback: { transport: Transport };
  notification: Notification;
  recovery_failed: RecoveryFailed;
  /** A member joined or left a subscribed room (the gateway's presence events, when on). */
  presence: PresenceEvent;
  error: HeraldError;
}

/** A room's join or leave, as the gateway announces it with `HERALD_PRESENCE_EVENTS=1`. */
export interface PresenceEvent {
  type: "join" | "leave";
  room: string;
  user: string;
  connectionId: string;
}

export const DEFAULTS: Readonly<Required<Omit<Options, "url" | "token" | "getToken" | "sseUrl" | "pollUrl" | "WebSocket" | "fetch" | "clock">>>;

/** Full jitter: a random delay in [0, min(cap, base × 2^attempt)] ms. */
export function backoffDelay(attempt: number, options?: { base?: number; cap?: number; random?: () => number }): number;

/** WebSocket close codes the client sends or reads, by name. */
export const CloseCode: Readonly<{ NORMAL: 1000; ABNORMAL: 1006; REPLACED: 4000 }>;

/** An error with a contract code (`forbidden`, `rate_limited`, `too_large`, ...) or the client's own
 * (`not_connected`, `disconnected`, `timeout`, `closed`, `unauthorized`, `unreachable`, `blocked`). */
export class HeraldError extends Error {
  code: string;
  status?: number;
  room?: string;
}

export function tokenClaims(token: string): Record<string, unknown>;
export function encodeCursor(positions: Iterable<[string, Position | null]>): string;
export function decodeCursor(cursor: string): Map<string, Position>;

export class HeraldClient {
  constructor(options: Options);
  readonly state: "idle" | "connecting" | "connected" | "disconnected";
  readonly transport: Transport | null;
  on<E extends keyof Events>(event: E, listener: (detail: Events[E]) => void): () => void;
  /** Starts connecting (the first `subscribe`, `ready`, `publish` or `history` does too). */
  connect(): this;
  /**
   * Resolves once connected with every subscription (and the inbox) in place; rejects with
   * `timeout` after `timeout` ms (default `requestTimeout`), `closed`, or a refused token's
   * `unauthorized` / `forbidden`.
   */
  ready(options?: { timeout?: number }): Promise<void>;
  subscribe<T = unknown>(room: string, handler?: (notification: Notification<T>) => void): () => void;
  unsubscribe(room: string, handler?: (notification: Notification) => void): void;
  /**
   * Waits for `ready()` if the client is not yet connected, then publishes from the socket.
   * Resolves with `{type:"published", room, id, offset?, epoch?}`; rejects with a HeraldError.
   */
  publish(room: string, data: unknown): Promise<{ type: "published"; room: string; id: string; offset?: number; epoch?: string }>;
  history(room: string, options?: { limit?: number; since?: Position }): Promise<{ type: "history"; room: string; notifications: Notification[]; offset?: number; epoch?: string; truncated?: boolean }>;
  /** Who is in a room (callers allowed in it only): how many members, and up to 100 of them. */
  presence(room: string): Promise<{ type: "presence"; room: string; count: number; members: { user: string; connectionId: string }[] }>;
  close(): void;
}
