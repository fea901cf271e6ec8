// What the client's tests share: a real herald-local started on a free loopback port,
// tokens signed with its secret, publishes through its Lambda Invoke API, and Debian's
// Chromium. Nothing here is a fake: a test that cannot find a binary fails and says what
// to build or install.

import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = join(here, "..", "..", "..");

/** The herald-local binary: $HERALD_LOCAL_BIN, else the workspace's debug build. */
export function heraldLocalBin() {
  const bin = process.env.HERALD_LOCAL_BIN ?? join(REPO, "target", "debug", "herald-local");
  if (!existsSync(bin)) {
    throw new Error(`no herald-local at ${bin}: run \`cargo build -p herald-local\` (or set HERALD_LOCAL_BIN)`);
  }
  return bin;
}

/** Debian's Chromium: $CHROMIUM, else /usr/bin/chromium. */
export function chromiumPath() {
  const bin = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(bin)) {
    throw new Error(`no Chromium at ${bin}: run \`apt-get install chromium\` (or set CHROMIUM)`);
  }
  return bin;
}

const base64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 JWT as Herald reads it. */
export function sign(secret, { sub, rooms = [], publish = [], ttl = 3600, exp }) {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const expires = exp ?? Math.floor(Date.now() / 1000) + ttl;
  const claims = base64url(JSON.stringify({ sub, rooms, publish, exp: expires }));
  const signature = createHmac("sha256", secret).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${signature}`;
}

/**
 * A running herald-local. `args` are extra flags; `port` fixes the port (to restart on the
 * same address), else a free one is picked.
 */
export class Herald {
  static async start({ args = [], port = 0, secret, env = {}, dev = false } = {}) {
    const herald = new Herald();
    herald.secret = secret ?? randomBytes(32).toString("hex");
    const vars = { ...process.env, HERALD_JWT_SECRET: herald.secret, RUST_LOG: "warn", ...env };
    if (dev) delete vars.HERALD_JWT_SECRET; // dev mode: a random secret and a printed token
    herald.child = spawn(heraldLocalBin(), ["--port", String(port), ...args], {
      env: vars,
      stdio: ["ignore", "pipe", "pipe"],
    });
    herald.log = "";
    herald.child.stderr.on("data", (d) => (herald.log += d));
    const listening = await new Promise((resolve, reject) => {
      let out = "";
      const timer = setTimeout(() => reject(new Error(`herald-local did not start:\n${out}${herald.log}`)), 30_000);
      herald.child.stdout.on("data", (d) => {
        out += d;
        const m = out.match(/listening on ws:\/\/([\d.:]+)\/(\S+)/);
        herald.devToken ??= out.match(/dev token[^:]*: (\S+)/)?.[1];
        if (m) {
          clearTimeout(timer);
          resolve(m);
        }
      });
      herald.child.on("exit", (code) => reject(new Error(`herald-local exited (${code}):\n${out}${herald.log}`)));
    });
    herald.addr = listening[1];
    herald.stage = listening[2];
    herald.port = Number(herald.addr.split(":").pop());
    herald.http = `http://${herald.addr}`;
    herald.ws = `ws://${herald.addr}/${herald.stage}`;
    return herald;
  }

  token(claims) {
    return sign(this.secret, claims);
  }

  /** Publishes through the Invoke API as the publish function, answering its JSON. */
  async publish(request) {
    const answer = await fetch(`${this.http}/2015-03-31/functions/publish/invocations`, {
      method: "POST",
      body: JSON.stringify(request),
    });
    const body = await answer.json();
    if (answer.status !== 200) throw new Error(`publish answered ${answer.status}: ${JSON.stringify(body)}`);
    return body;
  }

  async stop() {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGTERM");
    const killed = setTimeout(() => this.child.kill("SIGKILL"), 5_000);
    await exited;
    clearTimeout(killed);
  }
}

/** Polls `check` until it returns a truthy value, or fails after `ms` saying `what`. */
export async function eventually(check, what, ms = 10_000) {
  const until = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free loopback port (free when asked; the caller binds it soon after). */
export async function freePort() {
  const { createServer } = await import("node:net");
  const server = createServer();
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

/** A real redis-server on a free loopback port, keeping nothing on disk. */
export class Redis {
  static async start() {
    const redis = new Redis();
    redis.port = await freePort();
    redis.child = spawn("redis-server", ["--port", String(redis.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    redis.child.on("error", (e) => {
      throw new Error(`cannot start redis-server (apt-get install redis-server): ${e.message}`);
    });
    await new Promise((resolve, reject) => {
      let out = "";
      const timer = setTimeout(() => reject(new Error(`redis-server did not start:\n${out}`)), 10_000);
      redis.child.stdout.on("data", (d) => {
        out += d;
        if (out.includes("Ready to accept connections")) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    redis.url = `redis://127.0.0.1:${redis.port}`;
    return redis;
  }

  async stop() {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGKILL");
    await exited;
  }
}

/**
 * An HTTP proxy in front of a gateway, as a corporate one might be: it forwards plain
 * requests (streaming their answers), and WebSocket upgrades unless `upgrades` is false
 * (then it drops them, as proxies that strip the upgrade do), and `/events` unless `sse`
 * is false (then it answers 502). `freeze()` stops forwarding on every open upgraded
 * connection without closing it: a dead path that no close ever reports.
 */
export class Proxy {
  static async start(target, { upgrades = true, sse = true } = {}) {
    const http = await import("node:http");
    const net = await import("node:net");
    const proxy = new Proxy();
    proxy.upgrades = upgrades;
    proxy.sse = sse;
    proxy.tunnels = new Set();
    proxy.frozen = [];
    proxy.streams = new Set();
    proxy.counts = { upgrades: 0, refusedUpgrades: 0, events: 0, polls: 0 };
    const [host, port] = target.split(":");
    proxy.server = http.createServer((req, res) => {
      if (req.url.includes("/events")) proxy.counts.events++;
      if (req.url.includes("/poll")) proxy.counts.polls++;
      if (!proxy.sse && req.url.includes("/events")) return res.writeHead(502).end("SSE is not allowed here");
      if (req.url.includes("/events")) {
        proxy.streams.add(res);
        res.on("close", () => proxy.streams.delete(res));
      }
      const upstream = http.request({ host, port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      });
      upstream.on("error", () => res.destroy());
      res.on("close", () => upstream.destroy());
      req.pipe(upstream);
    });
    proxy.server.on("upgrade", (req, socket, head) => {
      if (!proxy.upgrades) {
        proxy.counts.refusedUpgrades++;
        return socket.end("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
      }
      proxy.counts.upgrades++;
      const upstream = net.connect(Number(port), host, () => {
        let request = `${req.method} ${req.url} HTTP/1.1\r\n`;
        for (let i = 0; i < req.rawHeaders.length; i += 2) request += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
        upstream.write(`${request}\r\n`);
        upstream.write(head);
        socket.pipe(upstream);
        upstream.pipe(socket);
      });
      const tunnel = { socket, upstream };
      proxy.tunnels.add(tunnel);
      const drop = () => {
        proxy.tunnels.delete(tunnel);
        socket.destroy();
        upstream.destroy();
      };
      socket.on("error", drop);
      upstream.on("error", drop);
      socket.on("close", drop);
      upstream.on("close", drop);
    });
    await new Promise((r) => proxy.server.listen(0, "127.0.0.1", r));
    proxy.addr = `127.0.0.1:${proxy.server.address().port}`;
    return proxy;
  }

  /** From now on answers `/events` with 502, and cuts the streams in flight. */
  refuseSse() {
    this.sse = false;
    for (const res of this.streams) res.destroy();
  }

  freeze() {
    for (const { socket, upstream } of this.tunnels) {
      socket.unpipe(upstream);
      upstream.unpipe(socket);
      socket.pause();
      upstream.pause();
      this.frozen.push(socket, upstream);
    }
    this.tunnels.clear();
  }

  async stop() {
    for (const socket of this.frozen) socket.destroy();
    for (const { socket, upstream } of this.tunnels) {
      socket.destroy();
      upstream.destroy();
    }
    this.server.closeAllConnections?.();
    await new Promise((r) => this.server.close(r));
  }
}
