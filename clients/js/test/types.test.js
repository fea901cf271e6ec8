// The TypeScript declarations compile, strictly, against code that uses the client as an
// app would (test/types-usage.ts), with the TypeScript compiler the package locks.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

test("herald-client.d.ts type-checks an app's use of the client", () => {
  const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));
  const args = [tsc, "--noEmit", "--strict", "--target", "es2022", "--lib", "es2022,dom", "--module", "nodenext", "test/types-usage.ts"];
  try {
    execFileSync(process.execPath, args, { cwd: root, encoding: "utf8" });
  } catch (e) {
    assert.fail(`tsc found errors:\n${e.stdout}${e.stderr}`);
  }
});
