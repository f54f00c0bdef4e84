// Shard store backends: plain key-value stores; what to keep, share and evict is decided in
// src/store/ and src/loader.rs. Every backend implements the `ShardStore` interface of the
// .d.ts: shards keyed by SHA-256 (hex), model records keyed by `key` ("id@version").
// Each write is atomic: an IndexedDB transaction, or a temporary file renamed into place.

import { disownBytes, ownBytes } from "./fetch.js";

export const DB_NAME = "edge-llm";
export const DB_VERSION = 1;
export const SHARDS = "shards"; // key: sha256 hex, value: Uint8Array
export const MODELS = "models"; // keyPath: "key", value: the model record

const request = (r) =>
  new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });

// A request that fails inside a transaction (a `put` over quota) fires `error` on the
// transaction while `tx.error` is still null, then aborts it: keep the request's error, so a
// `QuotaExceededError` reaches the loader by name.
const committed = (tx) =>
  new Promise((resolve, reject) => {
    let failed = null;
    tx.oncomplete = () => resolve();
    tx.onerror = (ev) => {
      failed ??= ev?.target?.error ?? tx.error;
    };
    tx.onabort = () => reject(tx.error ?? failed ?? new DOMException("transaction aborted", "AbortError"));
  });

const HEX64 = /^[0-9a-f]{64}$/;
/// After `store.put(sha256, bytes)`: a store other than the built-in IndexedDB and file stores
/// (which write a copy) may keep `bytes` (the memory store does), so the loader no longer frees it.
export function afterPut(store, bytes) {
  if (!(store instanceof IndexedDbStore || store instanceof FsStore)) disownBytes(bytes);
}

/// Every store takes only SHA-256 hex as a shard name: one from a planted record or a bad
/// caller never becomes a path or a key elsewhere.
const shardName = (sha256) => {
  if (typeof sha256 !== "string" || !HEX64.test(sha256)) {
    throw Object.assign(new Error(`not a shard name (64 lower-case hex digits): ${String(sha256).slice(0, 80)}`), { name: "StoreError" });
  }
  return sha256;
};

export class IndexedDbStore {
  constructor(name = DB_NAME) {
    this.name = name;
    this.db = null;
  }

  async open() {
    if (this.db) return this.db;
    const r = indexedDB.open(this.name, DB_VERSION);
    r.onupgradeneeded = () => {
      const db = r.result;
      if (!db.objectStoreNames.contains(SHARDS)) db.createObjectStore(SHARDS);
      if (!db.objectStoreNames.contains(MODELS)) db.createObjectStore(MODELS, { keyPath: "key" });
    };
    const db = await request(r);
    // Another tab upgrading or deleting the database: let it, reopen on next use.
    db.onversionchange = () => {
      db.close();
      if (this.db === db) this.db = null;
    };
    this.db = db;
    return db;
  }

  async tx(names, mode, fn) {
    const db = await this.open();
    const tx = db.transaction(names, mode);
    const done = committed(tx);
    let result;
    try {
      result = await fn(tx);
    } catch (e) {
      try {
        tx.abort();
      } catch {
        // already finished
      }
      done.catch(() => {});
      throw e;
    }
    await done;
    return result;
  }

  async get(sha256) {
    shardName(sha256);
    const v = await this.tx(SHARDS, "readonly", (tx) => request(tx.objectStore(SHARDS).get(sha256)));
    if (v === undefined) return undefined;
    // A structured clone of the stored value: the loader's own.
    return ownBytes(v instanceof Uint8Array ? v : new Uint8Array(v));
  }

  async put(sha256, bytes) {
    shardName(sha256);
    return this.tx(SHARDS, "readwrite", (tx) => {
      tx.objectStore(SHARDS).put(bytes, sha256);
    });
  }

  async delete(sha256) {
    shardName(sha256);
    return this.tx(SHARDS, "readwrite", (tx) => {
      tx.objectStore(SHARDS).delete(sha256);
    });
  }

  keys() {
    return this.tx(SHARDS, "readonly", (tx) => request(tx.objectStore(SHARDS).getAllKeys()));
  }

  models() {
    return this.tx(MODELS, "readonly", (tx) => request(tx.objectStore(MODELS).getAll()));
  }

  putModel(record) {
    return this.tx(MODELS, "readwrite", (tx) => {
      tx.objectStore(MODELS).put(record);
    });
  }

  deleteModel(key) {
    return this.tx(MODELS, "readwrite", (tx) => {
      tx.objectStore(MODELS).delete(key);
    });
  }

  estimate() {
    return storageEstimate();
  }

  close() {
    this.db?.close();
    this.db = null;
  }
}

/// Shards kept in this JS realm for its lifetime (`cache: "memory"`): a page reloading a model
/// does not download it again, at the cost of holding it twice (here and in the engine).
export class MemoryStore {
  constructor() {
    this.shards = new Map();
    this.records = new Map();
  }
  async get(sha256) {
    return this.shards.get(shardName(sha256));
  }
  async put(sha256, bytes) {
    this.shards.set(shardName(sha256), bytes);
  }
  async delete(sha256) {
    this.shards.delete(shardName(sha256));
  }
  async keys() {
    return [...this.shards.keys()];
  }
  async models() {
    return [...this.records.values()];
  }
  async putModel(record) {
    this.records.set(record.key, record);
  }
  async deleteModel(key) {
    this.records.delete(key);
  }
}

let sharedMemory = null;
export function sharedMemoryStore() {
  sharedMemory ??= new MemoryStore();
  return sharedMemory;
}

const fsQuota = (e) =>
  e && (e.code === "ENOSPC" || e.code === "EDQUOT") ? Object.assign(new Error(String(e.message)), { name: "QuotaExceededError" }) : e;

/// Node (>= 20) and Deno: `dir/shards/<sha256>` and `dir/models/<key>.json`, each written to a
/// temporary name and renamed, so a killed process leaves no half file under a real name.
export class FsStore {
  constructor(dir) {
    if (typeof dir !== "string" || dir === "") throw Object.assign(new Error("FsStore needs a directory"), { name: "InvalidOptionError" });
    this.dir = dir.replace(/\/+$/, "");
    this.fs = null;
  }

  async io() {
    if (!this.fs) {
      this.fs = await import("node:fs/promises");
      await this.fs.mkdir(`${this.dir}/shards`, { recursive: true });
      await this.fs.mkdir(`${this.dir}/models`, { recursive: true });
    }
    return this.fs;
  }

  async write(path, data) {
    const fs = await this.io();
    const tmp = `${path}.${Date.now()}-${Math.random().toString(36).slice(2)}.tmp`;
    try {
      await fs.writeFile(tmp, data);
      await fs.rename(tmp, path);
    } catch (e) {
      await fs.rm(tmp, { force: true }).catch(() => {});
      throw fsQuota(e);
    }
  }

  async get(sha256) {
    shardName(sha256);
    const fs = await this.io();
    try {
      const b = await fs.readFile(`${this.dir}/shards/${sha256}`);
      return ownBytes(new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
    } catch (e) {
      if (e && e.code === "ENOENT") return undefined;
      throw e;
    }
  }

  async put(sha256, bytes) {
    return this.write(`${this.dir}/shards/${shardName(sha256)}`, bytes);
  }

  async delete(sha256) {
    shardName(sha256);
    const fs = await this.io();
    await fs.rm(`${this.dir}/shards/${sha256}`, { force: true });
  }

  /// Remove the temporary files of writes that were killed (older than `maxAgeMs`, so a write
  /// in progress in another process is left alone).
  async sweep(maxAgeMs = 10 * 60 * 1000) {
    const fs = await this.io();
    for (const sub of ["shards", "models"]) {
      for (const n of await fs.readdir(`${this.dir}/${sub}`)) {
        if (!n.endsWith(".tmp")) continue;
        const p = `${this.dir}/${sub}/${n}`;
        const st = await fs.stat(p).catch(() => null);
        if (st && Date.now() - st.mtimeMs > maxAgeMs) await fs.rm(p, { force: true });
      }
    }
  }

  async keys() {
    const fs = await this.io();
    return (await fs.readdir(`${this.dir}/shards`)).filter((n) => HEX64.test(n));
  }

  async models() {
    const fs = await this.io();
    const out = [];
    for (const n of await fs.readdir(`${this.dir}/models`)) {
      if (!n.endsWith(".json")) continue;
      try {
        out.push(JSON.parse(await fs.readFile(`${this.dir}/models/${n}`, "utf8")));
      } catch {
        // unreadable record: ignored (its shards are re-verified on use anyway)
      }
    }
    return out;
  }

  putModel(record) {
    return this.write(`${this.dir}/models/${encodeURIComponent(record.key)}.json`, JSON.stringify(record));
  }

  async deleteModel(key) {
    const fs = await this.io();
    await fs.rm(`${this.dir}/models/${encodeURIComponent(key)}.json`, { force: true });
  }

  async estimate() {
    const fs = await this.io();
    let usage = 0;
    for (const k of await this.keys()) usage += (await fs.stat(`${this.dir}/shards/${k}`)).size;
    if (typeof fs.statfs !== "function") return undefined;
    const s = await fs.statfs(this.dir);
    return { usage, quota: usage + s.bavail * s.bsize };
  }
}

/// `navigator.storage.estimate()`, or undefined where there is none.
export async function storageEstimate() {
  const s = globalThis.navigator && globalThis.navigator.storage;
  if (!s || typeof s.estimate !== "function") return undefined;
  const { usage = 0, quota = 0 } = await s.estimate();
  return { usage, quota };
}

/// Ask the browser not to evict our origin's storage under pressure; best effort.
export function requestPersist() {
  const s = globalThis.navigator && globalThis.navigator.storage;
  if (s && typeof s.persist === "function") s.persist().catch(() => {});
}
