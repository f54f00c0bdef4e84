// Test HTTP server for the loader tests (Node and Playwright): serves the repo (pkg/, a test
// page) and packed models from memory under /models/<name>/, and can corrupt, truncate, extend, delay,
// stall, drop or 404 any model file, or go offline. Every model request is logged.
import { createServer } from "node:http";
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

export const root = fileURLToPath(new URL("../../", import.meta.url));
const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };

export const sha256 = (b) => createHash("sha256").update(b).digest("hex");

/// The committed packed tiny model (tests/fixtures/tiny-packed): { "manifest.json": Buffer, ... }.
export function tinyPacked() {
  const dir = join(root, "tests/fixtures/tiny-packed");
  return Object.fromEntries(readdirSync(dir).map((f) => [f, readFileSync(join(dir, f))]));
}

/// Another version of a packed model: `edit(manifest)` may change fields; `nan: true` fills
/// every weight shard with 0xFF bytes (NaN floats, so inference fails: the OTA test's bad
/// update). Hashes and `model_sha256` are recomputed.
export function variant(files, { version, nan = false, edit } = {}) {
  const m = JSON.parse(files["manifest.json"]);
  const out = {};
  for (const f of m.files) {
    let b = files[f.path];
    if (nan && f.role === "weights") b = Buffer.alloc(b.length, 0xff);
    out[f.path] = b;
    f.sha256 = sha256(b);
    f.bytes = b.length;
  }
  // Format 1: its model hash covers the files only, which JS recomputes without matching
  // serde_json's float formatting of `config` (format 2 hashes that too).
  m.format_version = 1;
  m.model_sha256 = sha256(m.files.map((f) => f.sha256 + "\n").join(""));
  if (version) m.model_version = version;
  edit?.(m);
  out["manifest.json"] = Buffer.from(JSON.stringify(m, null, 2) + "\n");
  return out;
}

const TEST_PAGE = `<!doctype html><meta charset="utf-8"><title>edge-llm loader test</title>
<script type="module">
import init, * as edge from "/pkg/edge_llm.js";
await init();
window.edge = edge;
window.sha256hex = async (b) => [...new Uint8Array(await crypto.subtle.digest("SHA-256", b))].map((x) => x.toString(16).padStart(2, "0")).join("");
window.edgeReady = true;
</script>`;

export async function startModelServer() {
  const models = new Map(); // name -> { file: Buffer }
  const faults = new Map(); // "name/file" -> [fault, ...]
  const log = [];
  const sockets = new Set();
  const state = { offline: false };

  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const m = /^\/models\/([^/]+)\/(.+)$/.exec(path);
    if (m) {
      log.push(`${m[1]}/${m[2]}`);
      if (state.offline) return req.socket.destroy();
      const body = models.get(m[1])?.[m[2]];
      const fault = faults.get(`${m[1]}/${m[2]}`)?.shift();
      if (fault?.mode === "status" || !body) {
        res.writeHead(fault?.status ?? 404).end("no");
        return;
      }
      let bytes = Buffer.from(body);
      if (fault?.mode === "corrupt") bytes[bytes.length >> 1] ^= 0x40;
      if (fault?.mode === "truncate") bytes = bytes.subarray(0, bytes.length >> 1);
      // More bytes than the manifest says: the loader reads what fits and stops.
      if (fault?.mode === "extend") bytes = Buffer.concat([bytes, Buffer.alloc(4096, 0x5a)]);
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": bytes.length, "cache-control": "no-store" });
      if (fault?.mode === "drop") {
        // Headers promise the whole file; the connection dies halfway.
        res.write(bytes.subarray(0, bytes.length >> 1));
        setTimeout(() => req.socket.destroy(), 20);
        return;
      }
      if (fault?.mode === "stall") {
        // Headers and `bytes` bytes (default: half the body), then silence: the connection
        // stays open and nothing more is ever sent.
        res.write(bytes.subarray(0, fault.bytes ?? bytes.length >> 1));
        return;
      }
      if (fault?.mode === "delay") {
        // Slow body: ten chunks, `ms` apart.
        const step = Math.ceil(bytes.length / 10);
        for (let i = 0; i < bytes.length; i += step) {
          if (res.destroyed) return;
          res.write(bytes.subarray(i, i + step));
          await new Promise((r) => setTimeout(r, fault.ms ?? 100));
        }
      } else {
        res.write(bytes);
      }
      res.end();
      return;
    }
    if (path === "/test.html") {
      res.writeHead(200, { "content-type": types[".html"] }).end(TEST_PAGE);
      return;
    }
    const file = normalize(join(root, path));
    let st = null;
    try {
      st = file.startsWith(root) && (path.startsWith("/pkg/") || path.startsWith("/tests/")) ? statSync(file) : null;
    } catch {
      st = null;
    }
    if (!st || !st.isFile()) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream", "content-length": st.size, "cache-control": "no-store" });
    res.end(readFileSync(file));
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    base,
    log,
    state,
    url: (name) => `${base}/models/${name}/manifest.json`,
    addModel: (name, files) => models.set(name, files),
    fault: (name, file, ...fs) => faults.set(`${name}/${file}`, [...(faults.get(`${name}/${file}`) ?? []), ...fs]),
    clearFaults: () => faults.clear(),
    requests: (name, file) => log.filter((l) => l === `${name}/${file}`).length,
    shardRequests: (name) => log.filter((l) => l.startsWith(`${name}/`) && !l.endsWith("/manifest.json")).length,
    close: () =>
      new Promise((ok) => {
        for (const s of sockets) s.destroy();
        server.close(ok);
      }),
  };
}
