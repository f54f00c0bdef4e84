// Types of js/chat.js: OpenAI-style chat completions (the shapes of the OpenAI API and WebLLM).
import type { ChatMessage, GenerateOptions, TokenStream } from "./edge_llm.js";

export interface ChatCompletionMessageParam {
  role: "system" | "user" | "assistant" | (string & {});
  /** A string, or text parts (`{ type: "text", text }`). */
  content: string | { type: "text"; text: string }[];
}
/** `create`'s request. Any other field throws `InvalidOptionError` naming it. */
export interface ChatCompletionRequestBase {
  messages: ChatCompletionMessageParam[];
  /** Default: the model's manifest `generation.max_new_tokens`. */
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  /** Not in OpenAI's API (WebLLM has it): 1 disables it. */
  repetition_penalty?: number | null;
  /** Echoed in the response (default: the model id). */
  model?: string;
  /** Only 1. */
  n?: 1 | null;
  /** Only 0 (not supported otherwise). */
  frequency_penalty?: 0 | null;
  presence_penalty?: 0 | null;
  logprobs?: false | null;
  user?: string;
}
export interface ChatCompletionRequestStreaming extends ChatCompletionRequestBase {
  stream: true;
  /** `include_usage: true` adds a last chunk with `choices: []` and `usage`. */
  stream_options?: { include_usage?: boolean } | null;
}
export interface ChatCompletionRequestNonStreaming extends ChatCompletionRequestBase {
  stream?: false | null;
}
export type ChatCompletionRequest = ChatCompletionRequestStreaming | ChatCompletionRequestNonStreaming;
export type ChatCompletionFinishReason = "stop" | "length";
export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}
export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: {
    index: number;
    delta: { role?: "assistant"; content?: string };
    logprobs: null;
    finish_reason: ChatCompletionFinishReason | null;
  }[];
  /** On the chunk with `finish_reason`, and on the `include_usage` chunk. */
  usage?: CompletionUsage;
}
export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: {
    index: number;
    message: { role: "assistant"; content: string };
    logprobs: null;
    finish_reason: ChatCompletionFinishReason;
  }[];
  usage: CompletionUsage;
}
export interface RequestOptions {
  /** Aborts the generation (the stream, or the promise, rejects with its reason). */
  signal?: AbortSignal;
}
export interface Completions {
  create(request: ChatCompletionRequestStreaming, options?: RequestOptions): Promise<AsyncIterable<ChatCompletionChunk>>;
  create(request: ChatCompletionRequestNonStreaming, options?: RequestOptions): Promise<ChatCompletion>;
  create(request: ChatCompletionRequest, options?: RequestOptions): Promise<AsyncIterable<ChatCompletionChunk> | ChatCompletion>;
}
/** `engine.chat`: the native token stream, carrying the OpenAI-style `completions`. */
export interface Chat<Stream = TokenStream> {
  /** Stream the assistant's reply to `messages`, rendered with the model's chat template. The
   *  longest common token prefix with the current conversation is reused, not recomputed. */
  (messages: ChatMessage[], options?: GenerateOptions, signal?: AbortSignal): Stream;
  readonly completions: Completions;
}
