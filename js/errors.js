// The errors edge-llm throws, as classes an app can `instanceof` (or switch on `error.name`).
// The engine (wasm) and the Worker proxy throw plain `Error`s whose `name` is one of these
// (`Error::name()` in src/error.rs; tests/error_names.rs keeps the list complete), so a class
// matches by name, not by prototype: that holds across the Worker boundary and bundlers.

/** Every error name edge-llm uses. */
export const ERROR_NAMES = Object.freeze([
  "AbortError",
  "ChatTemplateError",
  "ContextOverflowError",
  "EngineDisposedError",
  "GpuDeviceLostError",
  "IncompatibleModelError",
  "InferenceError",
  "IntegrityError",
  "InvalidManifestError",
  "InvalidOptionError",
  "InvalidStateError",
  "IoError",
  "NetworkError",
  "NotSupportedError",
  "QuotaError",
  "StoreError",
  "TimeoutError",
  "TokenizerError",
  "UnsupportedBackendError",
  "WorkerError",
]);

/** Base of the classes below: `e instanceof EdgeLlmError` is true for any of them. */
export class EdgeLlmError extends Error {
  /** The `name` this class matches (`undefined` on the base: any of `ERROR_NAMES`). */
  static errorName;

  constructor(message, fields) {
    super(message);
    this.name = new.target.errorName ?? "Error";
    Object.assign(this, fields);
  }

  static [Symbol.hasInstance](e) {
    if (!(e instanceof Error)) return false;
    return this.errorName === undefined ? ERROR_NAMES.includes(e.name) : e.name === this.errorName;
  }
}

function named(name) {
  const C = class extends EdgeLlmError {
    static errorName = name;
  };
  // Bundlers may rename classes: keep the class's own name for stack traces and logs.
  Object.defineProperty(C, "name", { value: name });
  return C;
}

export const AbortError = named("AbortError");
export const ChatTemplateError = named("ChatTemplateError");
export const ContextOverflowError = named("ContextOverflowError");
export const EngineDisposedError = named("EngineDisposedError");
export const GpuDeviceLostError = named("GpuDeviceLostError");
export const IncompatibleModelError = named("IncompatibleModelError");
export const InferenceError = named("InferenceError");
export const IntegrityError = named("IntegrityError");
export const InvalidManifestError = named("InvalidManifestError");
export const InvalidOptionError = named("InvalidOptionError");
export const InvalidStateError = named("InvalidStateError");
export const IoError = named("IoError");
export const NetworkError = named("NetworkError");
export const NotSupportedError = named("NotSupportedError");
export const QuotaError = named("QuotaError");
export const StoreError = named("StoreError");
export const TimeoutError = named("TimeoutError");
export const TokenizerError = named("TokenizerError");
export const UnsupportedBackendError = named("UnsupportedBackendError");
export const WorkerError = named("WorkerError");
