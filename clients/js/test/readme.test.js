// The README's snippets, run as a newcomer runs them, so that the first hour cannot drift
// from the code: every ```sh and ```js block of README.md (and the client's
// clients/js/README.md) is run against a real herald-local unless an HTML comment just above
// it says `not run: <why>`. What a block prints is checked against the `# …` lines after its
// commands (`...` stands for any rest; a JSON line must have the same keys).
//
// The only changes made to a block: `cargo run -p herald-local [--]` is the herald-local the
// suite built (on the PATH), and 127.0.0.1:3001 is a free port (also given as HERALD_PORT,
// HERALD_URL and HERALD_ENDPOINT, which the gateway and its CLI read). Shell blocks run
// from the repository's root, where a newcomer runs them. Each `##` section
// runs on its own gateway; what a section started in the background is stopped after it.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import { REPO, chromiumPath, eventually, freePort, heraldLocalBin } from "./harness.js";
import { installPacked } from "./package.js";

/** The fenced blocks of a Markdown file: {section, lang, text, skip} (skip: the reason). */
export function blocks(markdown) {
  const found = [];
  const lines = markdown.split("\n");
  let section = "";
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].startsWith("## ")) section = lines[i].slice(3);
    const fence = lines[i].match(/^(\s*)```(\w*)\s*$/);
    if (!fence) continue;
    const indent = fence[1].length;
    const body = [];
    for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) body.push(lines[i].slice(indent));
    let before = "";
    for (let j = i - body.length - 2; j >= 0 && before === ""; j--) {
      if (lines[j].trim() !== "") before = lines[j].trim();
    }
    const skip = before.match(/^<!-- not run(?: as it is)?: (.+) -->$/)?.[1] ?? null;
    found.push({ section, lang: fence[2], text: body.join("\n"), skip, asItIs: before.startsWith("<!-- not run as it is") });
  }
  return found;
}

const README = readFileSync(join(REPO, "README.md"), "utf8");
const CLIENT_README = readFileSync(join(REPO, "clients", "js", "README.md"), "utf8");

/** A block's commands: continuation lines joined, each with the `# …` lines that follow it. */
function commands(text) {
  const out = [];
  let pending = "";
  for (const raw of text.split("\n")) {
    const line = raw.trimEnd();
    if (pending === "" && /^#\s/.test(line.trim())) {
      out.at(-1)?.expect.push(line.trim().replace(/^#\s/, ""));
      continue;
    }
    if (line.endsWith("\\")) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    const command = (pending + line).trim();
    pending = "";
    if (command !== "") out.push({ command, expect: [] });
  }
  return out;
}

/** Does `line` match the README's `expected` line? */
function matches(expected, line) {
  if (expected.startsWith("{")) {
    try {
      const keys = (o) => Object.keys(o).sort().join(",");
      return keys(JSON.parse(expected.replace(/"\w+\.\.\."/g, '"x"'))) === keys(JSON.parse(line));
    } catch {
      return false;
    }
  }
  const pattern = expected
    .trim()
    .split("...")
    .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
    .join("\\S*");
  return new RegExp(`^${pattern}`).test(line.trim());
}

/** Runs a section's shell blocks; what they started in the background is in `section.jobs`. */
class Section {
  constructor(port) {
    this.port = port;
    this.jobs = [];
    this.env = {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD_"))),
      PATH: `${dirname(heraldLocalBin())}:${process.env.PATH}`,
      HERALD_PORT: String(port),
      HERALD_URL: `ws://127.0.0.1:${port}/local`,
      HERALD_ENDPOINT: `http://127.0.0.1:${port}`,
      RUST_LOG: "warn",
      // The README: "with no AWS configuration at all, … prefix the command with …".
      AWS_DEFAULT_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: "local",
      AWS_SECRET_ACCESS_KEY: "local",
      AWS_CONFIG_FILE: "/dev/null",
      AWS_SHARED_CREDENTIALS_FILE: "/dev/null",
    };
  }

  adapt(command) {
    return command
      .replace(/cargo run -p herald-local( --)?/g, "herald-local")
      .replace(/127\.0\.0\.1:3001/g, `127.0.0.1:${this.port}`);
  }

  async run(text) {
    for (const { command, expect } of commands(text)) await this.one(this.adapt(command), expect.map((e) => this.adapt(e)));
  }

  async one(command, expect) {
    const exported = command.match(/^export (.+)$/);
    if (exported) {
      for (const [, name, value] of exported[1].split("#")[0].matchAll(/(\w+)=(\S+)/g)) this.env[name] = value;
      return;
    }
    // A gateway serves until stopped, and so does a command ending in `&`: both run on in
    // the background once they have said they are ready (a first line on stdout, or
    // `listen`'s `subscribed:` on stderr).
    const background = /&\s*(#.*)?$/.test(command) || /^herald-local(\s+--[\w-]+(\s+\S+)?)*\s*(#.*)?$/.test(command);
    if (background) {
      const job = spawn("bash", ["-c", command.replace(/&\s*(#.*)?$/, "")], { cwd: REPO, env: this.env, stdio: ["ignore", "pipe", "pipe"] });
      job.out = "";
      job.err = "";
      job.stdout.on("data", (d) => (job.out += d));
      job.stderr.on("data", (d) => (job.err += d));
      this.jobs.push(job);
      const ready = () => job.out.includes("listening on") || job.err.includes("subscribed:");
      await eventually(() => ready() || job.exitCode !== null, `\`${command}\` to be ready`, 60_000);
      assert.equal(job.exitCode, null, `\`${command}\` exited:\n${job.out}${job.err}`);
      await eventually(() => expect.every((e) => job.out.split("\n").some((l) => matches(e, l))), `\`${command}\` to print ${expect.join(" / ")}, it printed:\n${job.out}`, 5_000);
      return job;
    }
    // Stdout is a file, as a terminal is to the AWS CLI's `/dev/stdout` (node's pipes are
    // sockets, which Python cannot open by that name).
    const file = join(tmpdir(), `readme-${process.pid}-${this.port}.out`);
    const fd = openSync(file, "w+");
    const done = spawnSync("bash", ["-c", command], { cwd: REPO, env: this.env, encoding: "utf8", timeout: 60_000, stdio: ["ignore", fd, "pipe"] });
    closeSync(fd);
    done.stdout = readFileSync(file, "utf8");
    rmSync(file);
    assert.equal(done.status, 0, `\`${command}\` failed (${done.status}):\n${done.stdout}${done.stderr}`);
    for (const e of expect) {
      assert.ok(done.stdout.split("\n").some((l) => matches(e, l)), `\`${command}\` printed no line like \`${e}\`:\n${done.stdout}`);
    }
    return done;
  }

  async stop() {
    for (const job of this.jobs) {
      if (job.exitCode !== null) continue;
      const exited = new Promise((r) => job.once("exit", r));
      job.kill("SIGTERM");
      await exited;
    }
  }
}

test("every shell and JavaScript block of the READMEs is run or says why not", () => {
  const all = [...blocks(README), ...blocks(CLIENT_README)].filter((b) => b.lang === "sh" || b.lang === "js");
  assert.ok(all.length >= 15, `found ${all.length} blocks`);
  for (const b of all) {
    if (b.skip !== null) assert.ok(b.skip.length > 10, `the reason a block is not run: ${b.text}`);
  }
  const run = all.filter((b) => b.skip === null || b.asItIs);
  const known = new Set(["Walkthrough", "The JavaScript client", "The command line", "The HTTP API", "Connect, subscribe, publish"]);
  for (const b of run) assert.ok(known.has(b.section), `a block in "${b.section}" that this test does not run:\n${b.text}`);
});

test("the walkthrough, followed as written: the socket, curl, the AWS CLI and the demo page all see the notification", async (t) => {
  const section = new Section(await freePort());
  t.after(() => section.stop());
  const steps = blocks(README).filter((b) => b.section === "Walkthrough");
  const shell = steps.filter((b) => b.lang === "sh");
  assert.equal(shell.length, 5, "start, wscat, curl, AWS CLI v2 and v1");

  // 1. Start the gateway; what it prints matches the README's lines.
  const [start] = commands(shell[0].text);
  const gateway = await section.one(section.adapt(start.command), start.expect.map((e) => section.adapt(e)));
  const token = gateway.out.match(/24 h\): (\S+)/)[1];
  const page = gateway.out.match(/demo page: (\S+)/)[1];

  // Open the demo page, as the walkthrough says.
  const browser = await chromium.launch({ executablePath: chromiumPath(), headless: true });
  t.after(() => browser.close());
  const demo = await browser.newPage();
  await demo.goto(page);
  await demo.waitForSelector('#state[data-state="connected"]', { timeout: 10_000 });

  // 2. wscat's exchange, with a WebSocket client: send the `>` line, get the `<` line.
  assert.equal(shell[1].skip !== null && shell[1].asItIs, true);
  const said = shell[1].text.split("\n").filter((l) => l.startsWith("> ")).map((l) => l.slice(2));
  const answers = shell[1].text.split("\n").filter((l) => l.startsWith("< ")).map((l) => l.slice(2));
  const url = shell[1].text.match(/"(ws:\/\/[^"]+)"/)[1].replace("PASTE_THE_DEV_TOKEN", token);
  const ws = new WebSocket(section.adapt(url));
  const frames = [];
  ws.on("message", (m) => frames.push(String(m)));
  await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
  t.after(() => ws.close());
  for (const line of said) ws.send(line);
  await eventually(() => frames.length >= answers.length, "the answers");
  answers.forEach((expected, i) => assert.ok(matches(expected, frames[i]), `${frames[i]} is like ${expected}`));
  await eventually(() => demo.$('#rooms li:has-text("orders")'), "the demo page to join orders");

  // 3. curl publishes: delivered to the socket (and the page).
  await section.run(shell[2].text);
  // 4. The notification the socket sees.
  const shown = steps.find((b) => b.lang === "" && b.text.startsWith("< "));
  await eventually(() => frames.length > answers.length, "the notification");
  assert.ok(matches(shown.text.slice(2), frames[answers.length]), `${frames[answers.length]} is like the README's`);
  assert.equal(JSON.parse(frames[answers.length]).offset, 1);
  // 5. The demo page shows it.
  const row = await demo.waitForSelector('#log tr[data-room="orders"][data-offset="1"]', { timeout: 5_000 });
  assert.match(await row.textContent(), /shipped/);

  // The AWS CLI v1 (v2 is not on PyPI): it publishes too.
  assert.ok(shell[3].skip, "v2 says why it is not run");
  const cli = spawnSync("bash", ["-c", "command -v aws"], { env: section.env });
  assert.equal(cli.status, 0, "the AWS CLI is missing: `python3 -m pip install awscli` (scripts/test installs it)");
  await section.run(shell[4].text);
  await eventually(() => frames.length > answers.length + 1, "the AWS CLI's notification");
  assert.deepEqual(JSON.parse(frames.at(-1)).data, { order: 42 });
});

test("the JavaScript client's snippets run as written, in a fresh app with the packed client, and reject nothing unhandled", async (t) => {
  const { app } = installPacked();
  t.after(() => rmSync(app, { recursive: true, force: true }));
  const section = new Section(await freePort());
  t.after(() => section.stop());
  const gateway = await section.one("herald-local", []);
  const token = gateway.out.match(/24 h\): (\S+)/)[1];
  const snippets = [
    ...blocks(README).filter((b) => b.section === "The JavaScript client" && b.lang === "js"),
    ...blocks(CLIENT_README).filter((b) => b.lang === "js" && b.skip === null),
  ];
  assert.equal(snippets.length, 2);
  for (const [i, snippet] of snippets.entries()) {
    // What the snippet leaves to the app: where its token comes from, what it reloads.
    const prelude = `globalThis.fetchMyToken = async () => ${JSON.stringify(token)};\nglobalThis.reloadFromBackend = () => {};\n`;
    const file = join(app, `snippet${i}.mjs`);
    writeFileSync(file, prelude + section.adapt(snippet.text));
    const child = spawn(process.execPath, ["--unhandled-rejections=strict", file], { cwd: app, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    t.after(() => child.kill());
    await eventually(() => /published at offset \d+/.test(out) || child.exitCode !== null, `snippet ${i} to publish`, 20_000);
    assert.equal(child.exitCode, null, `snippet ${i} stopped:\n${out}${err}`);
    await eventually(() => /notification \d+ \{ order: 42 \}/.test(out), `snippet ${i}'s own notification`, 5_000);
    if (i === 0) assert.match(out, /connected over websocket/);
    assert.equal(err, "", `snippet ${i} wrote to stderr`);
  }
});

test("the command line section, as written: a gateway with your secret, a token, listen and publish", async (t) => {
  const section = new Section(await freePort());
  t.after(() => section.stop());
  const [cli] = blocks(README).filter((b) => b.section === "The command line" && b.lang === "sh");
  await section.run(cli.text);
  const listen = section.jobs.find((j) => j.spawnargs.join(" ").includes("listen"));
  await eventually(() => listen.out.trim().split("\n").filter(Boolean).length === 100, "100 notifications from listen", 20_000);
  const offsets = listen.out.trim().split("\n").map((l) => JSON.parse(l).offset);
  assert.deepEqual(offsets, Array.from({ length: 100 }, (_, i) => i + 1));
});

test("the HTTP API section, as written: the OpenAPI document validates", async (t) => {
  const section = new Section(await freePort());
  t.after(() => section.stop());
  const [check] = blocks(README).filter((b) => b.section === "The HTTP API" && b.lang === "sh");
  await section.run(check.text);
});

/** Runs scripts/test (a copy, readable by anyone) as a user who is not root, with `path`. */
function scriptsTestAsUser(args, path) {
  const dir = mkdtempSync(join(tmpdir(), "herald-scripts-"));
  mkdirSync(join(dir, "scripts"));
  copyFileSync(join(REPO, "scripts", "test"), join(dir, "scripts", "test"));
  chmodSync(dir, 0o755);
  chmodSync(join(dir, "scripts"), 0o755);
  chmodSync(join(dir, "scripts", "test"), 0o755);
  const script = join(dir, "scripts", "test");
  const env = { PATH: path, HOME: dir, CHROMIUM: join(dir, "no-chromium-here") };
  const setpriv = spawnSync("bash", ["-c", "command -v setpriv"], { encoding: "utf8" }).stdout.trim();
  assert.ok(process.getuid() !== 0 || setpriv, "setpriv (util-linux) runs the check as another user");
  const asUser = process.getuid() === 0 ? [setpriv, ["--reuid=65534", "--regid=65534", "--clear-groups", "bash", script, ...args]] : ["bash", [script, ...args]];
  const done = spawnSync(asUser[0], asUser[1], { env, encoding: "utf8", timeout: 30_000 });
  rmSync(dir, { recursive: true, force: true });
  return done;
}

test("the prerequisites check, as a user without root: lists what is there and what to install, and installs nothing", () => {
  // A PATH with a shell and little else: the tools the suite needs are all missing.
  const bin = mkdtempSync(join(tmpdir(), "herald-bin-"));
  chmodSync(bin, 0o755);
  for (const tool of ["bash", "id", "dirname", "env"]) {
    const found = spawnSync("bash", ["-c", `command -v ${tool}`], { encoding: "utf8" }).stdout.trim();
    assert.ok(found, `${tool} is on this machine`);
    symlinkSync(found, join(bin, tool));
  }
  try {
    const check = scriptsTestAsUser(["--check"], bin);
    assert.equal(check.status, 1, `--check fails when something is missing:\n${check.stdout}${check.stderr}`);
    for (const tool of ["node", "cargo-nextest", "redis-server", "redis-cli", "moto_server", "cfn-lint", "aws", "chromium"]) {
      assert.match(check.stdout, new RegExp(`^missing  ${tool}: .*(install|https)`, "m"), `${tool} listed with how to install it`);
    }
    // The test command itself stops at once with the same list, trying no apt-get.
    const run = scriptsTestAsUser([], bin);
    assert.equal(run.status, 1, `${run.stdout}${run.stderr}`);
    assert.match(run.stderr, /scripts\/test needs these first/);
    assert.match(run.stderr, /redis-server: sudo apt-get install redis-server/);
    assert.doesNotMatch(run.stderr, /installing it from Debian/);
  } finally {
    rmSync(bin, { recursive: true, force: true });
  }
  // And on this machine, after scripts/test installed everything, nothing is missing.
  const here = spawnSync("bash", [join(REPO, "scripts", "test"), "--check"], { encoding: "utf8" });
  assert.equal(here.status, 0, here.stdout + here.stderr);
  assert.doesNotMatch(here.stdout, /missing/);
});
