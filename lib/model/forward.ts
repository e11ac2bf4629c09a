/**
 * The Llama forward pass over one window of tokens on the native CPU backend: embedding,
 * per layer RMSNorm -> attention (RoPE, causal GQA) -> residual -> RMSNorm -> SwiGLU MLP ->
 * residual, final RMSNorm, LM head. Activations are f32; weights stay f32 or bf16 and every
 * product accumulates in f32, as transformers does in float32.
 *
 * Every linear layer goes through one function, {@linkcode Linear}, named by its Hugging Face
 * module name: the quantization pipeline swaps it for a quantized or fake-quantized version,
 * or wraps it to capture its inputs for Hessians.
 *
 * @module
 */
import { check, checkAsync, native } from "../../ffi/library.ts";
import type { LlamaModel, Weight } from "./llama.ts";
import { ropeInvFreq } from "./config.ts";

/**
 * A linear layer: `x` is `[rows, in]` f32, the result `[rows, out]` f32, for module `name`
 * (e.g. `model.layers.0.self_attn.q_proj`, `lm_head`).
 */
export type Linear = (name: string, x: Float32Array, rows: number) => Promise<Float32Array>;

/** Options of the forward functions. */
export interface ForwardOptions {
  /** Replaces every linear layer (default: {@linkcode nativeLinear} of the model's weights). */
  linear?: Linear;
}

const CPU = 0;
const ABI_F32 = 0;
const ABI_BF16 = 2;

function ptr(a: Float32Array | Uint16Array | Int32Array): Deno.PointerValue {
  return Deno.UnsafePointer.of(a as BufferSource);
}

function abiOf(w: Weight): number {
  return w.dtype === "bf16" ? ABI_BF16 : ABI_F32;
}

/**
 * `x @ w^T` on the native backend: `x` `[rows, in]` f32, `w` `[out, in]` f32 or bf16; f32
 * accumulation. The output is poisoned with NaN before the call so an unwritten element shows.
 *
 * @example
 * ```ts
 * import { matmulWeight } from "./forward.ts";
 * const y = await matmulWeight(new Float32Array([1, 2]), 1, {
 *   dtype: "f32", shape: [1, 2], data: new Float32Array([3, 4]),
 * });
 * console.assert(y[0] === 11);
 * ```
 */
export async function matmulWeight(
  x: Float32Array,
  rows: number,
  w: Weight,
): Promise<Float32Array> {
  const [out, inF] = w.shape;
  if (w.shape.length !== 2 || x.length !== rows * inF) {
    throw new Error(
      `linear: input of ${x.length} values is not [${rows}, ${inF}] for weight [${
        w.shape.join(", ")
      }]`,
    );
  }
  const y = new Float32Array(rows * out).fill(NaN);
  await checkAsync(
    native().fp4_linear(
      CPU,
      ptr(x),
      ptr(w.data),
      abiOf(w),
      ptr(y),
      BigInt(rows),
      BigInt(out),
      BigInt(inF),
    ),
    "fp4_linear",
    [x, w, y],
  );
  return y;
}

/**
 * The default {@linkcode Linear}: the model's own weight `name + ".weight"` through the native
 * matmul.
 *
 * @example
 * ```ts
 * import { nativeLinear } from "./forward.ts";
 * import { LlamaModel } from "./llama.ts";
 * import { parseLlamaConfig } from "./config.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 4,
 * }));
 * const y = await nativeLinear(model)("lm_head", new Float32Array(8).fill(1), 1);
 * console.assert(y.length === 4);
 * ```
 */
export function nativeLinear(model: LlamaModel): Linear {
  return (name, x, rows) => matmulWeight(x, rows, model.weight(`${name}.weight`));
}

// Wraps a hook so that a result of the wrong size fails here, naming the layer, rather than
// corrupting memory in the next native call.
function checked(linear: Linear, model: LlamaModel): Linear {
  return async (name, x, rows) => {
    const y = await linear(name, x, rows);
    const out = model.weight(`${name}.weight`).shape[0];
    if (!(y instanceof Float32Array) || y.length !== rows * out) {
      throw new Error(
        `linear "${name}" returned ${y?.length} values, expected [${rows}, ${out}] as a Float32Array`,
      );
    }
    return y;
  };
}

/** RoPE tables for positions 0..tokens-1: `[tokens, head_dim / 2]` each. */
interface RopeTables {
  cos: Float32Array;
  sin: Float32Array;
}

const ropeCache = new WeakMap<LlamaModel, RopeTables & { tokens: number }>();

// Angles as transformers forms them in f32 (inv_freq * position, one rounding), cos and sin
// of that f32 angle rounded to f32.
function ropeTables(model: LlamaModel, tokens: number): RopeTables {
  const cached = ropeCache.get(model);
  const half = model.config.headDim / 2;
  if (cached && cached.tokens >= tokens) {
    return {
      cos: cached.cos.subarray(0, tokens * half),
      sin: cached.sin.subarray(0, tokens * half),
    };
  }
  const inv = ropeInvFreq(model.config.rope, model.config.headDim);
  const cos = new Float32Array(tokens * half);
  const sin = new Float32Array(tokens * half);
  for (let t = 0; t < tokens; t++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(t * inv[i]);
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  }
  ropeCache.set(model, { tokens, cos, sin });
  return { cos, sin };
}

function rmsnorm(x: Float32Array, w: Weight, rows: number, dim: number, eps: number): Float32Array {
  const y = new Float32Array(rows * dim).fill(NaN);
  check(
    native().fp4_rmsnorm(
      CPU,
      ptr(x),
      ptr(w.data),
      abiOf(w),
      ptr(y),
      BigInt(rows),
      BigInt(dim),
      eps,
    ),
    "fp4_rmsnorm",
  );
  return y;
}

function addInPlace(y: Float32Array, x: Float32Array): void {
  check(native().fp4_add_inplace(CPU, ptr(y), ptr(x), BigInt(y.length)), "fp4_add_inplace");
}

function checkIds(model: LlamaModel, ids: Int32Array): void {
  if (ids.length === 0) throw new Error("forward: no tokens");
  const vocab = model.config.vocabSize;
  for (let i = 0; i < ids.length; i++) {
    if (!(ids[i] >= 0 && ids[i] < vocab)) {
      throw new Error(`forward: token id ${ids[i]} at position ${i} is outside [0, ${vocab})`);
    }
  }
}

/**
 * The embedding rows of `ids`: the residual stream entering layer 0, `[tokens, hidden]`.
 *
 * @example
 * ```ts
 * import { embed } from "./forward.ts";
 * import { LlamaModel } from "./llama.ts";
 * import { parseLlamaConfig } from "./config.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 4,
 * }));
 * console.assert(embed(model, new Int32Array([1, 3])).length === 16);
 * ```
 */
export function embed(model: LlamaModel, ids: Int32Array): Float32Array {
  checkIds(model, ids);
  const { vocabSize, hiddenSize } = model.config;
  const table = model.weight("model.embed_tokens.weight");
  const y = new Float32Array(ids.length * hiddenSize).fill(NaN);
  check(
    native().fp4_embedding(
      CPU,
      ptr(ids),
      ptr(table.data),
      abiOf(table),
      ptr(y),
      BigInt(ids.length),
      BigInt(vocabSize),
      BigInt(hiddenSize),
    ),
    "fp4_embedding",
  );
  return y;
}

/**
 * Runs decoder layer `layer` on the residual stream `hidden` (`[tokens, hidden]`, positions
 * 0..tokens-1), updating it in place.
 *
 * @example
 * ```ts
 * import { embed, runLayer } from "./forward.ts";
 * import { LlamaModel } from "./llama.ts";
 * import { parseLlamaConfig } from "./config.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 4,
 * }));
 * const h = embed(model, new Int32Array([1, 3]));
 * await runLayer(model, 0, h);
 * console.assert(h.every(Number.isFinite));
 * ```
 */
export async function runLayer(
  model: LlamaModel,
  layer: number,
  hidden: Float32Array,
  options: ForwardOptions = {},
): Promise<void> {
  const c = model.config;
  if (!Number.isInteger(layer) || layer < 0 || layer >= c.numLayers) {
    throw new Error(`runLayer: layer ${layer} is outside [0, ${c.numLayers})`);
  }
  const dim = c.hiddenSize;
  if (hidden.length === 0 || hidden.length % dim !== 0) {
    throw new Error(`runLayer: hidden state of ${hidden.length} values is not [tokens, ${dim}]`);
  }
  const tokens = hidden.length / dim;
  const linear = options.linear ? checked(options.linear, model) : nativeLinear(model);
  const lib = native();
  const p = `model.layers.${layer}`;

  const x = rmsnorm(hidden, model.weight(`${p}.input_layernorm.weight`), tokens, dim, c.rmsNormEps);
  const q = await linear(`${p}.self_attn.q_proj`, x, tokens);
  const k = await linear(`${p}.self_attn.k_proj`, x, tokens);
  const v = await linear(`${p}.self_attn.v_proj`, x, tokens);
  const { cos, sin } = ropeTables(model, tokens);
  const hd = BigInt(c.headDim), T = BigInt(tokens);
  check(lib.fp4_rope(CPU, ptr(q), ptr(cos), ptr(sin), T, BigInt(c.numHeads), hd), "fp4_rope");
  check(lib.fp4_rope(CPU, ptr(k), ptr(cos), ptr(sin), T, BigInt(c.numKvHeads), hd), "fp4_rope");
  const att = new Float32Array(tokens * c.numHeads * c.headDim).fill(NaN);
  await checkAsync(
    lib.fp4_attention(
      CPU,
      ptr(q),
      ptr(k),
      ptr(v),
      ptr(att),
      T,
      BigInt(c.numHeads),
      BigInt(c.numKvHeads),
      hd,
      1 / Math.sqrt(c.headDim),
    ),
    "fp4_attention",
    [q, k, v, att],
  );
  addInPlace(hidden, await linear(`${p}.self_attn.o_proj`, att, tokens));

  const x2 = rmsnorm(
    hidden,
    model.weight(`${p}.post_attention_layernorm.weight`),
    tokens,
    dim,
    c.rmsNormEps,
  );
  const gate = await linear(`${p}.mlp.gate_proj`, x2, tokens);
  const up = await linear(`${p}.mlp.up_proj`, x2, tokens);
  check(lib.fp4_silu_mul(CPU, ptr(gate), ptr(up), ptr(gate), BigInt(gate.length)), "fp4_silu_mul");
  addInPlace(hidden, await linear(`${p}.mlp.down_proj`, gate, tokens));
}

/**
 * Final RMSNorm and LM head: logits `[tokens, vocab]` from the last layer's residual stream.
 *
 * @example
 * ```ts
 * import { embed, headLogits } from "./forward.ts";
 * import { LlamaModel } from "./llama.ts";
 * import { parseLlamaConfig } from "./config.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 4,
 * }));
 * const logits = await headLogits(model, embed(model, new Int32Array([2])));
 * console.assert(logits.length === 4);
 * ```
 */
export async function headLogits(
  model: LlamaModel,
  hidden: Float32Array,
  options: ForwardOptions = {},
): Promise<Float32Array> {
  const c = model.config;
  const tokens = hidden.length / c.hiddenSize;
  const x = rmsnorm(hidden, model.weight("model.norm.weight"), tokens, c.hiddenSize, c.rmsNormEps);
  const linear = options.linear ? checked(options.linear, model) : nativeLinear(model);
  return await linear("lm_head", x, tokens);
}

/**
 * Logits `[tokens, vocab]` for one sequence `ids` (positions 0..tokens-1).
 *
 * @example
 * ```ts
 * import { forwardLogits } from "./forward.ts";
 * import { LlamaModel } from "./llama.ts";
 * import { parseLlamaConfig } from "./config.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 2,
 *   num_attention_heads: 2, vocab_size: 4,
 * }));
 * const logits = await forwardLogits(model, new Int32Array([0, 1, 2]));
 * console.assert(logits.length === 12);
 * ```
 */
export async function forwardLogits(
  model: LlamaModel,
  ids: Int32Array,
  options: ForwardOptions = {},
): Promise<Float32Array> {
  const hidden = embed(model, ids);
  for (let l = 0; l < model.config.numLayers; l++) await runLayer(model, l, hidden, options);
  return await headLogits(model, hidden, options);
}

/**
 * Negative log-likelihood of each next token: `nll[t] = -log p(ids[t + 1] | ids[0..t])`,
 * `tokens - 1` values (nats).
 *
 * @example
 * ```ts
 * import { forwardNll } from "./forward.ts";
 * import { LlamaModel } from "./llama.ts";
 * import { parseLlamaConfig } from "./config.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 4,
 * }));
 * const nll = await forwardNll(model, new Int32Array([0, 1, 2]));
 * console.assert(nll.length === 2 && nll[0] > 0);
 * ```
 */
export async function forwardNll(
  model: LlamaModel,
  ids: Int32Array,
  options: ForwardOptions = {},
): Promise<Float32Array> {
  if (ids.length < 2) throw new Error("forwardNll: needs at least 2 tokens");
  const logits = await forwardLogits(model, ids, options);
  return await nllOf(logits, ids.subarray(1), model.config.vocabSize);
}

/**
 * `nll[r] = logsumexp(logits[r]) - logits[r, targets[r]]` for the first `targets.length` rows
 * of `logits` (`[rows, vocab]`).
 *
 * @example
 * ```ts
 * import { nllOf } from "./forward.ts";
 * const nll = await nllOf(new Float32Array([0, 0]), new Int32Array([1]), 2);
 * console.assert(Math.abs(nll[0] - Math.LN2) < 1e-6);
 * ```
 */
export async function nllOf(
  logits: Float32Array,
  targets: Int32Array,
  vocab: number,
): Promise<Float32Array> {
  const rows = targets.length;
  if (logits.length < rows * vocab) {
    throw new Error(`nll: ${logits.length} logits cannot hold ${rows} rows of ${vocab}`);
  }
  const out = new Float32Array(rows).fill(NaN);
  await checkAsync(
    native().fp4_nll(CPU, ptr(logits), ptr(targets), ptr(out), BigInt(rows), BigInt(vocab)),
    "fp4_nll",
    [logits, targets, out],
  );
  return out;
}
