// The client as an app gets it: `npm pack`, then `npm install` of that tarball (and the
// locked `ws`, for Node 20) into a fresh directory outside the repository, as
// clients/js/README.md says. Shared by package.test.js and readme.test.js.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const CLIENT = fileURLToPath(new URL("..", import.meta.url));

/** A fresh directory with the packed client and `ws` installed, offline. */
export function installPacked() {
  const app = mkdtempSync(join(tmpdir(), "herald-app-"));
  execFileSync("npm", ["pack", "--silent", "--pack-destination", app], { cwd: CLIENT, encoding: "utf8" });
  const tarball = readdirSync(app).find((f) => f.endsWith(".tgz"));
  if (!tarball) throw new Error(`npm pack left no tarball in ${app}`);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "an-app", private: true, type: "module" }));
  // `ws` from the client's own locked install: the test needs no network.
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--offline", "--loglevel=error", `./${tarball}`, join(CLIENT, "node_modules", "ws")], {
    cwd: app,
    encoding: "utf8",
  });
  return { app, tarball };
}
