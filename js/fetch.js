// Thin platform adapters for the loader (src/loader.rs holds the policy): a streaming fetch
// into one preallocated buffer, SHA-256 through WebCrypto, an abortable sleep.

const abortError = () => {
  const e = new Error("model load aborted");
  e.name = "AbortError";
  return e;
};

// Rejections carry `kind`: "aborted", "status" (with `status`), "network" (retried) or
// "memory" (a buffer could not be allocated: not retried).
const failure = (kind, message, status) => Object.assign(new Error(message), { kind, status });

/// A BYOB read asks for at most this many bytes (the progress events' granularity).
const BYOB_READ_BYTES = 1 << 20;

/// `body`'s BYOB reader, or undefined where the runtime's fetch bodies are not byte streams.
function byobReader(body) {
  try {
    return body.getReader({ mode: "byob" });
  } catch {
    return undefined;
  }
}

/// A body without a size from the manifest (the manifest itself) may be at most this long.
const MAX_UNSIZED_BYTES = 8 << 20;

/// One load's AbortSignal: aborted by the app's `signal`, by `cancel()` (the load failed, so
/// downloads in flight are dropped) or once `deadlineMs` have passed (`timedOut` is then set).
export class LoadSignal {
  constructor(signal, deadlineMs) {
    this.ctl = new AbortController();
    this.signal = this.ctl.signal;
    this.outer = signal;
    this.timedOut = false;
    this.onAbort = () => this.ctl.abort();
    if (signal?.aborted) this.ctl.abort();
    else signal?.addEventListener("abort", this.onAbort, { once: true });
    if (deadlineMs) {
      this.timer = setTimeout(() => {
        this.timedOut = true;
        this.ctl.abort();
      }, deadlineMs);
      // A finished load must not keep Node running until its deadline.
      this.timer.unref?.();
    }
  }
  cancel() {
    this.ctl.abort();
  }
  dispose() {
    clearTimeout(this.timer);
    this.outer?.removeEventListener("abort", this.onAbort);
  }
}

/// One GET into one Uint8Array, pulled by the loader: `next()` resolves to the bytes received
/// so far after each chunk and to -1 once the body is complete; `bytes()` is the result.
/// `expected` (the manifest's size, or undefined) sizes the buffer up front, so a shard is held
/// once while it downloads; the buffer never grows past it. A server that sends nothing for
/// `idleMs` (headers or body) fails the attempt with a retryable "network" error.
export class Download {
  constructor(url, expected, signal, idleMs) {
    this.url = url;
    this.expected = expected;
    this.signal = signal;
    this.idleMs = idleMs;
    this.reader = null;
    this.buf = null;
    this.n = 0;
    // Aborts this request alone (a stall), or with the load.
    this.ctl = new AbortController();
    this.stalled = false;
    this.onAbort = () => this.ctl.abort();
    if (signal?.aborted) this.ctl.abort();
    else signal?.addEventListener("abort", this.onAbort, { once: true });
  }

  done() {
    this.signal?.removeEventListener("abort", this.onAbort);
  }

  fail(e) {
    this.done();
    if (this.signal && this.signal.aborted) return failure("aborted", "aborted");
    if (this.stalled) return failure("network", `no data for ${this.idleMs} ms`);
    if (e instanceof RangeError) return failure("memory", `cannot allocate the download buffer: ${e.message}`);
    return failure("network", String(e && e.message ? e.message : e));
  }

  /// `p`, or a rejection once `idleMs` pass without it settling (the request is aborted).
  async idle(p) {
    if (!this.idleMs) return p;
    let t;
    const stall = new Promise((_, reject) => {
      t = setTimeout(() => {
        this.stalled = true;
        this.ctl.abort();
        reject(new Error("stalled"));
      }, this.idleMs);
    });
    try {
      return await Promise.race([p, stall]);
    } finally {
      clearTimeout(t);
    }
  }

  async next() {
    if (this.signal && this.signal.aborted) throw this.fail();
    if (!this.reader) {
      let res;
      try {
        res = await this.idle(fetch(this.url, { signal: this.ctl.signal, cache: "no-store" }));
      } catch (e) {
        throw this.fail(e);
      }
      if (!res.ok) {
        this.done();
        try {
          await res.body?.cancel();
        } catch {
          // the status is what matters
        }
        throw failure("status", `HTTP ${res.status}`, res.status);
      }
      try {
        if (!res.body) {
          this.buf = new Uint8Array(await this.idle(res.arrayBuffer()));
          this.n = this.buf.length;
          this.reader = { read: async () => ({ done: true }), cancel: async () => {} };
          return this.n;
        }
        this.buf = new Uint8Array(this.expected ?? 1 << 16);
        // With the size known, the body is read straight into the buffer (a BYOB reader): no
        // chunk arrays, which lingered as garbage until the collector ran.
        this.byob = this.expected !== undefined && byobReader(res.body);
        this.reader = this.byob || res.body.getReader();
      } catch (e) {
        throw this.fail(e);
      }
    }
    if (this.byob) return this.nextInto();
    let step;
    try {
      step = await this.idle(this.reader.read());
    } catch (e) {
      throw this.fail(e);
    }
    if (step.done) {
      this.done();
      return -1;
    }
    const value = step.value;
    const cap = this.expected ?? MAX_UNSIZED_BYTES;
    if (this.n + value.length > cap) {
      // More than the manifest says (or than a manifest may be): keep what fits and stop;
      // `bytes()` then says the body was longer, and the size check rejects it. The buffer
      // never grows past `cap`.
      const fits = value.subarray(0, Math.max(0, cap - this.n));
      if (this.n + fits.length > this.buf.length) this.grow(this.n + fits.length);
      this.buf.set(fits, this.n);
      this.n += fits.length;
      this.longer = true;
      this.done();
      await this.reader.cancel().catch(() => {});
      return -1;
    }
    if (this.n + value.length > this.buf.length) {
      try {
        this.grow(Math.min(cap, Math.max(this.n + value.length, this.buf.length * 2)));
      } catch (e) {
        throw this.fail(e);
      }
    }
    this.buf.set(value, this.n);
    this.n += value.length;
    return this.n;
  }

  /// `next()` through the BYOB reader: each read fills the buffer from `n` on (a read moves
  /// the buffer into the stream and back, so `buf` is re-wrapped after each). Bytes beyond
  /// `expected` are read into a one-byte probe and dropped (`bytes()` says there were more).
  async nextInto() {
    const room = this.buf.length - this.n;
    let step;
    try {
      step = await this.idle(this.reader.read(room > 0 ? new Uint8Array(this.buf.buffer, this.n, Math.min(room, BYOB_READ_BYTES)) : new Uint8Array(1)));
    } catch (e) {
      throw this.fail(e);
    }
    if (room > 0 && step.value) this.buf = new Uint8Array(step.value.buffer);
    if (!step.done && room > 0) {
      this.n += step.value.length;
      return this.n;
    }
    this.done();
    if (!step.done) {
      this.longer = true;
      await this.reader.cancel().catch(() => {});
    }
    return -1;
  }

  grow(size) {
    const bigger = new Uint8Array(size);
    bigger.set(this.buf.subarray(0, this.n));
    this.buf = bigger;
  }

  /// The body. One that went on past the expected size comes back one byte longer than that
  /// (its first bytes and a zero), so the loader's size check refuses it: the server's file is
  /// not the manifest's.
  bytes() {
    let out;
    if (this.longer) {
      out = new Uint8Array(this.n + 1);
      out.set(this.buf.subarray(0, this.n));
    } else out = this.n === this.buf.length ? this.buf : this.buf.slice(0, this.n);
    this.buf = null;
    return ownBytes(out);
  }
}

/// Shard arrays only the loader holds (a download's, a cache read's): `releaseBytes` frees
/// their memory at once once the engine has copied them, instead of whenever the garbage
/// collector runs (a 16 MiB shard per file otherwise lingers beside the engine). An array a
/// store keeps (the memory cache, an app's store) or an app passed in is never in it.
const OWNED = new WeakSet();

export function ownBytes(u8) {
  if (u8 instanceof Uint8Array) OWNED.add(u8);
  return u8;
}

export function disownBytes(u8) {
  OWNED.delete(u8);
}

/// Free `u8`'s memory now if the loader owns it and it is its whole buffer; otherwise leave it
/// to the garbage collector. The buffer is transferred into a message that is dropped (posted
/// on a port whose other end is closed), which detaches it the way the browser's own APIs do.
/// `ArrayBuffer.prototype.transfer(0)` detaches only the JS object: in Chromium a buffer that
/// went through a Web API (WebCrypto's digest, an IndexedDB put or read, a BYOB read) stays
/// allocated through the API's wrapper until the garbage collector collects that, and nothing
/// urges it once the buffer looks detached (measured in a Worker: a 100 MB buffer digested, then
/// `transfer(0)`: still resident after a forced collection; posted this way: freed at once).
/// Every shard went through WebCrypto, so each lingered beside the engine. `transfer(0)` where
/// there is no MessageChannel.
export function releaseBytes(u8) {
  if (!OWNED.delete(u8)) return;
  const b = u8.buffer;
  if (u8.byteOffset !== 0 || u8.byteLength !== b.byteLength || b instanceof (globalThis.SharedArrayBuffer ?? class {})) return;
  try {
    if (typeof MessageChannel === "function") {
      const { port1, port2 } = new MessageChannel();
      port2.close();
      port1.postMessage(null, [b]);
      port1.close();
    } else if (typeof b.transfer === "function") b.transfer(0);
  } catch {
    // A buffer the runtime will not detach (DataCloneError): the collector frees it.
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
