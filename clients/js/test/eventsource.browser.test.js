// A browser's own EventSource on herald-local's SSE endpoint, in Debian's headless
// Chromium, from a page on another origin (so CORS is exercised as a user's app meets it).
// The gateway ends every stream after 2 s (--max-connection-secs), so the browser
// reconnects by itself with Last-Event-ID several times while notifications keep coming:
// every one must arrive once, in order.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { chromium } from "playwright-core";
import { Herald, chromiumPath, eventually, sleep } from "./harness.js";

const PAGE = `<!doctype html><meta charset="utf-8"><title>EventSource</title>
<script>
  window.received = []; window.opens = 0; window.errors = 0;
  const source = new EventSource(new URLSearchParams(location.search).get("url"));
  source.onopen = () => window.opens++;
  source.onerror = () => window.errors++;
  source.addEventListener("notification", (e) => window.received.push({ id: e.lastEventId, note: JSON.parse(e.data) }));
  source.addEventListener("reset", () => window.reset = true);
</script>`;

/** Serves the page on a loopback port of its own: another origin than the gateway's. */
async function pageServer() {
  const server = createServer((_, res) => res.writeHead(200, { "content-type": "text/html" }).end(PAGE));
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return server;
}

/** A gateway started with `args`, the page's server, and a Chromium page, all stopped after `t`. */
async function setUp(t, args = []) {
  const herald = await Herald.start({ args });
  t.after(() => herald.stop());
  const pages = await pageServer();
  t.after(() => pages.close());
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true });
  t.after(() => browser.close());
  const page = await browser.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e));
  /** Opens the page on another origin with an EventSource on `rooms`. */
  page.openEvents = (rooms) => {
    const token = herald.token({ sub: "alice", rooms: ["orders"] });
    const url = `${herald.http}/${herald.stage}/events?rooms=${rooms}&token=${token}`;
    return page.goto(`http://127.0.0.1:${pages.address().port}/?url=${encodeURIComponent(url)}`);
  };
  return { herald, page };
}

test("EventSource in Chromium resumes by Last-Event-ID across forced closes, nothing lost or twice", async (t) => {
  const { herald, page } = await setUp(t, ["--max-connection-secs", "2"]);
  await page.openEvents("orders");
  await eventually(() => page.evaluate(() => window.opens >= 1), "the stream to open");

  // At least 20, every 250 ms, and on until the browser has reconnected twice by itself
  // (each stream lives 2 s and the browser waits `retry:` before the next, so how many
  // reconnects 20 publishes span depends on the machine's pace).
  const opened = () => page.evaluate(() => window.opens);
  let total = 0;
  while (total < 20 || ((await opened()) < 3 && total < 60)) {
    total++;
    await herald.publish({ room: "orders", data: { n: total } });
    await sleep(250);
  }
  const received = await eventually(async () => {
    const got = await page.evaluate(() => window.received);
    return got.length >= total && got;
  }, `${total} notifications in the page`);
  await sleep(500); // anything sent twice would arrive now

  const all = await page.evaluate(() => window.received);
  assert.deepEqual(all.map((r) => r.note.data.n), Array.from({ length: total }, (_, i) => i + 1));
  assert.deepEqual(all.map((r) => r.note.offset), Array.from({ length: total }, (_, i) => i + 1));
  assert.ok(all.every((r) => r.note.room === "orders" && r.id.length > 0), "each event has an id");
  assert.equal(received.length, total);
  const opens = await page.evaluate(() => window.opens);
  assert.ok(opens >= 3, `the browser reconnected by itself (${opens} opens over ${total} publishes)`);
  assert.equal(await page.evaluate(() => window.reset), undefined, "no reset: history covered every gap");
  assert.deepEqual(page.errors, []);
});

test("a refused EventSource in Chromium is an error the page sees, not a silent stream", async (t) => {
  const { page } = await setUp(t);
  await page.openEvents("payroll");
  await eventually(() => page.evaluate(() => window.errors >= 1), "an error event");
  // A 403 is final: EventSource gives up (readyState CLOSED) rather than retrying.
  assert.equal(await page.evaluate(() => window.opens), 0);
});
