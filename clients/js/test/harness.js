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
  static async start({ args = [], port = 0, secret, env = {} } = {}) {
    const herald = new Herald();
    herald.secret = secret ?? randomBytes(32).toString("hex");
    herald.child = spawn(heraldLocalBin(), ["--port", String(port), ...args], {
      env: { ...process.env, HERALD_JWT_SECRET: herald.secret, RUST_LOG: "warn", ...env },
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
