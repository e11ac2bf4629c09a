/**
 * A Llama-family model in host memory: its configuration and its weights, loaded from a
 * Hugging Face folder (single or sharded safetensors; BF16 weights kept as BF16, F32 kept,
 * F16 widened to F32) or generated at random for tests and demos.
 *
 * @module
 */
import type { Device } from "../device.ts";
import { f32ToBf16, toFloat32 } from "../dtype.ts";
import { SafetensorsCheckpoint } from "../safetensors.ts";
import { type LlamaConfig, loadLlamaConfig } from "./config.ts";

/** One weight matrix or vector, in the Hugging Face layout (a linear layer is [out, in]). */
export interface Weight {
  /** Element type of `data`: bf16 as raw bits, or f32. */
  readonly dtype: "f32" | "bf16";
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** The elements, C order. */
  readonly data: Float32Array | Uint16Array;
}

/** Options of {@linkcode LlamaModel.load}. */
export interface LoadOptions {
  /** Where the forward pass will run; only `"cpu"` is implemented so far. */
  device?: Device;
  /** Called after each tensor is read, with the count done and the total. */
  onProgress?: (done: number, total: number) => void;
}

/** Options of {@linkcode LlamaModel.random}. */
export interface RandomOptions {
  /** Seed of the generator (default 1). */
  seed?: number;
  /** Storage of the weights (default `"bf16"`, like released checkpoints). */
  dtype?: "f32" | "bf16";
  /** Standard deviation of the linear weights (default 0.02, Llama's initialiser). */
  std?: number;
}

/**
 * Hugging Face tensor names a Llama model needs, with their expected shapes (the LM head is
 * absent when embeddings are tied).
 *
 * @example
 * ```ts
 * import { llamaWeightShapes } from "./llama.ts";
 * const shapes = llamaWeightShapes({
 *   modelType: "llama", hiddenSize: 8, intermediateSize: 16, numLayers: 1, numHeads: 2,
 *   numKvHeads: 1, headDim: 4, vocabSize: 10, rmsNormEps: 1e-5,
 *   rope: { theta: 10000, type: "default" }, tieWordEmbeddings: true, maxPositionEmbeddings: 64,
 * });
 * console.assert(shapes.get("model.layers.0.self_attn.k_proj.weight")![0] === 4);
 * ```
 */
export function llamaWeightShapes(config: LlamaConfig): Map<string, readonly number[]> {
  const { hiddenSize: h, intermediateSize: m, numHeads, numKvHeads, headDim, vocabSize } = config;
  const shapes = new Map<string, readonly number[]>();
  shapes.set("model.embed_tokens.weight", [vocabSize, h]);
  for (let i = 0; i < config.numLayers; i++) {
    const p = `model.layers.${i}`;
    shapes.set(`${p}.input_layernorm.weight`, [h]);
    shapes.set(`${p}.self_attn.q_proj.weight`, [numHeads * headDim, h]);
    shapes.set(`${p}.self_attn.k_proj.weight`, [numKvHeads * headDim, h]);
    shapes.set(`${p}.self_attn.v_proj.weight`, [numKvHeads * headDim, h]);
    shapes.set(`${p}.self_attn.o_proj.weight`, [h, numHeads * headDim]);
    shapes.set(`${p}.post_attention_layernorm.weight`, [h]);
    shapes.set(`${p}.mlp.gate_proj.weight`, [m, h]);
    shapes.set(`${p}.mlp.up_proj.weight`, [m, h]);
    shapes.set(`${p}.mlp.down_proj.weight`, [h, m]);
  }
  shapes.set("model.norm.weight", [h]);
  if (!config.tieWordEmbeddings) shapes.set("lm_head.weight", [vocabSize, h]);
  return shapes;
}

function firstNonFinite(w: Weight): number {
  if (w.dtype === "bf16") {
    const d = w.data as Uint16Array;
    for (let i = 0; i < d.length; i++) if ((d[i] & 0x7f80) === 0x7f80) return i;
  } else {
    const d = w.data as Float32Array;
    for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i])) return i;
  }
  return -1;
}

function checkWeight(name: string, w: Weight, shape: readonly number[], where: string): void {
  if (w.shape.length !== shape.length || w.shape.some((d, i) => d !== shape[i])) {
    throw new Error(
      `${where}: tensor "${name}" has shape [${w.shape.join(", ")}], the config implies [${
        shape.join(", ")
      }]`,
    );
  }
  const bad = firstNonFinite(w);
  if (bad >= 0) {
    throw new Error(`${where}: tensor "${name}" holds a NaN or infinite value at element ${bad}`);
  }
}

// xorshift128+ -> uniform [0, 1); small, seedable, good enough for test weights.
function rng(seed: number): () => number {
  let s0 = BigInt(seed >>> 0) * 0x9e3779b97f4a7c15n + 1n;
  let s1 = (s0 ^ 0x6a09e667f3bcc909n) & 0xffffffffffffffffn;
  s0 &= 0xffffffffffffffffn;
  return () => {
    let x = s0;
    const y = s1;
    s0 = y;
    x ^= (x << 23n) & 0xffffffffffffffffn;
    s1 = x ^ y ^ (x >> 17n) ^ (y >> 26n);
    return Number(((s1 + y) & 0xffffffffffffffffn) >> 11n) / 2 ** 53;
  };
}

/**
 * A Llama model's configuration and weights, by Hugging Face tensor name.
 *
 * @example
 * ```ts
 * import { LlamaModel } from "./llama.ts";
 * import { parseLlamaConfig } from "./config.ts";
 * const config = parseLlamaConfig({
 *   model_type: "llama", hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
 *   num_attention_heads: 2, num_key_value_heads: 1, vocab_size: 50, rms_norm_eps: 1e-5,
 * });
 * const model = LlamaModel.random(config, { seed: 3 });
 * console.assert(model.weight("lm_head.weight").shape[0] === 50);
 * ```
 */
export class LlamaModel {
  /** The architecture. */
  readonly config: LlamaConfig;
  /** Where the forward pass runs. */
  readonly device: Device;
  /** The folder the model was loaded from (undefined for generated models). */
  readonly dir: string | undefined;
  #weights: Map<string, Weight>;

  private constructor(
    config: LlamaConfig,
    weights: Map<string, Weight>,
    device: Device,
    dir: string | undefined,
  ) {
    this.config = config;
    this.#weights = weights;
    this.device = device;
    this.dir = dir;
  }

  /**
   * Builds a model from weights already in memory; checks that every tensor the config needs
   * is there with the right shape and finite values.
   *
   * @example
   * ```ts
   * import { LlamaModel, llamaWeightShapes } from "./llama.ts";
   * import { parseLlamaConfig } from "./config.ts";
   * const config = parseLlamaConfig({
   *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 4, tie_word_embeddings: true,
   * });
   * const weights = new Map([...llamaWeightShapes(config)].map(([name, shape]) => [
   *   name,
   *   { dtype: "f32" as const, shape, data: new Float32Array(shape.reduce((a, b) => a * b)) },
   * ]));
   * console.assert(LlamaModel.fromWeights(config, weights).config.numLayers === 1);
   * ```
   */
  static fromWeights(
    config: LlamaConfig,
    weights: ReadonlyMap<string, Weight>,
    device: Device = "cpu",
  ): LlamaModel {
    requireCpu(device);
    const own = new Map<string, Weight>();
    for (const [name, shape] of llamaWeightShapes(config)) {
      const w = weights.get(name);
      if (!w) throw new Error(`model weights: tensor "${name}" is missing`);
      checkWeight(name, w, shape, "model weights");
      own.set(name, w);
    }
    return new LlamaModel(config, own, device, undefined);
  }

  /**
   * Loads `dir` (config.json plus model.safetensors or its sharded index). Throws an Error
   * naming the file or tensor for missing or malformed files, missing tensors, wrong shapes,
   * unsupported dtypes and NaN or infinite weights.
   *
   * @example
   * ```ts
   * import { LlamaModel } from "./llama.ts";
   * import { testModelDir } from "../paths.ts";
   * try {
   *   const model = await LlamaModel.load(testModelDir());
   *   console.assert(model.config.hiddenSize === 512);
   * } catch (e) {
   *   console.assert(e instanceof Error); // the shared test model is not on this machine
   * }
   * ```
   */
  static async load(dir: string, options: LoadOptions = {}): Promise<LlamaModel> {
    const device = options.device ?? "cpu";
    requireCpu(device);
    const config = await loadLlamaConfig(dir);
    const shapes = llamaWeightShapes(config);
    await using ckpt = await SafetensorsCheckpoint.open(dir);
    const weights = new Map<string, Weight>();
    let done = 0;
    for (const [name, shape] of shapes) {
      if (!ckpt.has(name)) {
        throw new Error(`${dir}: the checkpoint has no tensor "${name}"`);
      }
      const raw = await ckpt.read(name);
      const buf = raw.data.buffer as ArrayBuffer;
      const n = raw.data.byteLength;
      let w: Weight;
      if (raw.dtype === "BF16") {
        w = {
          dtype: "bf16",
          shape: raw.shape,
          data: new Uint16Array(buf, raw.data.byteOffset, n / 2),
        };
      } else if (raw.dtype === "F32") {
        w = {
          dtype: "f32",
          shape: raw.shape,
          data: new Float32Array(buf, raw.data.byteOffset, n / 4),
        };
      } else if (raw.dtype === "F16") {
        const bits = new Uint16Array(buf, raw.data.byteOffset, n / 2);
        w = { dtype: "f32", shape: raw.shape, data: toFloat32(bits, "f16") };
      } else {
        throw new Error(`${dir}: tensor "${name}" is ${raw.dtype}; only BF16, F16 and F32 load`);
      }
      checkWeight(name, w, shape, dir);
      weights.set(name, w);
      options.onProgress?.(++done, shapes.size);
    }
    return new LlamaModel(config, weights, device, dir);
  }

  /**
   * A model with seeded random weights (bell-shaped; linear weights of std `options.std`,
   * embeddings 20 times wider, norms near 1), for tests and for demos that need no download.
   * Labelled by `dir === undefined`.
   *
   * @example
   * ```ts
   * import { LlamaModel } from "./llama.ts";
   * import { parseLlamaConfig } from "./config.ts";
   * const config = parseLlamaConfig({
   *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 4,
   * });
   * const a = LlamaModel.random(config, { seed: 1, dtype: "f32" });
   * const b = LlamaModel.random(config, { seed: 1, dtype: "f32" });
   * console.assert(a.weight("model.norm.weight").data[3] === b.weight("model.norm.weight").data[3]);
   * ```
   */
  static random(config: LlamaConfig, options: RandomOptions = {}): LlamaModel {
    const next = rng(options.seed ?? 1);
    const dtype = options.dtype ?? "bf16";
    const std = options.std ?? 0.02;
    const weights = new Map<string, Weight>();
    for (const [name, shape] of llamaWeightShapes(config)) {
      const n = shape.reduce((a, b) => a * b, 1);
      const isNorm = shape.length === 1;
      const values = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        // Sum of 3 uniforms: cheap, bell-shaped, unit variance after scaling by 2.
        const g = (next() + next() + next() - 1.5) * 2;
        values[i] = isNorm ? 1 + 0.1 * g : std * g * (name.includes("embed") ? 20 : 1);
      }
      weights.set(name, {
        dtype,
        shape,
        data: dtype === "f32" ? values : Uint16Array.from(values, f32ToBf16),
      });
    }
    return new LlamaModel(config, weights, "cpu", undefined);
  }

  /**
   * The weight named `name` (Hugging Face naming; `lm_head.weight` resolves to the embedding
   * when tied).
   *
   * @example
   * ```ts
   * import { LlamaModel } from "./llama.ts";
   * import { parseLlamaConfig } from "./config.ts";
   * const config = parseLlamaConfig({
   *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 4, tie_word_embeddings: true,
   * });
   * const m = LlamaModel.random(config);
   * console.assert(m.weight("lm_head.weight") === m.weight("model.embed_tokens.weight"));
   * ```
   */
  weight(name: string): Weight {
    const key = name === "lm_head.weight" && this.config.tieWordEmbeddings
      ? "model.embed_tokens.weight"
      : name;
    const w = this.#weights.get(key);
    if (!w) throw new Error(`the model has no weight "${name}"`);
    return w;
  }

  /**
   * Replaces weight `name` (same shape; finite values), e.g. with a quantized-dequantized copy.
   *
   * @example
   * ```ts
   * import { LlamaModel } from "./llama.ts";
   * import { parseLlamaConfig } from "./config.ts";
   * const config = parseLlamaConfig({
   *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 4,
   * });
   * const m = LlamaModel.random(config);
   * m.setWeight("model.norm.weight", { dtype: "f32", shape: [8], data: new Float32Array(8) });
   * console.assert(m.weight("model.norm.weight").dtype === "f32");
   * ```
   */
  setWeight(name: string, weight: Weight): void {
    const old = this.weight(name);
    checkWeight(name, weight, old.shape, "setWeight");
    this.#weights.set(name, weight);
  }

  /**
   * Module names of the linear layers in forward order (weight name minus `.weight`), the
   * names the forward pass hands to its `linear` hook; the LM head comes last.
   *
   * @example
   * ```ts
   * import { LlamaModel } from "./llama.ts";
   * import { parseLlamaConfig } from "./config.ts";
   * const config = parseLlamaConfig({
   *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 2,
   *   num_attention_heads: 2, vocab_size: 4,
   * });
   * console.assert(LlamaModel.random(config).linearNames().length === 2 * 7 + 1);
   * ```
   */
  linearNames(): string[] {
    const names: string[] = [];
    for (let i = 0; i < this.config.numLayers; i++) {
      for (const p of ["q", "k", "v", "o"]) names.push(`model.layers.${i}.self_attn.${p}_proj`);
      for (const p of ["gate", "up", "down"]) names.push(`model.layers.${i}.mlp.${p}_proj`);
    }
    names.push("lm_head");
    return names;
  }
}

function requireCpu(device: Device): void {
  if (device !== "cpu") {
    throw new Error(
      `device "${device}": the model forward pass is only implemented on the CPU so far`,
    );
  }
}
