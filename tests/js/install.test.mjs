// The npm package as users get it: `npm pack` of pkg/, the tarball installed into fresh temp
// projects (no `file:` links, no /pkg/ paths, no registry for the package itself), then
//  - the tarball: every relative import and every `exports` target inside it, the licenses, the
//    short README;
//  - Node: the README's Node quickstart, verbatim but for the model's URL, streams a reply from a
//    local server; the installed package's options, errors and OpenAI-style API;
//  - TypeScript: `tsc --noEmit` over tests/js/typed-usage.ts against the installed .d.ts;
//  - Vite (examples/vite-app, which holds the README's browser quickstart line for line): the dev
//    server and the production build, each in headless Chromium on a cross-origin isolated page:
//    the quickstart, the main thread and the Worker (the threaded build in it when pkg/threads/
//    was built; required with EDGE_LLM_REQUIRE_THREADS=1, as scripts/test.sh sets).
// Needs pkg/ (scripts/build-pkg.sh) and, for Vite, vite from the npm cache or registry.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync, spawn } from "node:child_process";
import { promisify } from "node:util";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serve } from "../../scripts/serve.mjs";

const root = fileURLToPath(new URL("../../", import.meta.url));
const pkgDir = join(root, "pkg");
const threadsBuilt = existsSync(join(pkgDir, "threads/edge_llm.js"));
// The relaxed-SIMD twins (scripts/build-pkg.sh and build-pkg-threads.sh build them unless RELAXED=0).
const relaxedBuilt = existsSync(join(pkgDir, "relaxed/edge_llm.js"));
const threadsRelaxedBuilt = existsSync(join(pkgDir, "threads-relaxed/edge_llm.js"));
const built = { "./threads/": threadsBuilt, "./relaxed/": relaxedBuilt, "./threads-relaxed/": threadsRelaxedBuilt };
const requireThreads = process.env.EDGE_LLM_REQUIRE_THREADS === "1";
const work = mkdtempSync(join(tmpdir(), "edge-llm-install-"));
let tarball;
let packed; // paths in the tarball
let modelServer;

const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 64 << 20 });
// For a child that fetches from this process's model server: a synchronous exec would block the
// event loop that serves it.
const runAsync = async (cmd, args, cwd) => (await promisify(execFile)(cmd, args, { cwd, encoding: "utf8", maxBuffer: 64 << 20 })).stdout;
const npm = (args, cwd) => run("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], cwd);

// The README's ```js blocks, in order.
const readmeBlocks = (text) => [...text.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);

// The tiny packed model. Its manifest's generation defaults are short (max_new_tokens 32, from
// tests/fixtures/tiny/generation_config.json): the quickstarts give no max_tokens, and the tiny
// model's context is 256 tokens.
function writeModel(dir) {
  cpSync(join(root, "tests/fixtures/tiny-packed"), dir, { recursive: true });
  assert.equal(JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")).generation.max_new_tokens, 32);
}

function project(name, pkg) {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: `install-test-${name}`, private: true, type: "module", ...pkg }, null, 2));
  return dir;
}

before(() => {
  assert.ok(existsSync(join(pkgDir, "edge_llm_bg.wasm")), "pkg/ is not built: run scripts/build-pkg.sh");
  const [info] = JSON.parse(npm(["pack", "--json", "--pack-destination", work], pkgDir));
  tarball = join(work, info.filename);
  packed = new Set(info.files.map((f) => f.path));
  // The Node quickstart's model, served like any static host would.
  const models = join(work, "site");
  writeModel(join(models, "model"));
  return serve(0, "127.0.0.1", { dir: models }).then((s) => (modelServer = s));
});

after(() => {
  modelServer?.close();
  rmSync(work, { recursive: true, force: true });
});

test("the tarball holds every module its entries import, its licenses and the short README", () => {
  const pkg = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8"));
  assert.equal(pkg.name, "edge-llm-wasm");
  assert.equal(pkg.license, "MIT OR Apache-2.0");
  for (const f of ["package.json", "README.md", "LICENSE-MIT", "LICENSE-APACHE", "index.js", "edge_llm_bg.wasm", "worker-entry.js", "threads/index.js", "relaxed/index.js", "threads-relaxed/index.js"]) {
    assert.ok(packed.has(f), `${f} is not in the tarball`);
  }
  const targets = Object.values(pkg.exports).flatMap((t) => (typeof t === "string" ? [t] : Object.values(t)));
  for (const t of targets) {
    // A variant not built ships only its index.js / index.d.ts (a module that says so).
    const dir = Object.keys(built).find((d) => t.startsWith(d));
    if (dir && !built[dir] && t !== `${dir}index.js` && t !== `${dir}index.d.ts`) continue;
    assert.ok(packed.has(t.slice(2)), `exports target ${t} is not in the tarball`);
  }
  // Static imports, dynamic imports with a literal, and `new URL("...", import.meta.url)`.
  const specifier = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+|new URL\(\s*)(["'])(\.{1,2}\/[^"']+)\1/g;
  for (const file of packed) {
    if (!/\.(js|d\.ts)$/.test(file)) continue;
    const text = readFileSync(join(pkgDir, file), "utf8");
    for (const [, , spec] of text.matchAll(specifier)) {
      // wasm-bindgen-rayon's worker helper imports the package root (a directory) by design.
      if (spec.endsWith("/..")) continue;
      const target = normalize(join(dirname(file), spec)).replaceAll("\\", "/");
      const candidates = file.endsWith(".d.ts") ? [target, target.replace(/\.js$/, ".d.ts")] : [target];
      assert.ok(candidates.some((c) => packed.has(c)), `${file} imports ${spec}, which is not in the tarball`);
    }
  }
  const readme = readFileSync(join(pkgDir, "README.md"), "utf8");
  assert.ok(readme.length < 12_000, `the npm README is the short one (${readme.length} bytes)`);
});

test("Node: the README quickstart streams a reply from the installed tarball", { timeout: 300_000 }, async () => {
  const dir = project("node", {});
  npm(["install", tarball, "--offline"], dir);
  assert.ok(existsSync(join(dir, "node_modules/edge-llm-wasm/edge_llm_bg.wasm")));
  const readme = readFileSync(join(dir, "node_modules/edge-llm-wasm/README.md"), "utf8");
  const [quickstart] = readmeBlocks(readme);
  assert.match(quickstart, /https:\/\/example\.com\/model\/manifest\.json/);
  const base = `http://127.0.0.1:${modelServer.address().port}/`;
  writeFileSync(join(dir, "quickstart.mjs"), quickstart.replace("https://example.com/", base));
  const reply = await runAsync(process.execPath, ["quickstart.mjs"], dir);
  assert.ok(reply.length > 0, "the quickstart printed no reply");
  // The installed copy is what ran: resolution stays inside the project.
  const resolved = run(process.execPath, ["--input-type=module", "-e", 'console.log(import.meta.resolve("edge-llm-wasm"))'], dir).trim();
  assert.equal(resolved, `file://${join(dir, "node_modules/edge-llm-wasm/index.js")}`);

  cpSync(join(root, "tests/js/installed-checks.mjs"), join(dir, "checks.mjs"));
  const out = JSON.parse(await runAsync(process.execPath, ["checks.mjs", `${base}model/manifest.json`], dir));
  assert.deepEqual(out.failures, []);
});

test("TypeScript: tsc --noEmit passes on the typed usage file against the installed types", { timeout: 300_000 }, () => {
  const dir = project("types", {});
  npm(["install", tarball, "--offline"], dir);
  cpSync(join(root, "tests/js/typed-usage.ts"), join(dir, "usage.ts"));
  const tsc = join(root, "node_modules/.bin/tsc");
  assert.ok(existsSync(tsc), "typescript is not installed (npm ci at the repo root)");
  const args = ["--noEmit", "--strict", "--exactOptionalPropertyTypes", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext", "--lib", "es2022,dom,esnext.disposable", "usage.ts"];
  try {
    run(tsc, args, dir);
  } catch (e) {
    assert.fail(`tsc failed:\n${e.stdout}${e.stderr}`);
  }
});

function freePort() {
  return new Promise((ok) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function runApp(url) {
  const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "edge-llm-install-chromium-")), {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-quic"],
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(url);
    await page.waitForFunction(() => window.edgeLlmResult !== undefined, null, { timeout: 60_000 });
    const r = await page.evaluate(() => window.edgeLlmResult);
    assert.deepEqual(errors, []);
    return r;
  } finally {
    await context.close();
  }
}

function checkApp(r) {
  assert.equal(r.error, undefined, r.error);
  assert.ok(r.isolated, "the page is cross-origin isolated");
  assert.ok(r.quickstartReply.length > 0, "the quickstart appended no reply");
  assert.equal(r.direct.ids.length, 16);
  assert.deepEqual({ ids: r.inWorker.ids, text: r.inWorker.text }, { ids: r.direct.ids, text: r.direct.text });
  assert.deepEqual(r.inWorker.completion, r.direct.completion);
  assert.equal(r.direct.completion.usage.completion_tokens <= 8, true);
  assert.deepEqual(r.unknownOption, { name: "InvalidOptionError", option: "max_tokens", isClass: true });
  assert.deepEqual(r.workerUnknownOption, { name: "InvalidOptionError", option: "maxTokens", isClass: true });
  assert.equal(r.inWorker.modelVersion, "1.0.0");
  if (threadsBuilt) {
    // Chromium has relaxed SIMD: the threaded build's relaxed twin where it was built.
    assert.deepEqual([r.inWorker.variant, r.inWorker.threads, r.inWorker.simd], ["threads", 2, threadsRelaxedBuilt ? "relaxed" : "simd128"]);
  } else {
    assert.ok(!requireThreads, "EDGE_LLM_REQUIRE_THREADS=1 but pkg/threads/ was not built");
    assert.deepEqual([r.inWorker.variant, r.inWorker.threads], ["single", 1]);
    console.log("# the Worker ran the single-thread build: pkg/threads/ was not built (scripts/build-pkg-threads.sh)");
  }
}

test("Vite: the example app from the installed tarball, dev server and build, in Chromium", { timeout: 900_000 }, async (t) => {
  const app = join(root, "examples/vite-app");
  const main = readFileSync(join(app, "src/main.js"), "utf8");
  const readme = readFileSync(join(pkgDir, "README.md"), "utf8");
  const browserQuickstart = readmeBlocks(readme)[1].trim().split("\n").map((l) => l.trim());
  const mainLines = main.split("\n").map((l) => l.trim());
  const at = mainLines.indexOf(browserQuickstart[1]);
  assert.deepEqual([mainLines.find((l) => l === browserQuickstart[0]), ...mainLines.slice(at, at + browserQuickstart.length - 1)], browserQuickstart,
    "examples/vite-app/src/main.js holds the README's browser quickstart line for line");

  const dir = join(work, "vite");
  mkdirSync(dir);
  for (const f of ["index.html", "src", "vite.config.js"]) cpSync(join(app, f), join(dir, f), { recursive: true });
  const { devDependencies } = JSON.parse(readFileSync(join(app, "package.json"), "utf8"));
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "install-test-vite", private: true, type: "module", devDependencies }, null, 2));
  npm(["install", "--prefer-offline"], dir);
  npm(["install", tarball, "--prefer-offline"], dir);
  writeModel(join(dir, "public/model"));
  const vite = join(dir, "node_modules/.bin/vite");

  await t.test("dev server", async () => {
    const port = await freePort();
    // NO_COLOR: vite colours the port (`127.0.0.1:\x1b[1m38167`) when the environment forces colour, as CI's does.
    const server = spawn(vite, ["--port", String(port), "--strictPort", "--host", "127.0.0.1"], {
      cwd: dir,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, NO_COLOR: "1", FORCE_COLOR: "0" },
    });
    let log = "";
    try {
      await new Promise((ok, fail) => {
        const timer = setTimeout(() => fail(new Error(`vite did not start:\n${log}`)), 60_000);
        const onData = (d) => {
          log += d;
          if (log.replace(/\x1b\[[0-9;]*m/g, "").includes(`:${port}`)) {
            clearTimeout(timer);
            ok();
          }
        };
        server.stdout.on("data", onData);
        server.stderr.on("data", onData);
        server.on("exit", (code) => fail(new Error(`vite exited (${code}):\n${log}`)));
      });
      checkApp(await runApp(`http://127.0.0.1:${port}/`));
    } finally {
      server.kill();
    }
  });

  await t.test("build", async () => {
    run(vite, ["build", "--logLevel", "warn"], dir);
    const assets = readdirSync(join(dir, "dist/assets"));
    // One .wasm per build the package holds (auto.js imports each by a literal path).
    assert.equal(assets.filter((f) => f.endsWith(".wasm")).length, 1 + [threadsBuilt, relaxedBuilt, threadsRelaxedBuilt].filter(Boolean).length, `the .wasm assets: ${assets}`);
    const server = await serve(0, "127.0.0.1", { dir: join(dir, "dist") });
    try {
      checkApp(await runApp(`http://127.0.0.1:${server.address().port}/`));
    } finally {
      server.close();
    }
  });
});
