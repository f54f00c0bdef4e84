// Types of the package entry (js/index.js): the wasm-bindgen module's, with `engine.chat`
// carrying `completions` (js/chat.d.ts), and the error classes (js/errors.d.ts).
import type { Chat } from "./chat.js";

export * from "./edge_llm.js";
import type { InitInput, InitOutput } from "./edge_llm.js";
/** Load the wasm module: the `.wasm` next to this file (read from disk in Node), or `input`. */
export default function init(input?: { module_or_path: InitInput | Promise<InitInput> } | InitInput | Promise<InitInput>): Promise<InitOutput>;
export * from "./errors.js";
export type * from "./chat.js";

declare module "./edge_llm.js" {
  interface Engine {
    /** `engine.chat(messages, options, signal)` streams tokens;
     *  `engine.chat.completions.create(request)` is the OpenAI-style API over it. */
    readonly chat: Chat;
  }
}
