// Static file server for the repo root (www/ and pkg/), with the cross-origin isolation
// headers wasm threads need and the right MIME type for .wasm. Run directly it serves HTTP on
// ${PORT:-8080} and HTTPS on ${HTTPS_PORT:-8443} (a self-signed certificate made with openssl
// on first use, see `certificate`), so a phone on the LAN gets a secure context and threads.
import { createServer } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { execFileSync } from "node:child_process";
import { createReadStream, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
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
// (tests of pages that are not cross-origin isolated); `mounts`: { "/url-prefix/": "/a/dir" }
// served besides it (a packed model outside the repo); `onRequest(path)` sees every request
// path (tests count shard downloads); `tls`: { key, cert } serves HTTPS; `routes`:
// { "/exact/path": (req, res) => … } answered by the caller (scripts/bench.mjs hears the page).
export function serve(port = 0, host = "127.0.0.1", { dir = root, isolated = true, mounts = {}, onRequest, tls, routes = {} } = {}) {
  const base = resolve(dir);
  const handler = (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    onRequest?.(path);
    if (Object.hasOwn(routes, path)) return routes[path](req, res);
    const mount = Object.keys(mounts).find((p) => path.startsWith(p));
    const from = mount ? resolve(mounts[mount]) : base;
    const rel = mount ? path.slice(mount.length) : path;
    const file = join(from, rel.endsWith("/") || rel === "" ? join(rel, "index.html") : rel);
    let st;
    try {
      st = file.startsWith(from) ? statSync(file) : null;
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
  };
  const server = tls ? createHttpsServer(tls, handler) : createServer(handler);
  return new Promise((ok) => server.listen(port, host, () => ok(server)));
}

/** This machine's IPv4 LAN addresses. */
export function lanAddresses() {
  return Object.values(networkInterfaces())
    .flat()
    .filter((a) => a && a.family === "IPv4" && !a.internal)
    .map((a) => a.address);
}

/**
 * A self-signed certificate for localhost and this machine's LAN addresses, made with openssl
 * into `dir` (default target/certs, not committed) and made again when the addresses change.
 * It is its own CA (basicConstraints CA:TRUE), so a phone can also install it as trusted.
 */
export function certificate(dir = join(root, "target/certs")) {
  const ips = ["127.0.0.1", ...lanAddresses()];
  const key = join(dir, "key.pem");
  const cert = join(dir, "cert.pem");
  const names = join(dir, "names.json");
  const want = JSON.stringify(ips);
  if (!existsSync(cert) || !existsSync(names) || readFileSync(names, "utf8") !== want) {
    mkdirSync(dir, { recursive: true });
    const san = ["DNS:localhost", ...ips.map((ip) => `IP:${ip}`)].join(",");
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "365",
      "-keyout", key, "-out", cert, "-subj", "/CN=edge-llm local dev",
      "-addext", `subjectAltName=${san}`, "-addext", "basicConstraints=critical,CA:TRUE",
    ], { stdio: "pipe" });
    writeFileSync(names, want);
  }
  return { key: readFileSync(key), cert: readFileSync(cert), certPath: cert, ips };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const port = Number(process.env.PORT ?? 8080);
  const httpsPort = Number(process.env.HTTPS_PORT ?? 8443);
  const http = await serve(port, "0.0.0.0");
  console.log(`serving ${root}`);
  console.log(`  http://localhost:${http.address().port}/www/  (this machine: localhost is a secure context)`);
  let tls;
  try {
    tls = process.env.HTTPS === "0" ? undefined : certificate();
  } catch (e) {
    console.log(`  no HTTPS: making the certificate with openssl failed (${e.message.split("\n")[0]})`);
  }
  if (tls) {
    const https = await serve(httpsPort, "0.0.0.0", { tls });
    for (const ip of tls.ips.slice(1)) {
      console.log(`  https://${ip}:${https.address().port}/www/bench.html  (phone on the LAN: accept the self-signed certificate once)`);
    }
    console.log(`  certificate: ${tls.certPath} (install it on the phone as trusted to skip the warning)`);
  }
}
