// Static file server for the repo root (www/ and pkg/), with the cross-origin isolation
// headers wasm threads need and the right MIME type for .wasm.
import { createServer } from "node:http";
import { createReadStream, statSync } from "node:fs";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(fileURLToPath(import.meta.url), "../..");
const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".wasm": "application/wasm",
  ".json": "application/json",
  ".onnx": "application/octet-stream",
  ".css": "text/css",
};

// `dir`: the folder served (default the repo root); `isolated: false` leaves COOP/COEP out
// (tests of pages that are not cross-origin isolated).
export function serve(port = 0, host = "127.0.0.1", { dir = root, isolated = true } = {}) {
  const base = resolve(dir);
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    const file = join(base, path.endsWith("/") ? join(path, "index.html") : path);
    let st;
    try {
      st = file.startsWith(base) ? statSync(file) : null;
    } catch {
      st = null;
    }
    if (!st || !st.isFile()) {
      res.writeHead(404).end("not found");
      return;
    }
    const isolation = isolated
      ? { "cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp" }
      : {};
    res.writeHead(200, {
      "content-type": types[extname(file)] ?? "application/octet-stream",
      "content-length": st.size,
      ...isolation,
      "cache-control": "no-store",
    });
    createReadStream(file).pipe(res);
  });
  return new Promise((ok) => server.listen(port, host, () => ok(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const port = Number(process.env.PORT ?? 8080);
  const server = await serve(port, "0.0.0.0");
  console.log(`serving ${root} on http://0.0.0.0:${server.address().port}/www/  (open it on your phone via this machine's LAN address)`);
}
