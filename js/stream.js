// Turns a wasm `Generation` (`stepAsync()` per token: on the CPU backend it is ready at once, on
// WebGPU it waits for the GPU) into an async iterator that yields to the event loop between
// tokens, so pages stay responsive while a model generates.
const yieldNow = () =>
  globalThis.scheduler && typeof globalThis.scheduler.yield === "function"
    ? globalThis.scheduler.yield()
    : new Promise((resolve) => setTimeout(resolve, 0));

// The iterator's `finishReason` is why the generation ended ("eos", "stopString",
// "maxTokens"; js/chat.js maps it to OpenAI's finish_reason), undefined until then.
export function toAsyncIterator(generation, signal) {
  let done = false;
  const it = {
    finishReason: undefined,
  };
  const finish = () => {
    if (!done) {
      done = true;
      it.finishReason = generation.finishReason();
      generation.free();
    }
    return { done: true, value: undefined };
  };
  return Object.assign(it, {
    [Symbol.asyncIterator]() {
      return this;
    },
    async next() {
      if (done) return { done: true, value: undefined };
      await yieldNow();
      if (signal && signal.aborted) {
        finish();
        throw signal.reason ?? new DOMException("generation aborted", "AbortError");
      }
      let value;
      try {
        value = await generation.stepAsync();
      } catch (e) {
        finish();
        throw e;
      }
      return value === undefined ? finish() : { done: false, value };
    },
    async return() {
      return finish();
    },
  });
}

export const now = () => performance.now();
