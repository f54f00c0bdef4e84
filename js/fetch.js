// Thin platform adapters for the loader (src/loader.rs holds the policy): a streaming fetch
// into one preallocated buffer, SHA-256 through WebCrypto, an abortable sleep.

const abortError = () => {
  const e = new Error("model load aborted");
  e.name = "AbortError";
  return e;
};

// Rejections carry `kind`: "aborted", "status" (with `status`) or "network".
const failure = (kind, message, status) => Object.assign(new Error(message), { kind, status });

/// One GET into one Uint8Array, pulled by the loader: `next()` resolves to the bytes received
/// so far after each chunk and to -1 once the body is complete; `bytes()` is the result.
/// `expected` (the manifest's size, or undefined) sizes the buffer up front, so a shard is held
/// once while it downloads.
export class Download {
  constructor(url, expected, signal) {
    this.url = url;
    this.expected = expected;
    this.signal = signal;
    this.reader = null;
    this.buf = null;
    this.n = 0;
  }

  fail(e) {
    return this.signal && this.signal.aborted ? failure("aborted", "aborted") : failure("network", String(e && e.message ? e.message : e));
  }

  async next() {
    if (this.signal && this.signal.aborted) throw failure("aborted", "aborted");
    if (!this.reader) {
      let res;
      try {
        res = await fetch(this.url, { signal: this.signal, cache: "no-store" });
      } catch (e) {
        throw this.fail(e);
      }
      if (!res.ok) {
        try {
          await res.body?.cancel();
        } catch {
          // the status is what matters
        }
        throw failure("status", `HTTP ${res.status}`, res.status);
      }
      if (!res.body) {
        this.buf = new Uint8Array(await res.arrayBuffer());
        this.n = this.buf.length;
        this.reader = { read: async () => ({ done: true }), cancel: async () => {} };
        return this.n;
      }
      this.reader = res.body.getReader();
      this.buf = new Uint8Array(this.expected ?? 1 << 16);
    }
    let step;
    try {
      step = await this.reader.read();
    } catch (e) {
      throw this.fail(e);
    }
    if (step.done) return -1;
    const value = step.value;
    if (this.n + value.length > this.buf.length) {
      if (this.expected !== undefined && this.n + value.length > 2 * this.expected + 65536) {
        // Far more than the manifest says: stop here; the hash check rejects it.
        await this.reader.cancel();
        return -1;
      }
      const bigger = new Uint8Array(Math.max(this.n + value.length, this.buf.length * 2));
      bigger.set(this.buf.subarray(0, this.n));
      this.buf = bigger;
    }
    this.buf.set(value, this.n);
    this.n += value.length;
    return this.n;
  }

  bytes() {
    const out = this.n === this.buf.length ? this.buf : this.buf.slice(0, this.n);
    this.buf = null;
    return out;
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
