// The demo page herald-local serves at `/`, in Debian's headless Chromium: two pages on
// the dev token, one publishes, the other shows the notification with its offset; the
// chart draws the gateway's figures; a screenshot is kept in test-artifacts/. Any error
// the page shows, or throws, fails the test.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { Herald, chromiumPath, eventually } from "./harness.js";

const ARTIFACTS = fileURLToPath(new URL("../test-artifacts/", import.meta.url));

async function open(browser, herald) {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && page.problems.push(`console: ${m.text()}`));
  await page.goto(`${herald.http}/`);
  await page.waitForSelector('#state[data-state="connected"]', { timeout: 10_000 });
  return page;
}

test("two pages on the demo: one publishes, the other shows it live", async (t) => {
  const herald = await Herald.start({ dev: true });
  t.after(() => herald.stop());
  assert.ok(herald.devToken, "dev mode prints a token");
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true });
  t.after(() => browser.close());
  const watcher = await open(browser, herald);
  const publisher = await open(browser, herald);
  assert.equal(await watcher.inputValue("#token"), herald.devToken, "dev mode fills the token in");

  await publisher.fill("#data", '{"hello": "from the other page"}');
  await publisher.click("#publish");
  await publisher.waitForSelector("#result:has-text('at offset 1')");
  const row = await watcher.waitForSelector('#log tr[data-room="orders"][data-offset="1"]', { timeout: 5_000 });
  assert.match(await row.textContent(), /from the other page/);

  // The chart's figures come from the gateway (the numbers /metrics gives): both pages
  // connected, and the one publish delivered (to every page in the room).
  let stats;
  await eventually(async () => {
    stats = await (await fetch(`${herald.http}/_herald/stats`)).json();
    return stats.connections === 2 && stats.websockets === 2 && stats.publishes === 1 && stats.delivered >= 1;
  }, "two connections, one publish delivered");
  await watcher.waitForSelector(`#chart[data-delivered="${stats.delivered}"]`, { timeout: 5_000 });
  mkdirSync(ARTIFACTS, { recursive: true });
  await watcher.screenshot({ path: join(ARTIFACTS, "demo.png"), fullPage: true });

  for (const page of [watcher, publisher]) {
    assert.equal(await page.textContent("#errors"), "", "the page shows no error");
    assert.deepEqual(page.problems, []);
  }
});

test("a refused publish shows the contract's code, and a bad token shows an error", async (t) => {
  const herald = await Herald.start();
  t.after(() => herald.stop());
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true });
  t.after(() => browser.close());
  const page = await browser.newPage();
  await page.goto(`${herald.http}/`);
  assert.equal(await page.inputValue("#token"), "", "no token outside dev mode");
  await page.fill("#token", herald.token({ sub: "bob", rooms: ["orders"] }));
  await page.click("#connect");
  await page.waitForSelector('#state[data-state="connected"]');
  await page.click("#publish");
  await page.waitForSelector("#result:has-text('refused: forbidden')");
  await page.fill("#token", "not-a-token");
  await page.click("#connect");
  await page.waitForSelector("#errors:has-text('unauthorized')", { timeout: 10_000 });
});
