// OpenAI-style chat completions over edge-llm's native `chat(messages, options, signal)`:
// `engine.chat.completions.create({ messages, stream, max_tokens, ... })`, the request and
// response shapes of the OpenAI API (and WebLLM). `engine.chat(...)` stays the native token
// stream: `chat` is a function that also carries `completions` (installChat below for Engine,
// js/worker.js for WorkerEngine).
import { InvalidOptionError } from "./errors.js";

// Our finish reasons as OpenAI names them.
const FINISH = { eos: "stop", stopString: "stop", maxTokens: "length" };

// Request fields, and how each maps onto GenerateOptions. Anything else is rejected by name.
const SAMPLING = {
  max_tokens: "maxTokens",
  max_completion_tokens: "maxTokens",
  temperature: "temperature",
  top_p: "topP",
  seed: "seed",
  // Not in OpenAI's API; WebLLM has it.
  repetition_penalty: "repetitionPenalty",
};
const OTHER = ["messages", "stream", "stream_options", "stop", "model", "n", "frequency_penalty", "presence_penalty", "logprobs", "user"];
const KNOWN = [...Object.keys(SAMPLING), ...OTHER];

function invalid(option, reason) {
  return new InvalidOptionError(`invalid option \`${option}\`: ${reason}`, { option });
}

function unknown(option) {
  const fold = (s) => s.replace(/[_-]/g, "").toLowerCase();
  const near = KNOWN.find((k) => fold(k) === fold(option));
  return new InvalidOptionError(`unknown option \`${option}\`: ${near ? `did you mean \`${near}\`?` : `the options are ${KNOWN.join(", ")}`}`, { option });
}

// OpenAI content may be a string or an array of parts; edge-llm models read text only.
function messageText(content, i) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((p) => {
        if (p?.type !== "text") throw invalid(`messages[${i}].content`, `only text parts are supported, got \`${p?.type}\``);
        return p.text;
      })
      .join("");
  }
  throw invalid(`messages[${i}].content`, "must be a string or an array of text parts");
}

/** The request as native `chat` arguments: `{ messages, options, stream, includeUsage, model }`. */
export function parseRequest(body) {
  if (body === null || typeof body !== "object") throw invalid("request", "must be an object");
  for (const k of Object.keys(body)) if (!KNOWN.includes(k)) throw unknown(k);
  if (!Array.isArray(body.messages) || body.messages.length === 0) throw invalid("messages", "must be a non-empty array");
  const messages = body.messages.map((m, i) => {
    if (m === null || typeof m !== "object" || typeof m.role !== "string") throw invalid(`messages[${i}]`, "must be { role, content }");
    return { role: m.role, content: messageText(m.content, i) };
  });
  const options = {};
  for (const [k, name] of Object.entries(SAMPLING)) {
    if (body[k] !== undefined && body[k] !== null) options[name] = body[k];
  }
  if (body.stop !== undefined && body.stop !== null) {
    const stop = typeof body.stop === "string" ? [body.stop] : body.stop;
    if (!Array.isArray(stop) || !stop.every((s) => typeof s === "string")) throw invalid("stop", "must be a string or an array of strings");
    options.stopStrings = stop;
  }
  // Accepted at their neutral values (OpenAI SDKs send them), refused otherwise.
  for (const k of ["frequency_penalty", "presence_penalty"]) {
    if (body[k] !== undefined && body[k] !== null && body[k] !== 0) throw invalid(k, "is not supported (use repetition_penalty)");
  }
  if (body.n !== undefined && body.n !== null && body.n !== 1) throw invalid("n", "only 1 is supported");
  if (body.logprobs) throw invalid("logprobs", "is not supported");
  if (body.stream !== undefined && typeof body.stream !== "boolean") throw invalid("stream", "must be a boolean");
  const so = body.stream_options;
  if (so !== undefined && so !== null) {
    if (typeof so !== "object") throw invalid("stream_options", "must be an object");
    for (const k of Object.keys(so)) if (k !== "include_usage") throw invalid(`stream_options.${k}`, "unknown option");
  }
  return { messages, options, stream: body.stream === true, includeUsage: so?.include_usage === true, model: body.model };
}

let counter = 0;
const completionId = () => `chatcmpl-${Date.now().toString(36)}${(counter++).toString(36)}`;

async function usage(engine) {
  const s = await engine.stats();
  return { prompt_tokens: s.promptTokens, completion_tokens: s.generatedTokens, total_tokens: s.promptTokens + s.generatedTokens };
}

async function* chunks(engine, chat, req, signal) {
  const base = { id: completionId(), object: "chat.completion.chunk", created: Math.floor(Date.now() / 1000), model: req.model ?? engine.modelId ?? "edge-llm" };
  const tokens = chat(req.messages, req.options, signal);
  let first = true;
  for await (const t of tokens) {
    // Empty text: a token that ends mid-character; its text comes with the next one.
    if (t.text === "") continue;
    const delta = first ? { role: "assistant", content: t.text } : { content: t.text };
    first = false;
    yield { ...base, choices: [{ index: 0, delta, logprobs: null, finish_reason: null }] };
  }
  const u = await usage(engine);
  // The last choice chunk carries `usage` too (WebLLM does); `include_usage` adds OpenAI's own
  // usage-only chunk after it.
  yield { ...base, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: FINISH[tokens.finishReason] ?? "stop" }], usage: u };
  if (req.includeUsage) yield { ...base, choices: [], usage: u };
}

/**
 * `{ create(request, { signal }) }` over `engine` (an Engine or a WorkerEngine) whose native
 * token stream is `chat(messages, options, signal)`.
 */
export function completions(engine, chat) {
  return {
    async create(body, { signal } = {}) {
      const req = parseRequest(body);
      if (req.stream) return chunks(engine, chat, req, signal);
      let content = "";
      let finish;
      let created;
      let id;
      let model;
      let usageOf;
      for await (const c of chunks(engine, chat, req, signal)) {
        ({ created, id, model } = c);
        const choice = c.choices[0];
        if (choice?.delta.content) content += choice.delta.content;
        if (choice?.finish_reason) [finish, usageOf] = [choice.finish_reason, c.usage];
      }
      return {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [{ index: 0, message: { role: "assistant", content }, logprobs: null, finish_reason: finish }],
        usage: usageOf,
      };
    },
  };
}

/**
 * Make `Engine.prototype.chat` a getter: a function per engine that is the native `chat` and
 * carries `completions`. Each build (single, threads) has its own `Engine` class.
 */
export function installChat(Engine) {
  const native = Object.getOwnPropertyDescriptor(Engine.prototype, "chat")?.value;
  if (typeof native !== "function") return; // already installed
  const perEngine = new WeakMap();
  Object.defineProperty(Engine.prototype, "chat", {
    configurable: true,
    get() {
      let chat = perEngine.get(this);
      if (!chat) {
        const engine = this;
        chat = (messages, options, signal) => native.call(engine, messages, options, signal);
        chat.completions = completions(engine, chat);
        perEngine.set(this, chat);
      }
      return chat;
    },
  });
}
