// Thin platform adapters for the loader (src/loader.rs holds the policy): a streaming fetch
// into one preallocated buffer, SHA-256 through WebCrypto, an abortable sleep.

const abortError = () => {
  const e = new Error("model load aborted");
  e.name = "AbortError";
  return e;
};

// Rejections carry `kind`: "aborted", "status" (with `status`) or "network".
const failure = (kind, message, status) => Object.assign(new Error(message), { kind, status });

/// GET `url` into one Uint8Array. `expected` (bytes, or undefined) sizes the buffer up front, so
/// a shard is held once while it downloads; `onBytes(n)` reports the bytes received so far.
export async function fetchBytes(url, expected, signal, onBytes) {
  if (signal && signal.aborted) throw failure("aborted", "aborted");
  let res;
  try {
    res = await fetch(url, { signal, cache: "no-store" });
  } catch (e) {
    throw signal && signal.aborted ? failure("aborted", "aborted") : failure("network", String(e && e.message ? e.message : e));
  }
  if (!res.ok) {
    try {
      await res.body?.cancel();
    } catch {
      // ignore: the status is what matters
    }
    throw failure("status", `HTTP ${res.status}`, res.status);
  }
  try {
    if (!res.body || expected === undefined) {
      const buf = new Uint8Array(await res.arrayBuffer());
      onBytes(buf.length);
      return buf;
    }
    let buf = new Uint8Array(expected);
    let n = 0;
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (n + value.length > buf.length) {
        // More than the manifest says: keep it (the hash check rejects it) but stop growing at 2x.
        if (n + value.length > 2 * expected + 65536) {
          await reader.cancel();
          break;
        }
        const bigger = new Uint8Array(Math.max(n + value.length, buf.length * 2));
        bigger.set(buf.subarray(0, n));
        buf = bigger;
      }
      buf.set(value, n);
      n += value.length;
      onBytes(n);
    }
    return n === buf.length ? buf : buf.slice(0, n);
  } catch (e) {
    throw signal && signal.aborted ? failure("aborted", "aborted") : failure("network", String(e && e.message ? e.message : e));
  }
}

/// Hex SHA-256 via WebCrypto, or undefined where `crypto.subtle` is missing (insecure
/// contexts): the caller then hashes in wasm.
export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (!subtle) return undefined;
  const d = new Uint8Array(await subtle.digest("SHA-256", bytes));
  let s = "";
  for (const b of d) s += b.toString(16).padStart(2, "0");
  return s;
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(abortError());
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(abortError());
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export function callProgress(cb, event) {
  try {
    cb(event);
  } catch (e) {
    // An app's progress callback must not break the load.
    console.error("edge-llm: onProgress threw", e);
  }
}

export function hasIndexedDb() {
  return typeof globalThis.indexedDB !== "undefined";
}

export function isAbortSignal(v) {
  return typeof AbortSignal !== "undefined" && v instanceof AbortSignal;
}
