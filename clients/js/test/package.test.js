// The packed client installed into a fresh directory works as its README says: imported by
// name in Node, as an ES module in Chromium (through an import map, as a page without a
// bundler loads it), and type-checked from the package's own declarations.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { Herald, chromiumPath } from "./harness.js";
import { installPacked } from "./package.js";

const CLIENT = fileURLToPath(new URL("..", import.meta.url));

test("npm pack, installed in a fresh directory: Node imports it by name and it delivers", async (t) => {
  const { app } = installPacked();
  t.after(() => rmSync(app, { recursive: true, force: true }));
  const manifest = JSON.parse(readFileSync(join(app, "node_modules", "herald-realtime", "package.json"), "utf8"));
  assert.equal(manifest.name, "herald-realtime");
  assert.ok(readFileSync(join(app, "node_modules", "herald-realtime", "README.md"), "utf8").includes("herald-realtime"), "the guide ships with it");

  const herald = await Herald.start();
  t.after(() => herald.stop());
  const token = herald.token({ sub: "alice", rooms: ["orders"], publish: ["orders"] });
  writeFileSync(
    join(app, "main.js"),
    `import { HeraldClient } from "herald-realtime";
import WebSocket from "ws";
const herald = new HeraldClient({ url: ${JSON.stringify(herald.ws)}, token: ${JSON.stringify(token)}, WebSocket });
const got = new Promise((resolve) => herald.subscribe("orders", resolve));
const { offset } = await herald.publish("orders", { from: "node" });
const note = await got;
console.log(JSON.stringify({ offset, data: note.data }));
herald.close();
`,
  );
  const out = execFileSync(process.execPath, ["main.js"], { cwd: app, encoding: "utf8", timeout: 20_000 });
  assert.deepEqual(JSON.parse(out), { offset: 1, data: { from: "node" } });
});

test("the installed package's declarations type-check an app that imports it by name", (t) => {
  const { app } = installPacked();
  t.after(() => rmSync(app, { recursive: true, force: true }));
  writeFileSync(
    join(app, "app.ts"),
    `import { HeraldClient, HeraldError } from "herald-realtime";
const c = new HeraldClient({ url: "ws://127.0.0.1:3001/local", getToken: async () => "t" });
await c.ready({ timeout: 1000 });
c.subscribe<{ order: number }>("orders", (n) => console.log(n.data.order));
const answer = await c.publish("orders", { order: 42 }).catch((e: HeraldError) => e.code);
console.log(answer);
`,
  );
  const tsc = join(CLIENT, "node_modules", "typescript", "bin", "tsc");
  const args = [tsc, "--noEmit", "--strict", "--target", "es2022", "--lib", "es2022,dom", "--module", "nodenext", "app.ts"];
  try {
    execFileSync(process.execPath, args, { cwd: app, encoding: "utf8" });
  } catch (e) {
    assert.fail(`tsc found errors:\n${e.stdout}${e.stderr}`);
  }
});

const TYPES = { ".html": "text/html", ".js": "text/javascript" };

test("the installed package runs in Chromium as an ES module", async (t) => {
  const { app } = installPacked();
  t.after(() => rmSync(app, { recursive: true, force: true }));
  const herald = await Herald.start();
  t.after(() => herald.stop());
  const token = herald.token({ sub: "alice", rooms: ["orders"], publish: ["orders"] });
  writeFileSync(
    join(app, "index.html"),
    `<!doctype html>
<script type="importmap">{"imports": {"herald-realtime": "/node_modules/herald-realtime/herald-client.js"}}</script>
<script type="module">
import { HeraldClient } from "herald-realtime";
const herald = new HeraldClient({ url: ${JSON.stringify(herald.ws)}, token: ${JSON.stringify(token)} });
const got = new Promise((resolve) => herald.subscribe("orders", resolve));
const { offset } = await herald.publish("orders", { from: "chromium" });
window.result = { offset, data: (await got).data };
</script>`,
  );
  // The app's directory, served as a static site.
  const site = createServer((req, res) => {
    const path = normalize(join(app, decodeURIComponent(new URL(req.url, "http://x").pathname)));
    if (!path.startsWith(app)) return res.writeHead(403).end();
    try {
      const body = readFileSync(path.endsWith("/") ? join(path, "index.html") : path);
      res.writeHead(200, { "content-type": TYPES[extname(path) || ".html"] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => site.listen(0, "127.0.0.1", r));
  t.after(() => site.close());
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true });
  t.after(() => browser.close());
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  await page.goto(`http://127.0.0.1:${site.address().port}/`);
  const result = await page.waitForFunction(() => window.result, null, { timeout: 10_000 });
  assert.deepEqual(await result.jsonValue(), { offset: 1, data: { from: "chromium" } });
  assert.deepEqual(problems, []);
});
