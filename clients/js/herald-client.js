// herald-client: Herald's client for browsers and Node 20+, with no runtime dependencies.
//
// It keeps one logical subscription alive across everything a network does to it:
// - reconnects with exponential backoff and full jitter, and stops on a definitive refusal;
// - pings every 30 s and treats a missing pong within 10 s as a dead connection;
// - resubscribes every room with `since` = the last offset it delivered, recovers the
//   user's inbox, drops duplicates by offset and delivers each channel in offset order;
// - falls back to Server-Sent Events, then long polling, when WebSockets keep failing
//   while plain HTTP gets through, and goes back to WebSockets when it can;
// - asks `getToken()` again before the token expires and on every reconnect.
// The contract it speaks is `shared/CONTRACT.md`; README.md shows it in ten lines.

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

/** Close code the client uses when it replaces its own connection (new token, upgrade). */
const REPLACED = 4000;

/**
 * Full jitter: a random delay between 0 and min(cap, base × 2^attempt).
 * @param {number} attempt failures so far (0 for the first retry)
 */
export function backoffDelay(attempt, { base = DEFAULTS.backoffBase, cap = DEFAULTS.backoffCap, random = Math.random } = {}) {
  return random() * Math.min(cap, base * 2 ** attempt);
}

/** An error with a contract code (`forbidden`, `rate_limited`, ... or the client's own). */
export class HeraldError extends Error {
  constructor(code, message, details = {}) {
    super(message ?? code);
    this.name = "HeraldError";
    this.code = code;
    Object.assign(this, details);
  }
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
 * A cursor for the fallback transports from the client's positions: the same encoding the
 * server gives its SSE ids and poll cursors (base64url of {"room:NAME":[offset,"epoch"]}).
 */
export function encodeCursor(positions) {
  const pairs = {};
  for (const [key, p] of positions) if (p) pairs[key] = [p.offset, p.epoch];
  const bytes = new TextEncoder().encode(JSON.stringify(pairs));
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The positions a server cursor names. */
export function decodeCursor(cursor) {
  const text = cursor.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(text.padEnd(text.length + ((4 - (text.length % 4)) % 4), "="));
  const pairs = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
  return new Map(Object.entries(pairs).map(([key, [offset, epoch]]) => [key, { offset, epoch }]));
}

/** The key of the channel a notification belongs to, as cursors name them. */
const channelOf = (note) => (note.room != null ? `room:${note.room}` : note.user != null ? `user:${note.user}` : null);

/** The client. Events: connecting, connected, disconnected, fallback, notification, recovery_failed, error. */
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
    this.channels = new Map(); // channel key -> {pos, holding, held, gap, gapTimer}
    this.pending = new Map(); // ref -> {resolve, reject, timer}
    this.nextRef = 1;
    this.state = "idle";
    this.transport = null;
    this.attempt = 0;
    this.failures = { websocket: 0, sse: 0 };
    this.timers = new Set();
    this.closed = false;
    this.generation = 0; // bumps whenever the current connection is abandoned
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
    this.emit(state, { transport: this.transport, ...detail });
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
    this.channels.delete(`room:${room}`);
    if (this.transport === "websocket" && this.ws?.readyState === 1) {
      this.request({ action: "unsubscribe", room }).catch(() => {});
    } else if (this.transport === "sse" || this.transport === "poll") {
      this.restartReader();
    }
  }

  /** Publishes from the socket: resolves with the `published` answer, rejects with its error code. */
  publish(room, data) {
    return this.request({ action: "publish", room, data });
  }

  /** The room's kept notifications: resolves with the `history` answer. */
  history(room, { limit, since } = {}) {
    return this.request({ action: "history", room, ...(limit ? { limit } : {}), ...(since ? { since } : {}) });
  }

  /** Closes for good. */
  close() {
    this.closed = true;
    this.abandon();
    for (const t of this.timers) this.clock.clearTimeout(t);
    this.timers.clear();
    this.transport = null;
    this.setState("disconnected", { code: 1000, reason: "closed by the app" });
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
      this.abandon(REPLACED);
      this.open();
    } else {
      await this.currentToken();
      this.restartReader();
    }
  }

  // --- connecting ------------------------------------------------------------------------

  /** Abandons the current connection or reader, whatever it is. */
  abandon(code = 1000) {
    this.generation++;
    this.stopHeartbeat();
    this.cancel(this.stableTimer);
    this.cancel(this.upgradeTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        // A dead connection (code 1006) is dropped at once where the implementation can
        // (Node's ws); a browser's close() never waits on the peer for the app.
        if (code === 1006 && typeof ws.terminate === "function") ws.terminate();
        else ws.close(code === 1006 ? undefined : code);
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

  async openWebSocket({ upgrade = false } = {}) {
    const generation = upgrade ? this.generation : ++this.generation;
    if (!upgrade) {
      this.transport = "websocket";
      this.setState("connecting");
    }
    let token;
    try {
      token = await this.currentToken();
    } catch (e) {
      return this.failed(generation, new HeraldError("token", `getToken failed: ${e.message}`));
    }
    if (generation !== this.generation || this.closed) return;
    const url = `${this.options.url}${this.options.url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (e) {
      return this.wsFailed(generation, e, upgrade);
    }
    let opened = false;
    ws.onopen = () => {
      if (generation !== this.generation || this.closed) return ws.close(1000);
      opened = true;
      if (upgrade) {
        // A WebSocket got through again: leave the fallback for it.
        this.abandon(REPLACED);
        this.emit("fallback", { transport: "websocket" });
      }
      this.adoptWebSocket(ws, this.generation);
    };
    ws.onerror = () => {};
    ws.onclose = (event) => {
      if (opened) return;
      if (upgrade) return this.scheduleUpgrade();
      this.wsFailed(generation, event);
    };
    if (!upgrade) this.ws = ws;
  }

  adoptWebSocket(ws, generation) {
    this.ws = ws;
    this.transport = "websocket";
    this.failures.websocket = 0;
    this.failures.sse = 0;
    ws.onmessage = (event) => this.onFrame(generation, event.data);
    ws.onclose = (event) => {
      if (generation !== this.generation) return;
      this.lost(generation, { code: event.code, reason: event.reason });
    };
    ws.onerror = () => {};
    this.stableTimer = this.after(this.options.stableAfter, () => (this.attempt = 0));
    this.startHeartbeat(generation);
    this.setState("connected");
    for (const room of this.rooms.keys()) this.joinRoom(room);
    this.recoverInbox();
  }

  /** A WebSocket attempt failed before it opened: refused, blocked, or the server is away. */
  async wsFailed(generation, event) {
    if (generation !== this.generation || this.closed) return;
    this.ws = null;
    const probe = await this.probe();
    if (generation !== this.generation || this.closed) return;
    if (probe === 401 || probe === 403) {
      return this.refused(probe);
    }
    if (probe === 200) {
      // Plain HTTP gets through where the upgrade did not: a proxy, most likely.
      this.failures.websocket++;
      if (this.failures.websocket >= this.options.fallbackAfter) {
        return this.fallBack("sse");
      }
    }
    this.failed(generation, new HeraldError("unreachable", `the WebSocket did not open (${event?.code ?? "error"})`));
  }

  /** What plain HTTP answers with the token (a zero-wait poll): its status, or 0. */
  async probe() {
    if (!this.fetch) return 0;
    try {
      const answer = await this.fetch(`${this.pollUrl}?wait=0`, { headers: { authorization: `Bearer ${this.token}` } });
      await answer.body?.cancel?.();
      return answer.status;
    } catch {
      return 0;
    }
  }

  /** A definitive refusal: the token is not accepted. The client stops. */
  refused(status) {
    this.emit("error", new HeraldError(status === 401 ? "unauthorized" : "forbidden", `the server refused the token (${status})`, { status }));
    this.close();
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
    this.abandon(detail.code === 1006 ? 1006 : 1000);
    const retryIn = this.retry();
    this.setState("disconnected", { ...detail, retryIn });
  }

  retry() {
    const delay = backoffDelay(this.attempt++, { base: this.options.backoffBase, cap: this.options.backoffCap, random: this.clock.random });
    this.after(delay, () => this.open());
    return delay;
  }

  // --- heartbeat ---------------------------------------------------------------------------

  startHeartbeat(generation) {
    this.stopHeartbeat();
    const beat = () => {
      this.pingTimer = this.after(this.options.pingInterval, () => {
        if (generation !== this.generation) return;
        this.request({ action: "ping" }, this.options.pongTimeout).then(
          () => beat(),
          () => {
            // No pong in time: the connection is dead even if no close ever arrives.
            if (generation === this.generation) this.lost(generation, { code: 1006, reason: "no pong" });
          },
        );
      });
    };
    beat();
  }

  stopHeartbeat() {
    this.cancel(this.pingTimer);
  }

  // --- requests ------------------------------------------------------------------------------

  request(body, timeout = this.options.requestTimeout) {
    if (this.transport !== "websocket" || this.ws?.readyState !== 1) {
      return Promise.reject(new HeraldError("not_connected", `no WebSocket is open (transport: ${this.transport ?? "none"})`));
    }
    const ref = String(this.nextRef++);
    return new Promise((resolve, reject) => {
      const timer = this.after(timeout, () => {
        this.pending.delete(ref);
        reject(new HeraldError("timeout", `no answer to ${body.action} within ${timeout} ms: it may or may not have taken effect`));
      });
      this.pending.set(ref, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...body, ref }));
    });
  }

  onFrame(generation, data) {
    if (generation !== this.generation) return;
    let frame;
    try {
      frame = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch {
      return;
    }
    if (frame.type === "notification") return this.deliver(frame);
    const waiting = frame.ref != null && this.pending.get(frame.ref);
    if (waiting) {
      this.pending.delete(frame.ref);
      this.cancel(waiting.timer);
      if (frame.type === "error") waiting.reject(new HeraldError(frame.code, frame.message));
      else waiting.resolve(frame);
    } else if (frame.type === "error") {
      this.emit("error", new HeraldError(frame.code, frame.message));
    }
  }

  // --- channels: subscribe, recover, deliver in order, once ----------------------------

  channel(key) {
    let ch = this.channels.get(key);
    if (!ch) {
      ch = { pos: null, holding: false, held: [], gap: new Map(), gapTimer: null };
      this.channels.set(key, ch);
    }
    return ch;
  }

  /** Subscribes a room on the open WebSocket, recovering from its last delivered offset. */
  joinRoom(room) {
    if (this.transport === "sse" || this.transport === "poll") return this.restartReader();
    if (this.ws?.readyState !== 1) return;
    const key = `room:${room}`;
    const ch = this.channel(key);
    const since = ch.pos;
    ch.holding = true; // notifications before the answer wait for it
    this.request({ action: "subscribe", room, ...(since ? { since } : {}) }).then(
      (reply) => this.settle(key, since, reply, { room }),
      (error) => {
        ch.holding = false;
        if (error.code === "disconnected") return; // the next connection subscribes again
        this.emit("error", Object.assign(error, { room }));
        if (error.code === "forbidden" || error.code === "bad_request") this.rooms.delete(room);
      },
    );
  }

  /** Recovers the user's inbox from its last delivered offset. */
  recoverInbox() {
    const user = this.claims?.sub;
    if (user == null) return;
    const key = `user:${user}`;
    const since = this.channels.get(key)?.pos;
    if (!since) return;
    const ch = this.channel(key);
    ch.holding = true;
    this.request({ action: "recover", since }).then(
      (reply) => this.settle(key, since, reply, { user }),
      () => (ch.holding = false),
    );
  }

  /** A subscribe or recover answered: where the channel now stands. */
  settle(key, since, reply, what) {
    const ch = this.channel(key);
    ch.holding = false;
    const held = ch.held.sort((a, b) => (a.offset ?? 0) - (b.offset ?? 0));
    ch.held = [];
    const position = reply.offset != null ? { offset: reply.offset, epoch: reply.epoch } : null;
    if (since && reply.recovered) {
      // The missed notifications follow the answer, in order; what came first waits its turn.
      for (const note of held) this.sequence(key, ch, note);
      return;
    }
    if (since && reply.recovered === false) {
      ch.gap.clear();
      this.emit("recovery_failed", { ...what, since, position });
    }
    // From now: what arrived before the answer was published after the join, so it is new;
    // so is anything at or below the answer's offset that arrives a little after it (its
    // fan-out raced the answer), once each.
    ch.pos = position;
    ch.late = position ? { upTo: position.offset, epoch: position.epoch, until: this.clock.now() + this.options.gapTimeout, seen: new Set() } : null;
    for (const note of held) this.emitNote(note);
    for (const note of held) if (note.offset != null && note.offset <= (ch.late?.upTo ?? 0)) ch.late.seen.add(note.offset);
    const last = held.at(-1);
    if (last?.offset != null && (!ch.pos || last.epoch !== ch.pos.epoch || last.offset > ch.pos.offset)) {
      ch.pos = { offset: last.offset, epoch: last.epoch };
    }
  }

  /** A notification at or below a fresh subscribe's offset, arriving just after its answer. */
  lateArrival(ch, note) {
    const late = ch.late;
    if (!late || note.epoch !== late.epoch || note.offset > late.upTo || this.clock.now() > late.until) return false;
    if (late.seen.has(note.offset)) return false;
    late.seen.add(note.offset);
    return true;
  }

  /** One notification from any transport. */
  deliver(note) {
    const key = channelOf(note);
    if (key == null || note.offset == null) return this.emitNote(note);
    const ch = this.channel(key);
    if (ch.holding) return void ch.held.push(note);
    this.sequence(key, ch, note);
  }

  /** Delivers in offset order, each once; waits out a gap, then recovers it. */
  sequence(key, ch, note) {
    const pos = ch.pos;
    if (!pos || note.epoch !== pos.epoch) {
      ch.pos = { offset: note.offset, epoch: note.epoch };
      ch.gap.clear();
      this.emitNote(note);
      return this.drain(key, ch);
    }
    if (note.offset <= pos.offset) {
      if (this.lateArrival(ch, note)) this.emitNote(note);
      return; // had it
    }
    if (note.offset === pos.offset + 1) {
      pos.offset = note.offset;
      this.emitNote(note);
      return this.drain(key, ch);
    }
    ch.gap.set(note.offset, note);
    if (ch.gap.size > this.options.maxHeld) return this.healGap(key, ch);
    if (ch.gapTimer == null) ch.gapTimer = this.after(this.options.gapTimeout, () => this.healGap(key, ch));
  }

  drain(key, ch) {
    for (let next = ch.gap.get(ch.pos.offset + 1); next; next = ch.gap.get(ch.pos.offset + 1)) {
      ch.gap.delete(next.offset);
      ch.pos.offset = next.offset;
      this.emitNote(next);
    }
    for (const offset of ch.gap.keys()) if (offset <= ch.pos.offset) ch.gap.delete(offset);
    if (ch.gap.size === 0) {
      this.cancel(ch.gapTimer);
      ch.gapTimer = null;
    }
  }

  /** A gap that did not fill: ask the server for what is missing (or skip it if none can). */
  healGap(key, ch) {
    this.cancel(ch.gapTimer);
    ch.gapTimer = null;
    if (ch.gap.size === 0) return;
    if (this.transport === "websocket" && key.startsWith("room:")) return this.joinRoom(key.slice(5));
    if (this.transport === "websocket") return this.recoverInbox();
    // A reader's stream is in order per channel; a gap there means history moved on.
    const first = Math.min(...ch.gap.keys());
    ch.pos.offset = first - 1;
    this.drain(key, ch);
  }

  emitNote(note) {
    if (note.room != null) for (const handler of this.rooms.get(note.room) ?? []) handler(note);
    this.emit("notification", note);
  }

  // --- fallbacks: SSE, then long polling --------------------------------------------------

  fallBack(transport) {
    this.abandon();
    this.transport = transport;
    this.attempt = 0;
    this.emit("fallback", { transport });
    this.startReader();
  }

  /** The reader's query: its rooms and a cursor of every position the client holds. */
  readerQuery() {
    const params = new URLSearchParams();
    params.set("rooms", [...this.rooms.keys()].join(","));
    const positions = [...this.channels].map(([key, ch]) => [key, ch.pos]).filter(([, p]) => p);
    if (positions.length > 0) params.set("cursor", encodeCursor(positions));
    return params;
  }

  restartReader() {
    if (this.transport !== "sse" && this.transport !== "poll") return;
    this.abandon();
    this.startReader();
  }

  async startReader() {
    const generation = ++this.generation;
    const abort = new AbortController();
    this.readerAbort = abort;
    this.setState("connecting");
    try {
      await this.currentToken();
      if (generation !== this.generation) return;
      this.scheduleUpgrade();
      if (this.transport === "sse") await this.readEvents(generation, abort.signal);
      else await this.readPolls(generation, abort.signal);
    } catch (e) {
      if (generation !== this.generation || this.closed) return;
      if (e instanceof HeraldError && (e.status === 401 || e.status === 403) && !e.room) return this.refused(e.status);
      if (e instanceof HeraldError && e.room) {
        // One room is not allowed: drop it, say so, and read the others.
        this.rooms.delete(e.room);
        this.emit("error", e);
        return this.restartReader();
      }
      if (e instanceof HeraldError && e.code === "blocked") {
        this.failures[this.transport] = (this.failures[this.transport] ?? 0) + 1;
        if (this.transport === "sse" && this.failures.sse >= this.options.fallbackAfter) return this.fallBack("poll");
      }
      this.failed(generation, e instanceof HeraldError ? e : new HeraldError("unreachable", e.message));
      return;
    }
    // The stream ended as streams do (the server's maximum duration): read on at once.
    if (generation === this.generation && !this.closed) this.startReader();
  }

  async answer(url, signal, accept) {
    const answer = await this.fetch(url, { headers: { authorization: `Bearer ${this.token}`, accept }, signal });
    if (answer.status === 401 || answer.status === 403) {
      const body = await answer.json().catch(() => ({}));
      throw new HeraldError(answer.status === 401 ? "unauthorized" : "forbidden", body.message ?? String(answer.status), { status: answer.status, room: body.room });
    }
    const type = answer.headers.get("content-type") ?? "";
    if (answer.status !== 200 || !type.startsWith(accept)) {
      await answer.body?.cancel?.();
      throw new HeraldError("blocked", `${url.split("?")[0]} answered ${answer.status} ${type}`, { status: answer.status });
    }
    return answer;
  }

  async readEvents(generation, signal) {
    const answer = await this.answer(`${this.sseUrl}?${this.readerQuery()}`, signal, "text/event-stream");
    this.attempt = 0;
    this.failures.sse = 0;
    this.setState("connected");
    const reader = answer.body.getReader();
    const decoder = new TextDecoder();
    let text = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || generation !== this.generation) return;
      text += decoder.decode(value, { stream: true });
      let end;
      while ((end = text.indexOf("\n\n")) >= 0) {
        const block = text.slice(0, end);
        text = text.slice(end + 2);
        const fields = {};
        for (const line of block.split("\n")) {
          const colon = line.indexOf(": ");
          if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 2);
        }
        if (fields.event === "notification") this.deliver(JSON.parse(fields.data));
        else if (fields.event === "reset") this.reset(fields.id);
      }
    }
  }

  async readPolls(generation, signal) {
    let first = true;
    while (generation === this.generation && !this.closed) {
      const query = this.readerQuery();
      query.set("wait", String(this.options.pollWait));
      const answer = await this.answer(`${this.pollUrl}?${query}`, signal, "application/json");
      const body = await answer.json();
      if (first) {
        this.attempt = 0;
        this.setState("connected");
        first = false;
      }
      if (body.reset) this.reset(body.cursor);
      for (const note of body.notifications) this.deliver(note);
      // Channels that started "now" enter the client's positions through the cursor.
      for (const [key, p] of decodeCursor(body.cursor)) {
        const ch = this.channel(key);
        if (!ch.pos || ch.pos.epoch !== p.epoch || ch.pos.offset < p.offset) ch.pos = p;
      }
    }
  }

  /** History no longer covers the client's positions: say so, and start from the server's. */
  reset(cursor) {
    for (const [key, position] of decodeCursor(cursor)) {
      const ch = this.channel(key);
      const since = ch.pos;
      ch.pos = position;
      ch.gap.clear();
      if (since && (since.epoch !== position.epoch || since.offset !== position.offset)) {
        const what = key.startsWith("room:") ? { room: key.slice(5) } : { user: key.slice(5) };
        this.emit("recovery_failed", { ...what, since, position });
      }
    }
  }

  /** While on a fallback, tries a WebSocket now and then; one that opens takes over. */
  scheduleUpgrade() {
    this.cancel(this.upgradeTimer);
    if (this.closed || this.transport === "websocket") return;
    this.upgradeTimer = this.after(this.options.upgradeInterval, () => this.openWebSocket({ upgrade: true }));
  }
}
