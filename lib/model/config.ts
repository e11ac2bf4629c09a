/**
 * The architecture of a Hugging Face Llama-family checkpoint, read from its `config.json`,
 * and the rotary-embedding frequencies it implies.
 *
 * @module
 */

/** Architectures (`model_type`) the loader and forward pass implement. */
export const SUPPORTED_MODEL_TYPES: readonly string[] = ["llama"];

/** Rope scaling rules implemented (`rope_type`). */
export const SUPPORTED_ROPE_TYPES: readonly string[] = ["default", "linear", "llama3"];

/** Rotary embedding settings: base frequency plus an optional scaling rule. */
export interface RopeConfig {
  /** Base of the geometric frequency ladder (`rope_theta`). */
  theta: number;
  /** Scaling rule: `"default"` (none), `"linear"` (positions / factor) or `"llama3"`. */
  type: "default" | "linear" | "llama3";
  /** Scaling factor (`linear` and `llama3`). */
  factor?: number;
  /** Llama 3: wavelengths longer than original / low_freq_factor are divided by `factor`. */
  lowFreqFactor?: number;
  /** Llama 3: wavelengths shorter than original / high_freq_factor are kept. */
  highFreqFactor?: number;
  /** Llama 3: the context length the frequencies were trained for. */
  originalMaxPositionEmbeddings?: number;
}

/** The numbers of a Llama-family decoder that the loader and forward pass need. */
export interface LlamaConfig {
  /** `model_type` of config.json (always one of {@linkcode SUPPORTED_MODEL_TYPES}). */
  modelType: string;
  /** Width of the residual stream. */
  hiddenSize: number;
  /** Width of the SwiGLU MLP. */
  intermediateSize: number;
  /** Number of decoder layers. */
  numLayers: number;
  /** Number of query heads. */
  numHeads: number;
  /** Number of key/value heads (GQA when fewer than `numHeads`). */
  numKvHeads: number;
  /** Width of one head (`head_dim`, default hidden / heads). */
  headDim: number;
  /** Vocabulary size (rows of the embedding and LM head). */
  vocabSize: number;
  /** RMSNorm epsilon. */
  rmsNormEps: number;
  /** Rotary embedding settings. */
  rope: RopeConfig;
  /** Whether the LM head reuses the embedding matrix. */
  tieWordEmbeddings: boolean;
  /** Longest sequence the model was configured for. */
  maxPositionEmbeddings: number;
}

type Json = Record<string, unknown>;

function fail(where: string, reason: string): never {
  throw new Error(`${where}: ${reason}`);
}

function positiveInt(cfg: Json, key: string, where: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (v === undefined) fail(where, `"${key}" is missing`);
  if (!Number.isSafeInteger(v) || (v as number) <= 0) {
    fail(where, `"${key}" must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v as number;
}

function positiveNumber(v: unknown, key: string, where: string): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    fail(where, `"${key}" must be a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function parseRope(cfg: Json, where: string): RopeConfig {
  // transformers >= 5 nests everything in rope_parameters; older configs use rope_theta plus
  // an optional rope_scaling object (whose type key was once "type").
  const params = cfg.rope_parameters ?? cfg.rope_scaling ?? {};
  if (typeof params !== "object" || params === null || Array.isArray(params)) {
    fail(where, `"rope_parameters" / "rope_scaling" must be an object`);
  }
  const p = params as Json;
  const theta = positiveNumber(p.rope_theta ?? cfg.rope_theta ?? 10000, "rope_theta", where);
  const type = p.rope_type ?? p.type ?? "default";
  if (typeof type !== "string" || !SUPPORTED_ROPE_TYPES.includes(type)) {
    fail(
      where,
      `rope type ${JSON.stringify(type)} is not supported; supported: ${
        SUPPORTED_ROPE_TYPES.join(", ")
      }`,
    );
  }
  if (type === "default") return { theta, type };
  const factor = positiveNumber(p.factor, "factor", where);
  if (type === "linear") return { theta, type, factor };
  const lowFreqFactor = positiveNumber(p.low_freq_factor, "low_freq_factor", where);
  const highFreqFactor = positiveNumber(p.high_freq_factor, "high_freq_factor", where);
  if (highFreqFactor <= lowFreqFactor) {
    fail(where, `llama3 rope needs high_freq_factor > low_freq_factor`);
  }
  const originalMaxPositionEmbeddings = positiveInt(
    p,
    "original_max_position_embeddings",
    where,
  );
  return {
    theta,
    type: "llama3",
    factor,
    lowFreqFactor,
    highFreqFactor,
    originalMaxPositionEmbeddings,
  };
}

/**
 * Validates a parsed `config.json` object and returns the Llama configuration. Throws an
 * Error naming the problem for unsupported architectures (listing the supported ones),
 * missing or invalid fields, and features the forward pass does not implement (biases,
 * activations other than SiLU).
 *
 * @example
 * ```ts
 * import { parseLlamaConfig } from "./config.ts";
 * const cfg = parseLlamaConfig({
 *   model_type: "llama", hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
 *   num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 100, rms_norm_eps: 1e-5,
 *   rope_theta: 10000,
 * });
 * console.assert(cfg.headDim === 16 && cfg.tieWordEmbeddings === false);
 * ```
 */
export function parseLlamaConfig(json: unknown, where = "config.json"): LlamaConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    fail(where, "expected a JSON object");
  }
  const cfg = json as Json;
  const modelType = cfg.model_type;
  if (typeof modelType !== "string" || !SUPPORTED_MODEL_TYPES.includes(modelType)) {
    const arch = Array.isArray(cfg.architectures) ? ` (${cfg.architectures.join(", ")})` : "";
    fail(
      where,
      `model_type ${JSON.stringify(modelType)}${arch} is not supported; supported: ${
        SUPPORTED_MODEL_TYPES.join(", ")
      } (LlamaForCausalLM)`,
    );
  }
  const hiddenSize = positiveInt(cfg, "hidden_size", where);
  const numHeads = positiveInt(cfg, "num_attention_heads", where);
  const numKvHeads = positiveInt(cfg, "num_key_value_heads", where, numHeads);
  if (numHeads % numKvHeads !== 0) {
    fail(
      where,
      `num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`,
    );
  }
  if (cfg.head_dim === undefined && hiddenSize % numHeads !== 0) {
    fail(where, `hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`);
  }
  const headDim = positiveInt(cfg, "head_dim", where, hiddenSize / numHeads);
  if (headDim % 2 !== 0) fail(where, `head_dim ${headDim} must be even for rotary embeddings`);
  for (const key of ["attention_bias", "mlp_bias"]) {
    if (cfg[key] === true) fail(where, `"${key}": true is not supported`);
  }
  const act = cfg.hidden_act ?? "silu";
  if (act !== "silu") fail(where, `hidden_act ${JSON.stringify(act)} is not supported (only silu)`);
  const tie = cfg.tie_word_embeddings ?? false;
  if (typeof tie !== "boolean") fail(where, `"tie_word_embeddings" must be a boolean`);
  const eps = positiveNumber(cfg.rms_norm_eps ?? 1e-6, "rms_norm_eps", where);
  return {
    modelType,
    hiddenSize,
    intermediateSize: positiveInt(cfg, "intermediate_size", where),
    numLayers: positiveInt(cfg, "num_hidden_layers", where),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: positiveInt(cfg, "vocab_size", where),
    rmsNormEps: eps,
    rope: parseRope(cfg, where),
    tieWordEmbeddings: tie,
    maxPositionEmbeddings: positiveInt(cfg, "max_position_embeddings", where, 2048),
  };
}

/**
 * Reads and validates `dir/config.json`; a missing or malformed file throws an Error naming it.
 *
 * @example
 * ```ts
 * import { loadLlamaConfig } from "./config.ts";
 * import { testModelDir } from "../paths.ts";
 * try {
 *   const cfg = await loadLlamaConfig(testModelDir());
 *   console.assert(cfg.numLayers > 0);
 * } catch (e) {
 *   console.assert(e instanceof Error); // the shared test model is not on this machine
 * }
 * ```
 */
export async function loadLlamaConfig(dir: string): Promise<LlamaConfig> {
  const path = `${dir}/config.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read the model config: ${(e as Error).message}`, {
      cause: e,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  return parseLlamaConfig(json, path);
}

/**
 * The rotary inverse frequencies (`head_dim / 2` of them), rounded to f32 the way
 * transformers computes them (`1 / theta^(2i / d)` in f32), then rescaled by the config's rope
 * scaling rule.
 *
 * @example
 * ```ts
 * import { ropeInvFreq } from "./config.ts";
 * const f = ropeInvFreq({ theta: 10000, type: "default" }, 8);
 * console.assert(f.length === 4 && f[0] === 1);
 * ```
 */
export function ropeInvFreq(rope: RopeConfig, headDim: number): Float32Array {
  const half = headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    out[i] = Math.fround(1 / Math.fround(rope.theta ** Math.fround((2 * i) / headDim)));
  }
  if (rope.type === "linear") {
    for (let i = 0; i < half; i++) out[i] = out[i] / rope.factor!;
  } else if (rope.type === "llama3") {
    const { factor, lowFreqFactor: lo, highFreqFactor: hi } = rope;
    const old = rope.originalMaxPositionEmbeddings!;
    const lowFreqWavelen = old / lo!;
    const highFreqWavelen = old / hi!;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / out[i];
      if (wavelen < highFreqWavelen) continue;
      if (wavelen > lowFreqWavelen) {
        out[i] = out[i] / factor!;
        continue;
      }
      const smooth = (old / wavelen - lo!) / (hi! - lo!);
      out[i] = (1 - smooth) * (out[i] / factor!) + smooth * out[i];
    }
  }
  return out;
}
