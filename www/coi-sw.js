// Cross-origin isolation for static hosts that cannot set response headers (GitHub Pages, plain
// object storage): the threaded wasm build needs SharedArrayBuffer, which needs COOP/COEP.
// The same file runs twice:
//  - in the page (a classic <script> before the page's modules): registers itself as a service
//    worker, and reloads once when the page is not yet controlled by it;
//  - as that service worker: answers every same-origin request with the response plus
//    `Cross-Origin-Opener-Policy: same-origin`, `Cross-Origin-Embedder-Policy: require-corp` and
//    `Cross-Origin-Resource-Policy: cross-origin`, so the next load is isolated.
// Nothing happens where the server already isolates the page, outside a secure context (service
// workers need HTTPS or localhost), or with `?coi=0`. A model on another origin must be served
// with CORS (the loader fetches it with CORS, which COEP accepts).
if (typeof window === "undefined") {
  self.addEventListener("install", () => self.skipWaiting());
  self.addEventListener("activate", (ev) => ev.waitUntil(self.clients.claim()));
  self.addEventListener("fetch", (ev) => {
    const req = ev.request;
    // A request the browser may only answer from its cache, for another origin: leave it alone.
    if (req.cache === "only-if-cached" && req.mode !== "same-origin") return;
    if (new URL(req.url).origin !== self.location.origin) return;
    ev.respondWith(
      fetch(req).then((res) => {
        if (res.status === 0) return res; // opaque: headers cannot be changed
        const headers = new Headers(res.headers);
        headers.set("Cross-Origin-Opener-Policy", "same-origin");
        headers.set("Cross-Origin-Embedder-Policy", "require-corp");
        headers.set("Cross-Origin-Resource-Policy", "cross-origin");
        return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
      }),
    );
  });
} else {
  (() => {
    const KEY = "edge-llm-coi-reloaded";
    const off = new URLSearchParams(location.search).get("coi") === "0";
    if (window.crossOriginIsolated || off || !window.isSecureContext || !navigator.serviceWorker) {
      sessionStorage.removeItem(KEY);
      return;
    }
    const script = document.currentScript.src;
    navigator.serviceWorker.register(script).then(
      (reg) => {
        // Reload once: controlled by the worker but still not isolated means the browser
        // refuses isolation (e.g. an old one); reloading again would loop.
        if (sessionStorage.getItem(KEY)) return;
        const reload = () => {
          sessionStorage.setItem(KEY, "1");
          location.reload();
        };
        if (navigator.serviceWorker.controller) reload();
        else {
          const sw = reg.installing ?? reg.waiting ?? reg.active;
          if (sw?.state === "activated") reload();
          else sw?.addEventListener("statechange", () => sw.state === "activated" && reload());
        }
      },
      (e) => console.warn(`edge-llm: the isolation service worker did not register (${e.message}); threads stay off`),
    );
  })();
}
