/**
 * Text generation with a KV cache: `generate(model, prompt, options)` prefills the prompt in
 * one pass, then decodes one token per step, yielding each token with the text it adds, and
 * records prefill and decode throughput.
 *
 * @module
 */
import type { Device } from "../device.ts";
import type { Fp4Weights } from "../kernels/fp4_linear.ts";
import type { InputScheme } from "../pipeline/act_quant.ts";
import type { Linear } from "../model/forward.ts";
import type { LlamaModel } from "../model/llama.ts";
import type { HfTokenizer } from "../model/tokenizer.ts";
import { type ActivationDType, DecodeEngine } from "./engine.ts";
import { checkSampling, sampleToken, uniformAt } from "./sampling.ts";

/** Options of {@linkcode generate}. */
export interface GenerateOptions {
  /** Most new tokens to produce (default 64). */
  maxTokens?: number;
  /** Softmax temperature; 0 (the default) is greedy. */
  temperature?: number;
  /** Nucleus mass (default 1: no truncation). */
  topP?: number;
  /** Seed of the sampling generator (default 0). */
  seed?: number;
  /** Where to run (default `"cpu"`). */
  device?: Device;
  /** Turns a string prompt into ids and tokens into text (needed for string prompts). */
  tokenizer?: HfTokenizer;
  /** Generation stops after producing one of these ids (e.g. the model's EOS). */
  stopTokens?: readonly number[];
  /** KV cache storage (see {@linkcode DecodeEngine.create}). */
  cacheDtype?: ActivationDType;
  /** FP4 weights by linear module name, run by the FP4 kernels instead of the dense weights. */
  quantized?: ReadonlyMap<string, Fp4Weights>;
  /** Input schemes of a quantized checkpoint (`loadQuantized(dir).schemes`): rotations and
   * W4A4 activation quantization run on the engine's device, as `eval` runs them. */
  schemes?: ReadonlyMap<string, InputScheme>;
  /** CPU only: a linear-layer hook instead of the engine's own linear layers. */
  linear?: Linear;
}

/** One generated token. */
export interface GeneratedToken {
  /** The token id. */
  token: number;
  /** The text this token completes (may be empty while a multi-byte character is pending). */
  text: string;
}

/** Throughput of one generation. */
export interface GenerationStats {
  /** Prompt tokens run in the prefill pass. */
  promptTokens: number;
  /** Seconds of the prefill pass (forward over the prompt plus choosing the first token). */
  prefillSeconds: number;
  /** promptTokens / prefillSeconds. */
  prefillTokensPerSecond: number;
  /** Tokens produced (the first comes from the prefill pass). */
  generatedTokens: number;
  /** Tokens produced by single-token steps (generatedTokens - 1). */
  decodeSteps: number;
  /**
   * Seconds of the decode steps (forward, token choice, detokenization excluded). Greedy
   * decoding runs its steps in chunks (DecodeEngine.greedy): after a stop token this includes
   * the rest of its chunk.
   */
  decodeSeconds: number;
  /** decodeSteps / decodeSeconds (NaN when no step ran). */
  decodeTokensPerSecond: number;
}

/**
 * A running generation: iterate it (once) for the tokens; {@linkcode stats} is set when the
 * iteration ends.
 */
export class Generation implements AsyncIterable<GeneratedToken> {
  #run: (g: Generation) => AsyncGenerator<GeneratedToken>;
  #started = false;
  /** Throughput, available after the iteration has finished. */
  stats: GenerationStats | undefined;

  /** @ignore */
  constructor(run: (g: Generation) => AsyncGenerator<GeneratedToken>) {
    this.#run = run;
  }

  /** The tokens, as they are produced. */
  [Symbol.asyncIterator](): AsyncIterator<GeneratedToken> {
    if (this.#started) throw new Error("a Generation can be iterated only once");
    this.#started = true;
    return this.#run(this);
  }
}

function positiveInt(v: number, what: string): number {
  if (!Number.isSafeInteger(v) || v < 1) {
    throw new Error(`${what} must be an integer >= 1, got ${v}`);
  }
  return v;
}

// Streams text by decoding all generated ids each time and emitting the new suffix; a trailing
// U+FFFD (an incomplete UTF-8 sequence of byte-level tokens) is held back until completed.
function textStream(tokenizer: HfTokenizer | undefined): (ids: number[], final: boolean) => string {
  let emitted = "";
  return (ids, final) => {
    if (!tokenizer) return "";
    let text = tokenizer.decode(ids);
    if (!final) { while (text.endsWith("\uFFFD")) text = text.slice(0, -1); }
    if (!text.startsWith(emitted)) {
      // A later token re-segmented earlier text; emit nothing until the prefix is stable.
      return "";
    }
    const add = text.slice(emitted.length);
    emitted = text;
    return add;
  };
}

/**
 * Generates up to `options.maxTokens` tokens after `prompt` (a string, with
 * `options.tokenizer`, or token ids). Throws before any work when the prompt is empty or too
 * long, `maxTokens` would run past the model's context (max_position_embeddings), or the
 * options are invalid; the device is checked when iteration starts.
 *
 * @example
 * ```ts
 * import { generate } from "./generate.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 10, max_position_embeddings: 16,
 * }));
 * const run = generate(model, new Int32Array([1, 2, 3]), { maxTokens: 4 });
 * const tokens: number[] = [];
 * for await (const t of run) tokens.push(t.token);
 * console.assert(tokens.length === 4 && run.stats!.decodeSteps === 3);
 * ```
 */
export function generate(
  model: LlamaModel,
  prompt: string | Int32Array,
  options: GenerateOptions = {},
): Generation {
  const maxTokens = positiveInt(options.maxTokens ?? 64, "maxTokens");
  checkSampling(options);
  let ids: Int32Array;
  if (typeof prompt === "string") {
    if (!options.tokenizer) throw new Error("generate: a string prompt needs options.tokenizer");
    ids = options.tokenizer.encode(prompt, { addSpecialTokens: true });
  } else {
    ids = prompt;
  }
  if (ids.length === 0) throw new Error("generate: the prompt has no tokens");
  const ctx = model.config.maxPositionEmbeddings;
  if (ids.length > ctx) {
    throw new Error(
      `generate: the prompt has ${ids.length} tokens, more than the model's context of ${ctx}`,
    );
  }
  // The last generated token is never run, so prompt + maxTokens - 1 positions are needed.
  if (ids.length + maxTokens - 1 > ctx) {
    throw new Error(
      `generate: ${ids.length} prompt tokens + ${maxTokens} new tokens exceed the model's context of ${ctx} (at most ${
        ctx - ids.length + 1
      } new tokens fit)`,
    );
  }
  const stop = new Set(options.stopTokens ?? []);
  const seed = options.seed ?? 0;
  const sampling = { temperature: options.temperature ?? 0, topP: options.topP ?? 1 };
  const greedy = sampling.temperature === 0;

  return new Generation(async function* (self: Generation) {
    using engine = DecodeEngine.create(model, {
      device: options.device,
      contextLength: ids.length + maxTokens - 1,
      cacheDtype: options.cacheDtype,
      quantized: options.quantized,
      schemes: options.schemes,
      linear: options.linear,
    });
    const text = textStream(options.tokenizer);
    const generated: number[] = [];
    const t0 = performance.now();
    await engine.forward(ids);
    // Greedy: the device chooses each next input itself (DecodeEngine.greedy), so steps run in
    // chunks without a round trip through the host; sampling needs the logits on the host.
    const greedyTokens = greedy ? engine.greedy(maxTokens) : undefined;
    const next = async (step: number) => {
      if (greedyTokens) {
        const r = await greedyTokens.next();
        if (r.done) throw new Error("generate: the greedy decode ended early");
        return r.value;
      }
      if (step > 0) await engine.forward(new Int32Array([generated[generated.length - 1]]));
      return sampleToken(engine.logits(), sampling, uniformAt(seed, step));
    };
    let token = await next(0);
    const prefillSeconds = (performance.now() - t0) / 1000;
    let decodeSeconds = 0;
    let steps = 0;
    const finish = () => {
      self.stats = {
        promptTokens: ids.length,
        prefillSeconds,
        prefillTokensPerSecond: ids.length / prefillSeconds,
        generatedTokens: generated.length,
        decodeSteps: steps,
        decodeSeconds,
        decodeTokensPerSecond: steps > 0 ? steps / decodeSeconds : NaN,
      };
    };
    try {
      for (;;) {
        generated.push(token);
        const done = generated.length >= maxTokens || stop.has(token);
        yield { token, text: text(generated, done) };
        if (done) break;
        const t1 = performance.now();
        token = await next(generated.length);
        decodeSeconds += (performance.now() - t1) / 1000;
        steps++;
      }
    } finally {
      await greedyTokens?.return();
      finish();
    }
  });
}
