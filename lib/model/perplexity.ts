/**
 * Perplexity under the protocol of DESIGN.md: tokenize the whole text without special tokens,
 * cut it into consecutive non-overlapping windows of 512 tokens (the remainder is dropped),
 * score every next-token prediction inside each window (511 per window), and report
 * exp(mean NLL).
 *
 * @module
 */
import { forwardNll, type ForwardOptions } from "./forward.ts";
import type { LlamaModel } from "./llama.ts";

/** Tokens per evaluation window in the protocol. */
export const WINDOW_TOKENS = 512;

/** Options of {@linkcode perplexity}. */
export interface PerplexityOptions extends ForwardOptions {
  /** Window length (default {@linkcode WINDOW_TOKENS}). */
  windowTokens?: number;
  /** Evaluate only the first `maxWindows` windows (default: all). */
  maxWindows?: number;
  /**
   * Scores one window (the NLL of each of its next-token predictions) instead of the native
   * CPU forward pass; e.g. `(w) => engine.nll(w)` of a CUDA `DecodeEngine`.
   */
  scoreWindow?: (window: Int32Array) => Promise<Float32Array>;
  /** Called after each window with the count done, the total and the running perplexity. */
  onProgress?: (done: number, total: number, ppl: number) => void;
}

/** The outcome of a perplexity evaluation. */
export interface PerplexityResult {
  /** exp(mean NLL) over all scored predictions. */
  ppl: number;
  /** Mean NLL in nats. */
  meanNll: number;
  /** Number of scored predictions (windows x (window - 1)). */
  predictions: number;
  /** Number of tokens in the evaluated windows. */
  tokens: number;
  /** Number of windows evaluated. */
  windows: number;
}

/**
 * The windows of `ids`: consecutive, non-overlapping, `windowTokens` each, remainder dropped.
 *
 * @example
 * ```ts
 * import { evaluationWindows } from "./perplexity.ts";
 * const w = evaluationWindows(new Int32Array(10), 4);
 * console.assert(w.length === 2 && w[1].length === 4);
 * ```
 */
export function evaluationWindows(ids: Int32Array, windowTokens = WINDOW_TOKENS): Int32Array[] {
  if (!Number.isInteger(windowTokens) || windowTokens < 2) {
    throw new Error(`window length ${windowTokens} must be an integer >= 2`);
  }
  const n = Math.floor(ids.length / windowTokens);
  return Array.from(
    { length: n },
    (_, i) => ids.subarray(i * windowTokens, (i + 1) * windowTokens),
  );
}

/**
 * Perplexity of `model` on token ids `ids` (already tokenized without special tokens).
 * Throws when the ids do not fill a single window.
 *
 * @example
 * ```ts
 * import { perplexity } from "./perplexity.ts";
 * import { LlamaModel } from "./llama.ts";
 * import { parseLlamaConfig } from "./config.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 4,
 * }));
 * const ids = Int32Array.from({ length: 20 }, (_, i) => i % 4);
 * const r = await perplexity(model, ids, { windowTokens: 8 });
 * console.assert(r.windows === 2 && r.predictions === 14 && r.ppl > 1);
 * ```
 */
export async function perplexity(
  model: LlamaModel,
  ids: Int32Array,
  options: PerplexityOptions = {},
): Promise<PerplexityResult> {
  const windowTokens = options.windowTokens ?? WINDOW_TOKENS;
  let windows = evaluationWindows(ids, windowTokens);
  if (options.maxWindows !== undefined) {
    if (!Number.isInteger(options.maxWindows) || options.maxWindows < 1) {
      throw new Error(`maxWindows ${options.maxWindows} must be a positive integer`);
    }
    windows = windows.slice(0, options.maxWindows);
  }
  if (windows.length === 0) {
    throw new Error(
      `the text has ${ids.length} tokens, fewer than one window of ${windowTokens}`,
    );
  }
  let sum = 0;
  let count = 0;
  for (const [i, w] of windows.entries()) {
    const nll = options.scoreWindow
      ? await options.scoreWindow(w)
      : await forwardNll(model, w, options);
    if (nll.length !== w.length - 1) {
      throw new Error(`window ${i}: ${nll.length} scores for ${w.length - 1} predictions`);
    }
    for (const v of nll) sum += v;
    count += nll.length;
    if (!Number.isFinite(sum)) throw new Error(`window ${i}: the model produced a non-finite NLL`);
    options.onProgress?.(i + 1, windows.length, Math.exp(sum / count));
  }
  const meanNll = sum / count;
  return {
    ppl: Math.exp(meanNll),
    meanNll,
    predictions: count,
    tokens: windows.length * windowTokens,
    windows: windows.length,
  };
}
