// The demo's saved conversation in IndexedDB: one record per model (folder + model hash),
// holding `engine.saveState()` bytes, the chat messages and the reply in progress.
const DB_NAME = "edge-llm-demo";
const DB_VERSION = 1;
const STORE = "conversations";

function open() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, DB_VERSION);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function run(mode, f) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const req = f(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

/** @returns {Promise<{ state: Uint8Array, messages: object[], reply: string, unfinished: boolean } | undefined>} */
export const loadConversation = (key) => run("readonly", (s) => s.get(key));
export const saveConversation = (key, value) => run("readwrite", (s) => s.put(value, key));
export const clearConversation = (key) => run("readwrite", (s) => s.delete(key));
