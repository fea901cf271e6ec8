// The client against a real herald-local (and a real Redis where a restart must keep
// history): delivery, publish answers, a server killed and restarted, a dead path found
// by the heartbeat, tokens refreshed before they expire, and the fallbacks to SSE and long
// polling through a proxy that blocks them, then back to WebSockets. In every case each
// notification arrives once, in order.

import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import WebSocket from "ws";
import { HeraldClient } from "../herald-client.js";
import { Herald, Proxy, Redis, eventually, freePort, sleep } from "./harness.js";

/** Fast timers, so each test takes seconds; the defaults are tested in backoff.test.js. */
const FAST = { backoffBase: 50, backoffCap: 500, requestTimeout: 3_000 };

/** A client of `url` for alice, collecting what it delivers per room. */
function client(url, options = {}) {
  const c = new HeraldClient({ url, WebSocket, ...FAST, ...options });
  c.got = [];
  c.states = [];
  c.errors = [];
  c.resets = [];
  for (const state of ["connecting", "connected", "disconnected", "fallback"]) {
    c.on(state, (e) => c.states.push(`${state}:${e.transport}`));
  }
  c.on("error", (e) => c.errors.push(e));
  c.on("recovery_failed", (e) => c.resets.push(e));
  return c;
}

const data = (c, room = "orders") => c.got.filter((n) => n.room === room).map((n) => n.data.n);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

async function publishAll(herald, from, to, room = "orders") {
  for (let n = from; n <= to; n++) await herald.publish({ room, data: { n } });
}

test("delivers in order, answers publishes, and rejects with the contract's code", async (t) => {
  const herald = await Herald.start();
  t.after(() => herald.stop());
  const c = client(herald.ws, { token: herald.token({ sub: "alice", rooms: ["orders"], publish: ["orders"] }) });
  t.after(() => c.close());
  c.subscribe("orders", (n) => c.got.push(n));
  await eventually(() => c.state === "connected" && c.channels.get("room:orders")?.holding === false, "subscribed");
  const published = await c.publish("orders", { n: 1 });
  assert.equal(published.type, "published");
  assert.equal(published.offset, 1);
  await publishAll(herald, 2, 5);
  await eventually(() => c.got.length === 5, "5 notifications");
  assert.deepEqual(data(c), range(1, 5));
  await assert.rejects(c.publish("payroll", { n: 0 }), (e) => e.code === "forbidden");
  await assert.rejects(c.publish("a b", { n: 0 }), (e) => e.code === "bad_request");
  const history = await c.history("orders", { limit: 2 });
  assert.deepEqual(history.notifications.map((n) => n.data.n), [4, 5]);
  const presence = await c.presence("orders");
  assert.equal(presence.type, "presence");
  assert.equal(presence.count, 1);
  assert.equal(presence.members[0].user, "alice");
  assert.equal(presence.members.length, 1);
  await assert.rejects(c.presence("payroll"), (e) => e.code === "forbidden");
});

test("a room's joins and leaves reach the app as `presence` events, over a WebSocket and over SSE", async (t) => {
  const herald = await Herald.start({ env: { HERALD_PRESENCE_EVENTS: "1" } });
  t.after(() => herald.stop());
  const proxy = await Proxy.start(herald.addr, { upgrades: false });
  t.after(() => proxy.stop());
  const heard = (c) => {
    c.presence = [];
    c.on("presence", (e) => c.presence.push(`${e.type} ${e.user} ${e.room}`));
    return c;
  };
  const ann = heard(client(herald.ws, { token: herald.token({ sub: "ann", rooms: ["orders"] }) }));
  t.after(() => ann.close());
  ann.subscribe("orders");
  await eventually(() => ann.presence.includes("join ann orders"), "ann hears her own join");
  // Cy reads over SSE (the proxy refuses upgrades): a member, who hears the others too.
  const cy = heard(client(`ws://${proxy.addr}/${herald.stage}`, { token: herald.token({ sub: "cy", rooms: ["orders"] }) }));
  t.after(() => cy.close());
  cy.subscribe("orders");
  await eventually(() => cy.transport === "sse" && cy.state === "connected", "cy on SSE");
  await eventually(() => ann.presence.includes("join cy orders"), "ann hears cy's stream join");

  const bob = heard(client(herald.ws, { token: herald.token({ sub: "bob", rooms: ["orders"] }) }));
  bob.subscribe("orders");
  await eventually(() => ann.presence.includes("join bob orders") && cy.presence.includes("join bob orders"), "both hear bob join");
  bob.close();
  await eventually(() => ann.presence.includes("leave bob orders") && cy.presence.includes("leave bob orders"), "both hear bob leave");
  assert.deepEqual(ann.got, [], "presence events are not notifications");
  assert.deepEqual(cy.got, []);
});

test("calls made before the connection is ready wait for it; `connected` comes once subscriptions are in place", async (t) => {
  const herald = await Herald.start();
  t.after(() => herald.stop());
  const c = client(herald.ws, { token: herald.token({ sub: "alice", rooms: ["orders"], publish: ["orders"] }) });
  t.after(() => c.close());
  c.subscribe("orders", (n) => c.got.push(n));
  // What an app does in its `connected` handler reaches this very client.
  let fromHandler;
  c.on("connected", () => (fromHandler ??= c.publish("orders", { n: 2 })));
  assert.equal(c.state, "connecting");
  const first = await c.publish("orders", { n: 1 }); // sent before the socket opened
  assert.equal(first.offset, 1);
  assert.equal((await fromHandler).offset, 2);
  await eventually(() => c.got.length === 2, "both notifications, on the client that published them");
  assert.deepEqual(data(c), [1, 2]);
  const history = await c.history("orders");
  assert.deepEqual(history.notifications.map((n) => n.data.n), [1, 2]);
  await c.ready(); // connected: at once
});

test("ready() and early calls give up with `timeout` when no server answers, and with `closed` on close()", async () => {
  const port = await freePort();
  const c = client(`ws://127.0.0.1:${port}/local`, { token: "t", requestTimeout: 300 });
  await assert.rejects(c.ready(), (e) => e.code === "timeout");
  await assert.rejects(c.publish("orders", {}), (e) => e.code === "timeout");
  const waiting = c.ready({ timeout: 10_000 });
  const history = c.history("orders");
  c.close();
  await assert.rejects(waiting, (e) => e.code === "closed");
  await assert.rejects(history, (e) => e.code === "closed");
  await assert.rejects(c.ready(), (e) => e.code === "closed");
});

test("a refused token stops the client with an error instead of retrying forever", async (t) => {
  const herald = await Herald.start();
  t.after(() => herald.stop());
  const c = client(herald.ws, { token: "not-a-token" });
  c.subscribe("orders");
  const waiting = c.ready({ timeout: 10_000 }).then(
    () => null,
    (e) => e,
  );
  await eventually(() => c.errors.length > 0 && c.closed, "a definitive refusal");
  assert.equal(c.errors[0].code, "unauthorized");
  assert.equal((await waiting)?.code, "unauthorized", "ready() says why");
  await assert.rejects(c.publish("orders", {}), (e) => e.code === "unauthorized", "and so does a later call");
  const attempts = c.states.filter((s) => s.startsWith("connecting")).length;
  await sleep(500);
  assert.equal(c.states.filter((s) => s.startsWith("connecting")).length, attempts, "no more attempts");
});

test("a server killed and restarted while 5 are published: all 5 arrive, in order, once", async (t) => {
  const redis = await Redis.start();
  t.after(() => redis.stop());
  const env = { HERALD_STORE: "redis", HERALD_REDIS_URL: redis.url };
  const a = await Herald.start({ env });
  const b = await Herald.start({ env, secret: a.secret });
  t.after(() => b.stop());
  const c = client(a.ws, { token: a.token({ sub: "alice", rooms: ["orders"] }) });
  t.after(() => c.close());
  c.subscribe("orders", (n) => c.got.push(n));
  await eventually(() => c.state === "connected" && c.channels.get("room:orders")?.holding === false, "subscribed");
  await publishAll(a, 1, 1);
  await eventually(() => c.got.length === 1, "the first");

  a.child.kill("SIGKILL");
  await eventually(() => c.state !== "connected", "the client to notice");
  await publishAll(b, 2, 6); // through the other instance, into the shared history
  const again = await Herald.start({ env, secret: a.secret, port: a.port });
  t.after(() => again.stop());

  await eventually(() => c.got.length >= 6, "the 5 published while it was away");
  await sleep(300);
  assert.deepEqual(data(c), range(1, 6));
  assert.deepEqual(c.got.map((n) => n.offset), range(1, 6));
  assert.deepEqual(c.resets, []);
});

test("the heartbeat finds a path that stopped forwarding, and the client recovers through a new one", async (t) => {
  const herald = await Herald.start();
  t.after(() => herald.stop());
  const proxy = await Proxy.start(herald.addr);
  t.after(() => proxy.stop());
  const c = client(`ws://${proxy.addr}/${herald.stage}`, {
    token: herald.token({ sub: "alice", rooms: ["orders"] }),
    pingInterval: 300,
    pongTimeout: 300,
  });
  t.after(() => c.close());
  c.subscribe("orders", (n) => c.got.push(n));
  await eventually(() => c.state === "connected" && c.channels.get("room:orders")?.holding === false, "subscribed");
  await publishAll(herald, 1, 2);
  await eventually(() => c.got.length === 2, "the first two");

  proxy.freeze(); // no close will ever come: only a missing pong tells
  await publishAll(herald, 3, 5);
  await eventually(() => c.states.includes("disconnected:websocket"), "the dead path to be noticed", 3_000);
  await eventually(() => c.got.length >= 5, "what was sent into the dead path");
  await sleep(300);
  assert.deepEqual(data(c), range(1, 5));
  assert.equal(proxy.counts.upgrades, 2, "one reconnect");
});

test("getToken is asked again before exp, and on every reconnect; nothing is lost meanwhile", async (t) => {
  const herald = await Herald.start();
  t.after(() => herald.stop());
  const issued = [];
  const getToken = async () => {
    const exp = Math.floor(Date.now() / 1000) + 3;
    issued.push({ at: Date.now(), exp: exp * 1000 });
    return herald.token({ sub: "alice", rooms: ["orders"], exp });
  };
  const c = client(herald.ws, { getToken });
  t.after(() => c.close());
  c.subscribe("orders", (n) => c.got.push(n));
  await eventually(() => c.state === "connected", "connected");
  for (let n = 1; n <= 10; n++) {
    await herald.publish({ room: "orders", data: { n } });
    await sleep(500);
  }
  await eventually(() => c.got.length >= 10, "10 notifications over 5 s of 3 s tokens");
  await sleep(300);
  assert.deepEqual(data(c), range(1, 10));
  assert.ok(issued.length >= 3, `a new token before each expired (${issued.length} issued)`);
  for (let i = 1; i < issued.length; i++) {
    assert.ok(issued[i].at < issued[i - 1].exp, `token ${i} was asked for before token ${i - 1} expired`);
  }
});

test("falls back to SSE when upgrades are refused, to polling when SSE is too, and back to WebSocket", async (t) => {
  const herald = await Herald.start();
  t.after(() => herald.stop());
  const proxy = await Proxy.start(herald.addr, { upgrades: false });
  t.after(() => proxy.stop());
  const c = client(`ws://${proxy.addr}/${herald.stage}`, {
    token: herald.token({ sub: "alice", rooms: ["orders"] }),
    upgradeInterval: 1_000,
    pollWait: 1,
  });
  t.after(() => c.close());
  const fallbacks = [];
  c.on("fallback", (e) => fallbacks.push(e.transport));
  c.subscribe("orders", (n) => c.got.push(n));

  await eventually(() => c.transport === "sse" && c.state === "connected", "SSE");
  await publishAll(herald, 1, 3);
  await eventually(() => c.got.length === 3, "3 over SSE");

  proxy.refuseSse(); // SSE refused too; the stream in flight is cut
  await eventually(() => c.transport === "poll" && c.state === "connected", "polling", 5_000);
  await publishAll(herald, 4, 6);
  await eventually(() => c.got.length === 6, "3 more by polling");

  proxy.upgrades = true; // the proxy lets WebSockets through again
  await eventually(() => c.transport === "websocket" && c.state === "connected", "back on WebSocket", 5_000);
  await eventually(() => c.channels.get("room:orders")?.holding === false, "resubscribed");
  await publishAll(herald, 7, 9);
  await eventually(() => c.got.length >= 9, "3 more over WebSocket");
  await sleep(300);
  assert.deepEqual(data(c), range(1, 9), "each once, in order");
  assert.deepEqual(fallbacks, ["sse", "poll", "websocket"]);
  assert.ok(proxy.counts.refusedUpgrades >= 2, "the upgrade was tried and refused");
  assert.ok(proxy.counts.polls > 0);
});

test("closing while the WebSocket is still connecting throws nothing at the app", async () => {
  // A server that takes the TCP connection and never answers the upgrade.
  const accepted = [];
  const silent = net.createServer((socket) => accepted.push(socket));
  await new Promise((resolve) => silent.listen(0, "127.0.0.1", resolve));
  const thrown = [];
  const record = (e) => thrown.push(e.message);
  process.on("uncaughtException", record);
  try {
    const c = client(`ws://127.0.0.1:${silent.address().port}/local`, { token: "t" }).connect();
    await eventually(() => c.ws !== null && c.ws?.readyState === WebSocket.CONNECTING, "a socket connecting");
    c.close();
    await sleep(200);
    assert.deepEqual(thrown, []);
    assert.equal(c.state, "disconnected");
  } finally {
    process.off("uncaughtException", record);
    for (const socket of accepted) socket.destroy();
    silent.close();
  }
});
