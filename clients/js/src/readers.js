// The fallback transports, as methods of the client (installed on `HeraldClient.prototype`
// by herald-client.js): Server-Sent Events, then long polling, each reading the client's
// rooms and inbox from a cursor of its positions; and, while on either, a WebSocket tried
// now and then to go back to.
//
// Uses the client's `options`, `fetch`, `token`, `generation`, `transport`, `rooms`,
// `failures`, `sequencer` and its connection methods (`abandon`, `failed`, `refused`,
// `openWebSocket`).

import { channelName, decodeCursor, encodeCursor } from "./cursor.js";
import { HeraldError } from "./errors.js";

/** Splits SSE text into events: `[events, rest]`, where `rest` is an unfinished event. */
export function parseEvents(text) {
  const events = [];
  let end;
  while ((end = text.indexOf("\n\n")) >= 0) {
    const block = text.slice(0, end);
    text = text.slice(end + 2);
    const fields = {};
    for (const line of block.split("\n")) {
      const colon = line.indexOf(": ");
      if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 2);
    }
    events.push(fields);
  }
  return [events, text];
}

export const fallbackReaders = {
  fallBack(transport) {
    this.abandon();
    this.transport = transport;
    this.attempt = 0;
    this.emit("fallback", { transport });
    this.startReader();
  },

  /** The reader's query: its rooms and a cursor of every position the client holds. */
  readerQuery() {
    const params = new URLSearchParams();
    params.set("rooms", [...this.rooms.keys()].join(","));
    const positions = this.sequencer.positions();
    if (positions.length > 0) params.set("cursor", encodeCursor(positions));
    return params;
  },

  restartReader() {
    if (this.transport !== "sse" && this.transport !== "poll") return;
    this.abandon();
    this.startReader();
  },

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
  },

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
  },

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
      let events;
      [events, text] = parseEvents(text + decoder.decode(value, { stream: true }));
      for (const fields of events) {
        if (fields.event === "notification") this.sequencer.deliver(JSON.parse(fields.data));
        else if (fields.event === "reset") this.reset(fields.id);
        else if (fields.event === "join" || fields.event === "leave") this.emit("presence", JSON.parse(fields.data));
      }
    }
  },

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
      for (const note of body.notifications) this.sequencer.deliver(note);
      // Channels that started "now" enter the client's positions through the cursor.
      for (const [key, p] of decodeCursor(body.cursor)) this.sequencer.advance(key, p);
    }
  },

  /** History no longer covers the client's positions: say so, and start from the server's. */
  reset(cursor) {
    for (const [key, position] of decodeCursor(cursor)) {
      const since = this.sequencer.reset(key, position);
      if (since && (since.epoch !== position.epoch || since.offset !== position.offset)) {
        this.emit("recovery_failed", { ...channelName(key), since, position });
      }
    }
  },

  /** While on a fallback, tries a WebSocket now and then; one that opens takes over. */
  scheduleUpgrade() {
    this.cancel(this.upgradeTimer);
    if (this.closed || this.transport === "websocket") return;
    this.upgradeTimer = this.after(this.options.upgradeInterval, () => this.openWebSocket({ upgrade: true }));
  },
};
