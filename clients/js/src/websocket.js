// The WebSocket transport, as methods of the client (installed on `HeraldClient.prototype`
// by herald-client.js): opening a socket with the token, telling a refusal from a blocked
// upgrade, the heartbeat, requests matched to answers by `ref`, and subscribing and
// recovering the client's channels on a socket that opened.
//
// Uses the client's `options`, `clock`, `generation`, `ws`, `transport`, `pending`,
// `sequencer` and its connection methods (`abandon`, `failed`, `lost`, `refused`, `fallBack`).

import { CloseCode, HeraldError } from "./errors.js";

export const webSocketTransport = {
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
      if (generation !== this.generation || this.closed) return ws.close(CloseCode.NORMAL);
      opened = true;
      if (upgrade) {
        // A WebSocket got through again: leave the fallback for it.
        this.abandon(CloseCode.REPLACED);
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
  },

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
    // `connected` waits for the rooms and the inbox to be in place on this socket, so what
    // the app publishes from its handler reaches this very client.
    const joined = [...this.rooms.keys()].map((room) => this.joinRoom(room));
    Promise.allSettled([...joined, this.recoverInbox()]).then(() => {
      if (generation === this.generation && !this.closed) this.setState("connected");
    });
  },

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
  },

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
  },

  startHeartbeat(generation) {
    this.stopHeartbeat();
    const beat = () => {
      this.pingTimer = this.after(this.options.pingInterval, () => {
        if (generation !== this.generation) return;
        this.request({ action: "ping" }, this.options.pongTimeout).then(
          () => beat(),
          () => {
            // No pong in time: the connection is dead even if no close ever arrives.
            if (generation === this.generation) this.lost(generation, { code: CloseCode.ABNORMAL, reason: "no pong" });
          },
        );
      });
    };
    beat();
  },

  stopHeartbeat() {
    this.cancel(this.pingTimer);
  },

  // --- requests ------------------------------------------------------------------------------

  /** Sends `body` on the open socket now (the app's requests wait for `ready()` first). */
  request(body, timeout = this.options.requestTimeout) {
    if (this.transport !== "websocket" || this.ws?.readyState !== 1) {
      return Promise.reject(this.notConnected());
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
  },

  onFrame(generation, data) {
    if (generation !== this.generation) return;
    let frame;
    try {
      frame = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch {
      return;
    }
    if (frame.type === "notification") return this.sequencer.deliver(frame);
    // A room's join and leave events (with HERALD_PRESENCE_EVENTS on): no ref, no offset.
    if (frame.type === "join" || frame.type === "leave") return this.emit("presence", frame);
    const waiting = frame.ref != null && this.pending.get(frame.ref);
    if (waiting) {
      this.pending.delete(frame.ref);
      this.cancel(waiting.timer);
      if (frame.type === "error") waiting.reject(new HeraldError(frame.code, frame.message));
      else waiting.resolve(frame);
    } else if (frame.type === "error") {
      this.emit("error", new HeraldError(frame.code, frame.message));
    }
  },

  /** Subscribes a room on the open WebSocket, recovering from its last delivered offset. */
  joinRoom(room) {
    if (this.transport === "sse" || this.transport === "poll") return this.restartReader();
    if (this.ws?.readyState !== 1) return;
    const key = `room:${room}`;
    const since = this.sequencer.position(key);
    this.sequencer.hold(key); // notifications before the answer wait for it
    return this.request({ action: "subscribe", room, ...(since ? { since } : {}) }).then(
      (reply) => this.sequencer.settle(key, since, reply, { room }),
      (error) => {
        this.sequencer.release(key);
        if (error.code === "disconnected") return; // the next connection subscribes again
        this.emit("error", Object.assign(error, { room }));
        if (error.code === "forbidden" || error.code === "bad_request") this.rooms.delete(room);
      },
    );
  },

  /** Recovers the user's inbox from its last delivered offset. */
  recoverInbox() {
    const user = this.claims?.sub;
    if (user == null) return;
    const key = `user:${user}`;
    const since = this.sequencer.position(key);
    if (!since) return;
    this.sequencer.hold(key);
    return this.request({ action: "recover", since }).then(
      (reply) => this.sequencer.settle(key, since, reply, { user }),
      () => this.sequencer.release(key),
    );
  },
};
