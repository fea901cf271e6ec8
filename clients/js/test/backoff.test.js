// Backoff and its jitter, on a fake clock: the client's reconnect delays stay within
// full jitter's bounds, spread over them, grow to the cap and start over after a stable
// minute. Logic only: the WebSocket and fetch here are doubles that fail or open at once.

import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULTS, HeraldClient, backoffDelay } from "../herald-client.js";

test("full jitter stays within [0, min(cap, base·2^n)] and spreads over it", () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(DEFAULTS.backoffCap, DEFAULTS.backoffBase * 2 ** attempt);
    assert.equal(backoffDelay(attempt, { random: () => 0 }), 0);
    assert.ok(Math.abs(backoffDelay(attempt, { random: () => 0.999999 }) - ceiling) < 1, `attempt ${attempt}`);
    const samples = Array.from({ length: 2000 }, () => backoffDelay(attempt));
    assert.ok(samples.every((d) => d >= 0 && d <= ceiling), `attempt ${attempt} within bounds`);
    const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
    assert.ok(Math.abs(mean / ceiling - 0.5) < 0.05, `attempt ${attempt}: mean ${mean} of ${ceiling}`);
    // Full jitter, not "equal" jitter: a tenth of the delays fall in the lowest tenth.
    const low = samples.filter((d) => d < ceiling / 10).length / samples.length;
    assert.ok(low > 0.06 && low < 0.14, `attempt ${attempt}: ${low} in the lowest tenth`);
  }
  assert.equal(backoffDelay(30, { random: () => 0.999999 }) <= DEFAULTS.backoffCap, true, "capped at 30 s");
});

/** A clock whose timers run only when the test advances it. */
class FakeClock {
  constructor() {
    this.time = 1_800_000_000_000;
    this.timers = [];
    this.seq = 0;
    this.delays = [];
  }
  now = () => this.time;
  setTimeout = (f, ms) => {
    const id = ++this.seq;
    this.timers.push({ id, at: this.time + ms, f, ms });
    return id;
  };
  clearTimeout = (id) => {
    this.timers = this.timers.filter((t) => t.id !== id);
  };
  /** Runs the next timer (and lets the promises it starts settle). */
  async next() {
    this.timers.sort((a, b) => a.at - b.at);
    const timer = this.timers.shift();
    if (!timer) return null;
    this.time = Math.max(this.time, timer.at);
    timer.f();
    for (let i = 0; i < 20; i++) await Promise.resolve();
    return timer;
  }
}

/** A WebSocket double: every connection fails at once, or opens (and answers pings) if
 * `shouldOpen` says so. */
function fakeWebSocket(shouldOpen) {
  return class {
    constructor() {
      this.readyState = 0;
      queueMicrotask(() => {
        if (shouldOpen()) {
          this.readyState = 1;
          this.onopen?.();
        } else {
          this.readyState = 3;
          this.onclose?.({ code: 1006 });
        }
      });
    }
    send(text) {
      const { action, ref } = JSON.parse(text);
      if (action === "ping") queueMicrotask(() => this.onmessage?.({ data: JSON.stringify({ type: "pong", ref }) }));
    }
    close() {
      this.readyState = 3;
    }
  };
}

test("reconnect delays grow within their bounds to the cap, and reset after a stable minute", async () => {
  const clock = new FakeClock();
  let open = false;
  const client = new HeraldClient({
    url: "ws://127.0.0.1:1/local",
    token: "x.eyJzdWIiOiJhIn0.y",
    WebSocket: fakeWebSocket(() => open),
    fetch: async () => {
      throw new Error("unreachable");
    },
    clock,
  });
  const retries = [];
  client.on("disconnected", (e) => retries.push(e.retryIn));
  client.connect();
  for (let i = 0; i < 40; i++) await Promise.resolve();
  // Ten failures in a row: each retry is scheduled with a delay within its attempt's bound.
  while (retries.length < 10) assert.ok(await clock.next(), "a retry is scheduled");
  retries.forEach((delay, attempt) => {
    const ceiling = Math.min(30_000, 500 * 2 ** attempt);
    assert.ok(delay >= 0 && delay <= ceiling, `retry ${attempt}: ${delay} ms of at most ${ceiling}`);
  });
  assert.ok(retries.slice(6).some((d) => d > 2_000), `later delays grow: ${retries}`);
  // Now the server is back: the next attempt opens, and a minute later the backoff is reset.
  open = true;
  const connected = new Promise((r) => client.on("connected", r));
  for (let i = 0; client.state !== "connected"; i++) assert.ok(i < 100 && (await clock.next()));
  await connected;
  const connectedAt = clock.time;
  assert.ok(client.attempt >= 10, "the attempts are remembered while the connection is young");
  for (let i = 0; client.attempt !== 0; i++) {
    assert.ok(i < 100 && (await clock.next()), "the stable-minute timer runs");
  }
  assert.equal(clock.time - connectedAt, 60_000, "reset after a stable minute, not before");
  client.close();
});
