// Types of js/errors.js. A class matches any Error whose `name` is its name (across the Worker
// boundary too): `if (e instanceof InvalidOptionError) console.log(e.option)`.
export type ErrorName =
  | "AbortError"
  | "ChatTemplateError"
  | "ContextOverflowError"
  | "EngineDisposedError"
  | "GpuDeviceLostError"
  | "IncompatibleModelError"
  | "InferenceError"
  | "IntegrityError"
  | "InvalidManifestError"
  | "InvalidOptionError"
  | "InvalidStateError"
  | "IoError"
  | "NetworkError"
  | "NotSupportedError"
  | "QuotaError"
  | "StoreError"
  | "TimeoutError"
  | "TokenizerError"
  | "UnsupportedBackendError"
  | "WorkerError";
export const ERROR_NAMES: readonly ErrorName[];
export class EdgeLlmError extends Error {
  name: ErrorName;
  static readonly errorName: ErrorName | undefined;
  constructor(message?: string, fields?: object);
}
export class AbortError extends EdgeLlmError { name: "AbortError" }
export class ChatTemplateError extends EdgeLlmError { name: "ChatTemplateError" }
export class ContextOverflowError extends EdgeLlmError { name: "ContextOverflowError" }
export class EngineDisposedError extends EdgeLlmError { name: "EngineDisposedError" }
export class GpuDeviceLostError extends EdgeLlmError { name: "GpuDeviceLostError" }
export class IncompatibleModelError extends EdgeLlmError { name: "IncompatibleModelError" }
export class InferenceError extends EdgeLlmError { name: "InferenceError" }
export class IntegrityError extends EdgeLlmError { name: "IntegrityError" }
export class InvalidManifestError extends EdgeLlmError { name: "InvalidManifestError" }
export class InvalidOptionError extends EdgeLlmError {
  name: "InvalidOptionError";
  /** The option (or request field) at fault. */
  option?: string;
}
export class InvalidStateError extends EdgeLlmError { name: "InvalidStateError" }
export class IoError extends EdgeLlmError { name: "IoError" }
export class NetworkError extends EdgeLlmError { name: "NetworkError" }
export class NotSupportedError extends EdgeLlmError { name: "NotSupportedError" }
export class QuotaError extends EdgeLlmError {
  name: "QuotaError";
  needed?: number;
  available?: number;
}
export class StoreError extends EdgeLlmError { name: "StoreError" }
export class TimeoutError extends EdgeLlmError { name: "TimeoutError" }
export class TokenizerError extends EdgeLlmError { name: "TokenizerError" }
export class UnsupportedBackendError extends EdgeLlmError { name: "UnsupportedBackendError" }
export class WorkerError extends EdgeLlmError { name: "WorkerError" }
