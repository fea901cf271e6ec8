// herald-realtime (herald-client.js): Herald's client for browsers and Node 20+, with no runtime dependencies.
//
// It keeps one logical subscription alive across everything a network does to it:
// - reconnects with exponential backoff and full jitter, and stops on a definitive refusal;
// - pings every 30 s and treats a missing pong within 10 s as a dead connection;
// - resubscribes every room with `since` = the last offset it delivered, recovers the
//   user's inbox, drops duplicates by offset and delivers each channel in offset order;
// - falls back to Server-Sent Events, then long polling, when WebSockets keep failing
//   while plain HTTP gets through, and goes back to WebSockets when it can;
// - asks `getToken()` again before the token expires and on every reconnect.
// The protocol it speaks is docs/protocol.md in Herald's repository; README.md shows it in
// ten lines.
//
// This file is the public client and the one module users import; its parts are in src/:
// errors.js (close codes, HeraldError), cursor.js (positions and cursors), sequencer.js
// (in order, once), websocket.js (the WebSocket transport), readers.js (SSE, long polling).

import { CloseCode, HeraldError } from "./src/errors.js";
import { decodeCursor, encodeCursor } from "./src/cursor.js";
import { fallbackReaders } from "./src/readers.js";
import { Sequencer } from "./src/sequencer.js";
import { webSocketTransport } from "./src/websocket.js";

export { CloseCode, HeraldError, decodeCursor, encodeCursor };

/** What the client does unless told otherwise (ms unless named otherwise). */
export const DEFAULTS = Object.freeze({
  backoffBase: 500,
  backoffCap: 30_000,
  /** A connection that lasts this long resets the backoff. */
  stableAfter: 60_000,
  pingInterval: 30_000,
  pongTimeout: 10_000,
  /** Ask for a new token this long before `exp` (or halfway, for shorter tokens). */
  refreshBefore: 60_000,
  /** Failed WebSocket attempts (while HTTP gets through) before SSE, and SSE before polling. */
  fallbackAfter: 2,
  /** While on a fallback, how often to try WebSockets again. */
  upgradeInterval: 30_000,
  /** A long poll's `wait`, in seconds (at most 25). */
  pollWait: 25,
  /** How long a request (publish, history, subscribe) waits for its answer. */
  requestTimeout: 10_000,
  /** How long a gap in a channel's offsets is waited out before recovering it. */
  gapTimeout: 2_000,
  /** Notifications held per channel while a gap is filled; more triggers a recovery. */
  maxHeld: 1_000,
});

/**
 * Full jitter: a random delay between 0 and min(cap, base × 2^attempt).
 * @param {number} attempt failures so far (0 for the first retry)
 */
export function backoffDelay(attempt, { base = DEFAULTS.backoffBase, cap = DEFAULTS.backoffCap, random = Math.random } = {}) {
  return random() * Math.min(cap, base * 2 ** attempt);
}

/** The claims of a JWT, unverified (the server verifies; the client only reads `exp`, `sub`). */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

/**
 * The client. Events: connecting, connected (once the connection's subscriptions are in
 * place), disconnected, fallback, notification, recovery_failed, presence (a room's join or
 * leave, when the gateway announces them), error.
 */
export class HeraldClient {
  /**
   * @param {object} options
   * @param {string} options.url the WebSocket URL, e.g. ws://127.0.0.1:3001/local
   * @param {string} [options.token] a token, or:
   * @param {() => Promise<string>} [options.getToken] called on every connect and before `exp`
   * @param {string} [options.sseUrl] default: the URL's http(s) form + `/events`
   * @param {string} [options.pollUrl] default: the URL's http(s) form + `/poll`
   * @param {Function} [options.WebSocket] default: globalThis.WebSocket
   * @param {Function} [options.fetch] default: globalThis.fetch
   * @param {object} [options.clock] {setTimeout, clearTimeout, now, random}, for tests
   */
  constructor(options) {
    if (!options?.url) throw new TypeError("HeraldClient needs a url");
    if (!options.token && !options.getToken) throw new TypeError("HeraldClient needs a token or getToken");
    this.options = { ...DEFAULTS, ...options };
    const http = options.url.replace(/^ws/, "http").replace(/\/$/, "");
    this.sseUrl = options.sseUrl ?? `${http}/events`;
    this.pollUrl = options.pollUrl ?? `${http}/poll`;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    const clock = options.clock ?? {};
    this.clock = {
      setTimeout: clock.setTimeout ?? ((f, ms) => setTimeout(f, ms)),
      clearTimeout: clock.clearTimeout ?? ((t) => clearTimeout(t)),
      now: clock.now ?? (() => Date.now()),
      random: clock.random ?? Math.random,
    };
    this.listeners = new Map();
    this.rooms = new Map(); // room -> Set(handler)
    this.sequencer = new Sequencer({
      options: this.options,
      now: () => this.clock.now(),
      after: (ms, f) => this.after(ms, f),
      cancel: (t) => this.cancel(t),
      emit: (note) => this.emitNote(note),
      heal: (key) => this.heal(key),
      recoveryFailed: (detail) => this.emit("recovery_failed", detail),
    });
    this.pending = new Map(); // ref -> {resolve, reject, timer}
    this.waiting = new Set(); // callers of ready(): {resolve, reject, timer}
    this.nextRef = 1;
    this.state = "idle";
    this.transport = null;
    this.attempt = 0;
    this.failures = { websocket: 0, sse: 0 };
    this.timers = new Set();
    this.closed = false;
    this.generation = 0; // bumps whenever the current connection is abandoned
  }

  /** Every channel's state, by key (`room:NAME`, `user:ID`): for tests and debugging. */
  get channels() {
    return this.sequencer.channels;
  }

  // --- events ------------------------------------------------------------------------

  on(event, listener) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(listener);
    return () => this.listeners.get(event)?.delete(listener);
  }

  emit(event, detail) {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        listener(detail);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  setState(state, detail = {}) {
    this.state = state;
    if (state === "connected") this.settleWaiting();
    this.emit(state, { transport: this.transport, ...detail });
  }

  /** Lets every caller of `ready()` go on (or fails them all with `error`). */
  settleWaiting(error) {
    for (const waiter of this.waiting) {
      this.cancel(waiter.timer);
      if (error) waiter.reject(error);
      else waiter.resolve();
    }
    this.waiting.clear();
  }

  // --- the app's API -----------------------------------------------------------------

  /** Starts connecting (also started by the first subscribe). */
  connect() {
    if (this.closed) throw new HeraldError("closed", "the client was closed");
    if (this.state === "idle") this.open();
    return this;
  }

  /** Receives the room's notifications in `handler` until unsubscribed. */
  subscribe(room, handler) {
    let handlers = this.rooms.get(room);
    if (!handlers) {
      handlers = new Set();
      this.rooms.set(room, handlers);
      this.joinRoom(room);
    }
    if (handler) handlers.add(handler);
    this.connect();
    return () => this.unsubscribe(room, handler);
  }

  /** Stops the room's notifications (for `handler`, or every handler). */
  unsubscribe(room, handler) {
    const handlers = this.rooms.get(room);
    if (!handlers) return;
    if (handler) handlers.delete(handler);
    if (handler && handlers.size > 0) return;
    this.rooms.delete(room);
    this.sequencer.forget(`room:${room}`);
    if (this.transport === "websocket" && this.ws?.readyState === 1) {
      this.request({ action: "unsubscribe", room }).catch(() => {});
    } else if (this.transport === "sse" || this.transport === "poll") {
      this.restartReader();
    }
  }

  /**
   * Resolves once the client is connected and every room it subscribed to (and the user's
   * inbox) is in place on that connection; starts connecting if nothing did. Rejects with
   * `timeout` after `timeout` ms (default `requestTimeout`), with `closed` if the client is
   * closed meanwhile, or with `unauthorized`/`forbidden` if the server refuses the token.
   */
  ready({ timeout = this.options.requestTimeout } = {}) {
    if (this.closed) return Promise.reject(this.closedError ?? new HeraldError("closed", "the client was closed"));
    if (this.state === "connected") return Promise.resolve();
    this.connect();
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      waiter.timer = this.after(timeout, () => {
        this.waiting.delete(waiter);
        reject(new HeraldError("timeout", `not connected within ${timeout} ms (state: ${this.state})`));
      });
      this.waiting.add(waiter);
    });
  }

  /** Publishes from the socket: resolves with the `published` answer, rejects with its error code. */
  publish(room, data) {
    return this.requestWhenReady({ action: "publish", room, data });
  }

  /** The room's kept notifications: resolves with the `history` answer. */
  history(room, { limit, since } = {}) {
    return this.requestWhenReady({ action: "history", room, ...(limit ? { limit } : {}), ...(since ? { since } : {}) });
  }

  /** Who is in a room: resolves with the `presence` answer (`count`, up to 100 `members`). */
  presence(room) {
    return this.requestWhenReady({ action: "presence", room });
  }

  /**
   * An app's request: made before the connection is ready, it waits for `ready()` (at most
   * `requestTimeout`), then for its answer. On a fallback transport there is no socket to
   * send it on: it rejects with `not_connected`.
   */
  async requestWhenReady(body) {
    if (this.onFallback()) throw this.notConnected();
    await this.ready();
    if (this.onFallback()) throw this.notConnected();
    return this.request(body);
  }

  onFallback() {
    return this.transport === "sse" || this.transport === "poll";
  }

  notConnected() {
    return new HeraldError("not_connected", `no WebSocket is open (transport: ${this.transport ?? "none"}): publish and history need one`);
  }

  /** Closes for good. */
  close() {
    this.shutDown(new HeraldError("closed", "the client was closed"));
  }

  /** Stops for good; whoever waits for `ready()` gets `error`. */
  shutDown(error) {
    if (this.closed) return;
    this.closed = true;
    this.closedError = error;
    this.abandon();
    for (const t of this.timers) this.clock.clearTimeout(t);
    this.timers.clear();
    this.settleWaiting(error);
    this.transport = null;
    this.setState("disconnected", { code: CloseCode.NORMAL, reason: error.message });
  }

  // --- timers --------------------------------------------------------------------------

  after(ms, f) {
    const t = this.clock.setTimeout(() => {
      this.timers.delete(t);
      f();
    }, ms);
    this.timers.add(t);
    return t;
  }

  cancel(t) {
    if (t == null) return;
    this.clock.clearTimeout(t);
    this.timers.delete(t);
  }

  // --- tokens --------------------------------------------------------------------------

  async currentToken() {
    this.token = this.options.getToken ? await this.options.getToken() : this.options.token;
    this.claims = tokenClaims(this.token);
    this.cancel(this.refreshTimer);
    if (this.options.getToken && this.claims.exp) {
      const left = this.claims.exp * 1000 - this.clock.now();
      const early = Math.min(this.options.refreshBefore, left / 2);
      this.refreshTimer = this.after(Math.max(0, left - early), () => this.refresh());
    }
    return this.token;
  }

  /** A new token before the old one expires: the connection is replaced, losing nothing. */
  async refresh() {
    if (this.closed) return;
    if (this.transport === "websocket" || this.transport === null) {
      this.abandon(CloseCode.REPLACED);
      this.open();
    } else {
      await this.currentToken();
      this.restartReader();
    }
  }

  // --- connecting ------------------------------------------------------------------------

  /** Abandons the current connection or reader, whatever it is. */
  abandon(code = CloseCode.NORMAL) {
    this.generation++;
    this.stopHeartbeat();
    this.cancel(this.stableTimer);
    this.cancel(this.upgradeTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      // Closing a socket that is still connecting makes Node's ws report an error a moment
      // later; with no handler that error would be thrown at the app.
      ws.onerror = () => {};
      try {
        // A dead connection (code 1006) is dropped at once where the implementation can
        // (Node's ws); a browser's close() never waits on the peer for the app.
        if (code === CloseCode.ABNORMAL && typeof ws.terminate === "function") ws.terminate();
        else ws.close(code === CloseCode.ABNORMAL ? undefined : code);
      } catch {
        // already closed
      }
    }
    this.readerAbort?.abort();
    this.readerAbort = null;
    for (const [ref, p] of this.pending) {
      this.cancel(p.timer);
      p.reject(new HeraldError("disconnected", "the connection closed before the answer: the request may or may not have taken effect"));
      this.pending.delete(ref);
    }
  }

  /** Opens the transport the client is on (WebSocket unless it has fallen back). */
  open() {
    if (this.closed) return;
    if (this.transport === "sse" || this.transport === "poll") return this.startReader();
    this.openWebSocket();
  }

  /** A definitive refusal: the token is not accepted. The client stops. */
  refused(status) {
    const error = new HeraldError(status === 401 ? "unauthorized" : "forbidden", `the server refused the token (${status})`, { status });
    this.emit("error", error);
    this.shutDown(error);
  }

  failed(generation, error) {
    if (generation !== this.generation || this.closed) return;
    // A server away or a blocked transport is retried, and `disconnected` says why; only
    // what the app must act on (its getToken failing) is an error.
    if (error.code === "token") this.emit("error", error);
    const retryIn = this.retry();
    this.setState("disconnected", { reason: error.message, retryIn });
  }

  lost(generation, detail) {
    if (generation !== this.generation || this.closed) return;
    this.abandon(detail.code === CloseCode.ABNORMAL ? CloseCode.ABNORMAL : CloseCode.NORMAL);
    const retryIn = this.retry();
    this.setState("disconnected", { ...detail, retryIn });
  }

  retry() {
    const delay = backoffDelay(this.attempt++, { base: this.options.backoffBase, cap: this.options.backoffCap, random: this.clock.random });
    this.after(delay, () => this.open());
    return delay;
  }

  // --- delivery -----------------------------------------------------------------------

  /** A channel's gap did not fill: a WebSocket asks again; a reader skips what history lost. */
  heal(key) {
    if (this.transport === "websocket" && key.startsWith("room:")) return this.joinRoom(key.slice(5));
    if (this.transport === "websocket") return this.recoverInbox();
    this.sequencer.skipGap(key);
  }

  emitNote(note) {
    if (note.room != null) for (const handler of this.rooms.get(note.room) ?? []) handler(note);
    this.emit("notification", note);
  }
}

Object.assign(HeraldClient.prototype, webSocketTransport, fallbackReaders);
