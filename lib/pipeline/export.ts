/**
 * Quantized checkpoints: export of a {@linkcode QuantizedModel} as a Hugging Face-style folder
 * (model.safetensors + config.json with a `quantization_config` block + tokenizer files) and
 * the loader that reads it back into a model whose forward pass computes exactly what the
 * in-memory quantized model computes. Layout: docs/CHECKPOINT.md.
 *
 * The folder is built under a temporary name beside the destination and renamed into place
 * only when complete, so a failure leaves no partial folder; an existing destination is
 * refused unless `force` is set.
 *
 * @module
 */
import { toFloat32 } from "../dtype.ts";
import { dequantize, type Quantized } from "../formats/quantize.ts";
import { type QuantSpec, resolveSpec } from "../formats/spec.ts";
import type { ScaleFormatName } from "../formats/scales.ts";
import { loadLlamaConfig } from "../model/config.ts";
import type { Linear } from "../model/forward.ts";
import { LlamaModel, llamaWeightShapes, type Weight } from "../model/llama.ts";
import {
  SafetensorsCheckpoint,
  type SafetensorsDType,
  type SafetensorsEntry,
  writeSafetensors,
} from "../safetensors.ts";
import { type InputScheme, quantizedLinear } from "./act_quant.ts";
import { staticScheme } from "./act_scales.ts";
import { TOOL } from "./manifest.ts";
import { fp4KernelFormat, type Fp4Weights, fp4WeightsOf } from "../kernels/fp4_linear.ts";
import type { QuantizedModel } from "./quantize_model.ts";

/** Name of the tensor layout written by {@linkcode exportQuantized}. */
export const CHECKPOINT_LAYOUT = "fp4lab-packed-v1";

/** Tokenizer and generation files copied from the source model folder when present. */
export const COPIED_FILES: readonly string[] = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
];

/** The calibration a quantized model was made with. */
export interface CalibrationRecord {
  /** Calibration text file (null for token ids given directly). */
  file: string | null;
  /** Its sha256, or null. */
  sha256: string | null;
  /** Windows used. */
  windows: number;
  /** Tokens per window. */
  windowTokens: number;
}

/** Options of {@linkcode exportQuantized}. */
export interface ExportOptions {
  /** Replace an existing destination folder (default: refuse). */
  force?: boolean;
  /** The calibration record for `quantization_config`. */
  calibration?: CalibrationRecord | null;
  /** Git commit of the tool (see manifest.ts `gitCommit`). */
  commit?: string | null;
  /** The preset string the weights were quantized with, for the record. */
  format?: string;
  /** The activation preset string, for the record. */
  actFormat?: string | null;
  /** Called with the temporary folder once everything else is written (e.g. a manifest). */
  finish?: (tempDir: string) => Promise<void>;
}

const SCALE_DTYPE: Record<ScaleFormatName, SafetensorsDType> = {
  e8m0: "U8",
  e4m3: "F8_E4M3",
  ue5m3: "U8",
  f32: "F32",
  bf16: "BF16",
  f16: "F16",
};

/** `spec` as JSON (the 64-bit seed as a decimal string). */
function specJson(spec: QuantSpec): Record<string, unknown> {
  return {
    element: spec.element,
    scale_format: spec.scaleFormat,
    group_size: spec.groupSize,
    scale_rule: spec.scaleRule,
    tensor_scale: spec.tensorScale,
    rounding: spec.rounding,
    seed: spec.seed.toString(),
    mse: spec.mse,
  };
}

function specFromJson(json: unknown, where: string): QuantSpec {
  const o = json as Record<string, unknown>;
  if (typeof o !== "object" || o === null) throw new Error(`${where}: expected a spec object`);
  try {
    return resolveSpec({
      element: o.element,
      scaleFormat: o.scale_format,
      groupSize: o.group_size,
      scaleRule: o.scale_rule,
      tensorScale: o.tensor_scale,
      rounding: o.rounding,
      seed: BigInt(String(o.seed ?? "0")),
      mse: o.mse ?? null,
    } as unknown as QuantSpec);
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The `quantization_config` block of an exported model.
 *
 * @example
 * ```ts
 * import { quantizationConfig } from "./export.ts";
 * import { quantizeModel } from "./quantize_model.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 16,
 * }));
 * const q = await quantizeModel(model, [], { format: "mxfp4", method: "rtn" });
 * console.assert(quantizationConfig(q).method === "rtn");
 * ```
 */
export function quantizationConfig(
  q: QuantizedModel,
  options: ExportOptions = {},
): Record<string, unknown> {
  return {
    quant_method: "fp4lab",
    layout: CHECKPOINT_LAYOUT,
    format: options.format ?? null,
    method: q.method,
    objective: q.objective,
    weights: specJson(q.spec),
    rotation: q.hadamard
      ? { type: "hadamard", block: q.hadamard, seed: null, normalized: true, order: "sylvester" }
      : null,
    activations: q.actSpec
      ? {
        format: options.actFormat ?? null,
        dynamic: q.actScale !== "static",
        ...specJson(q.actSpec),
      }
      : null,
    calibration: options.calibration ?? null,
    quantized_modules: [...q.layers.keys()],
    ignore: ["model.embed_tokens", "lm_head"],
    tool: { ...TOOL },
    commit: options.commit ?? null,
  };
}

function configJson(q: QuantizedModel, source: Record<string, unknown> | null) {
  const c = q.model.config;
  const base = source ?? {
    architectures: ["LlamaForCausalLM"],
    model_type: c.modelType,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    vocab_size: c.vocabSize,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.rope.theta,
    tie_word_embeddings: c.tieWordEmbeddings,
    max_position_embeddings: c.maxPositionEmbeddings,
    hidden_act: "silu",
  };
  if (source === null && c.rope.type !== "default") {
    throw new Error(`cannot describe rope type "${c.rope.type}" of a generated model`);
  }
  return base;
}

function tensorEntries(q: QuantizedModel): Record<string, SafetensorsEntry> {
  const out: Record<string, SafetensorsEntry> = {};
  for (const [name] of llamaWeightShapes(q.model.config)) {
    const module = name.slice(0, -".weight".length);
    const layer = q.layers.get(module);
    if (!layer) {
      const w = q.model.weight(name);
      out[name] = { dtype: w.dtype === "bf16" ? "BF16" : "F32", shape: w.shape, data: w.data };
      continue;
    }
    const z = layer.quantized;
    const rows = z.shape[0];
    // Lazy: a corrupt layer fails while the file is written, and nothing is copied early.
    out[`${module}.weight_packed`] = {
      dtype: "U8",
      shape: [rows, z.codes.length / rows],
      data: () => z.codes,
    };
    out[`${module}.weight_scale`] = {
      dtype: SCALE_DTYPE[z.spec.scaleFormat],
      shape: z.scaleShape,
      data: () => z.scales,
    };
    if (z.tensorScale !== null) {
      out[`${module}.weight_tensor_scale`] = {
        dtype: "F32",
        shape: [1],
        data: new Float32Array([z.tensorScale]),
      };
    }
    if (z.zeros) {
      out[`${module}.weight_zero_point`] = { dtype: "U8", shape: z.scaleShape, data: z.zeros };
    }
    if (q.actScale === "static") {
      const s = layer.scheme.act?.tensorScale;
      if (typeof s !== "number") throw new Error(`"${module}" has no static activation scale`);
      out[`${module}.input_tensor_scale`] = {
        dtype: "F32",
        shape: [1],
        data: new Float32Array([s]),
      };
    }
  }
  return out;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

function siblingName(path: string, tag: string): string {
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : path.slice(0, slash) || "/";
  const base = path.slice(slash + 1);
  const rand = Array.from(
    crypto.getRandomValues(new Uint8Array(6)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  return `${dir}/.${base}.${tag}-${rand}`;
}

/**
 * Writes `q` to the folder `outDir`: model.safetensors (quantized linears as packed codes,
 * raw scale bits and tensor scale; everything else in its stored dtype), config.json (the
 * source's, or one describing a generated model, plus `quantization_config`) and the source's
 * tokenizer files. Refuses an existing `outDir` unless `options.force`; leaves no partial
 * folder when anything fails. Returns the names of the files written.
 *
 * @example
 * ```ts
 * import { exportQuantized, loadQuantized } from "./export.ts";
 * import { quantizeModel } from "./quantize_model.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 16,
 * }));
 * const q = await quantizeModel(model, [], { format: "nvfp4", method: "rtn" });
 * const out = `${await Deno.makeTempDir()}/q`;
 * await exportQuantized(q, out);
 * console.assert((await loadQuantized(out)).schemes.size === 7);
 * ```
 */
export async function exportQuantized(
  q: QuantizedModel,
  outDir: string,
  options: ExportOptions = {},
): Promise<string[]> {
  const out = outDir.replace(/\/+$/, "") || "/";
  if (await exists(out) && !options.force) {
    throw new Error(`the output folder ${out} exists (pass --force to replace it)`);
  }
  const source = q.model.dir;
  let sourceConfig: Record<string, unknown> | null = null;
  if (source !== undefined) {
    sourceConfig = JSON.parse(await Deno.readTextFile(`${source}/config.json`));
  }
  const config = {
    ...configJson(q, sourceConfig),
    quantization_config: quantizationConfig(q, options),
  };
  const temp = siblingName(out, "tmp");
  try {
    await Deno.mkdir(temp);
  } catch (e) {
    throw new Error(`cannot create a folder beside ${out}: ${(e as Error).message}`, { cause: e });
  }
  try {
    const files = ["model.safetensors", "config.json"];
    await writeSafetensors(`${temp}/model.safetensors`, tensorEntries(q), { format: "pt" });
    await Deno.writeTextFile(`${temp}/config.json`, JSON.stringify(config, null, 2) + "\n");
    if (source !== undefined) {
      for (const name of COPIED_FILES) {
        if (await exists(`${source}/${name}`)) {
          await Deno.copyFile(`${source}/${name}`, `${temp}/${name}`);
          files.push(name);
        }
      }
    }
    await options.finish?.(temp);
    if (await exists(out)) {
      const old = siblingName(out, "old");
      await Deno.rename(out, old);
      try {
        await Deno.rename(temp, out);
      } catch (e) {
        await Deno.rename(old, out);
        throw e;
      }
      await Deno.remove(old, { recursive: true });
    } else {
      await Deno.rename(temp, out);
    }
    return files;
  } catch (e) {
    await Deno.remove(temp, { recursive: true }).catch(() => {});
    throw e;
  }
}

/** A model read by {@linkcode loadQuantized}. */
export interface LoadedModel {
  /** The model; quantized linears hold their dequantized (rotated-space) weights. */
  model: LlamaModel;
  /** The forward pass's hook (online rotation and activation quantization). */
  linear: Linear;
  /** Input scheme of every quantized linear (empty for an unquantized checkpoint). */
  schemes: Map<string, InputScheme>;
  /** The checkpoint's `quantization_config`, or null. */
  quantizationConfig: Record<string, unknown> | null;
  /**
   * The packed weights of every quantized linear, as the W4A16 kernels take them (host
   * tensors), when the checkpoint's format is one they run exactly: E2M1 with E8M0 scales per
   * 32 (MXFP4, no tensor scale) or E4M3 scales per 16 with the amax tensor scale (NVFP4). Empty
   * otherwise. The generation engine runs these instead of the dequantized weights.
   */
  fp4: Map<string, Fp4Weights>;
}

function weightOf(raw: { dtype: SafetensorsDType; shape: readonly number[]; data: Uint8Array }) {
  const buf = raw.data.buffer as ArrayBuffer;
  const n = raw.data.byteLength;
  if (raw.dtype === "BF16") {
    return {
      dtype: "bf16",
      shape: raw.shape,
      data: new Uint16Array(buf, raw.data.byteOffset, n / 2),
    };
  }
  if (raw.dtype === "F32") {
    return {
      dtype: "f32",
      shape: raw.shape,
      data: new Float32Array(buf, raw.data.byteOffset, n / 4),
    };
  }
  if (raw.dtype === "F16") {
    const bits = new Uint16Array(buf, raw.data.byteOffset, n / 2);
    return { dtype: "f32", shape: raw.shape, data: toFloat32(bits, "f16") };
  }
  return null;
}

// The scheme of a layer with a static activation scale (its `input_tensor_scale`); layers
// with the same scale (q/k/v, gate/up) get the same scheme object from `shared`, so they
// share one input transform.
async function staticSchemeOf(
  ckpt: SafetensorsCheckpoint,
  module: string,
  scheme: InputScheme,
  shared: Map<number, InputScheme>,
  dir: string,
): Promise<InputScheme> {
  const name = `${module}.input_tensor_scale`;
  if (!ckpt.has(name)) {
    throw new Error(`${dir}: "${name}" is missing (the checkpoint has static activation scales)`);
  }
  const t = await ckpt.read(name);
  if (t.dtype !== "F32" || t.data.length !== 4) {
    throw new Error(`${dir}: "${name}" must be F32 [1], got ${t.dtype} of ${t.data.length} bytes`);
  }
  const s = new DataView(t.data.buffer, t.data.byteOffset, 4).getFloat32(0, true);
  let fixed = shared.get(s);
  if (!fixed) {
    try {
      fixed = staticScheme(scheme, s);
    } catch (e) {
      throw new Error(`${dir}: "${name}": ${(e as Error).message}`, { cause: e });
    }
    shared.set(s, fixed);
  }
  return fixed;
}

/**
 * Reads a model folder: a checkpoint written by {@linkcode exportQuantized} (its linears
 * dequantized exactly as the exporter had them, with their input schemes), or a plain
 * Hugging Face checkpoint (read by `LlamaModel.load`). Malformed or inconsistent tensors throw
 * an Error naming them.
 *
 * @example
 * ```ts
 * import { loadQuantized } from "./export.ts";
 * import { testModelDir } from "../paths.ts";
 * try {
 *   const m = await loadQuantized(testModelDir());
 *   console.assert(m.quantizationConfig === null);
 * } catch (e) {
 *   console.assert(e instanceof Error); // the shared test model is not on this machine
 * }
 * ```
 */
export async function loadQuantized(dir: string): Promise<LoadedModel> {
  const config = await loadLlamaConfig(dir);
  const json = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  const qc = json.quantization_config as Record<string, unknown> | undefined;
  if (qc === undefined || qc === null) {
    const model = await LlamaModel.load(dir);
    const schemes = new Map<string, InputScheme>();
    return {
      model,
      linear: quantizedLinear(model, schemes),
      schemes,
      quantizationConfig: null,
      fp4: new Map(),
    };
  }
  const where = `${dir}/config.json`;
  if (qc.quant_method !== "fp4lab" || qc.layout !== CHECKPOINT_LAYOUT) {
    throw new Error(
      `${where}: quantization_config is not fp4lab's (quant_method "fp4lab", layout ` +
        `"${CHECKPOINT_LAYOUT}"), got ${JSON.stringify(qc.quant_method)} / ${
          JSON.stringify(qc.layout)
        }`,
    );
  }
  const spec = specFromJson(qc.weights, `${where} quantization_config.weights`);
  const act = qc.activations
    ? specFromJson(qc.activations, `${where} quantization_config.activations`)
    : null;
  const activations = qc.activations as Record<string, unknown> | null | undefined;
  const staticAct = act !== null && activations?.dynamic === false;
  if (staticAct && act.tensorScale !== "amax") {
    throw new Error(
      `${where}: static activation scales need an activation format with an amax tensor scale`,
    );
  }
  const rot = qc.rotation as { block?: unknown; seed?: unknown } | null;
  const block = rot ? Number(rot.block) : 0;
  const scheme: InputScheme = Object.freeze({
    rotation: block
      ? (rot!.seed == null ? { block } : { block, seed: BigInt(String(rot!.seed)) })
      : null,
    act,
  });
  await using ckpt = await SafetensorsCheckpoint.open(dir);
  const weights = new Map<string, Weight>();
  const schemes = new Map<string, InputScheme>();
  const fp4 = new Map<string, Fp4Weights>();
  const sharedStatic = new Map<number, InputScheme>();
  const kernel = fp4KernelFormat(spec);
  for (const [name, shape] of llamaWeightShapes(config)) {
    const module = name.slice(0, -".weight".length);
    if (ckpt.has(name)) {
      const w = weightOf(await ckpt.read(name));
      if (!w) throw new Error(`${dir}: tensor "${name}" has an unsupported dtype`);
      weights.set(name, w as Weight);
      continue;
    }
    if (!ckpt.has(`${module}.weight_packed`)) {
      throw new Error(`${dir}: the checkpoint has neither "${name}" nor "${module}.weight_packed"`);
    }
    const [rows, cols] = shape;
    const codes = await ckpt.read(`${module}.weight_packed`);
    const scales = await ckpt.read(`${module}.weight_scale`).catch(() => {
      throw new Error(`${dir}: "${module}.weight_scale" is missing`);
    });
    const ts = ckpt.has(`${module}.weight_tensor_scale`)
      ? await ckpt.read(`${module}.weight_tensor_scale`)
      : null;
    const zeros = ckpt.has(`${module}.weight_zero_point`)
      ? await ckpt.read(`${module}.weight_zero_point`)
      : null;
    const packed = ["e2m1", "int4", "uint4"].includes(spec.element) ? rows * cols / 2 : rows * cols;
    if (codes.dtype !== "U8" || codes.data.length !== packed) {
      throw new Error(
        `${dir}: "${module}.weight_packed" is ${codes.dtype} of ${codes.data.length} bytes, ` +
          `expected U8 of ${packed} for [${rows}, ${cols}] ${spec.element}`,
      );
    }
    const g = spec.groupSize;
    const scaleShape: [number, number] = g === "tensor"
      ? [1, 1]
      : g === "channel"
      ? [rows, 1]
      : [rows, cols / g];
    if (
      scales.shape.join() !== scaleShape.join() || scales.dtype !== SCALE_DTYPE[spec.scaleFormat]
    ) {
      throw new Error(
        `${dir}: "${module}.weight_scale" is ${scales.dtype} [${scales.shape.join(", ")}], ` +
          `expected ${SCALE_DTYPE[spec.scaleFormat]} [${scaleShape.join(", ")}]`,
      );
    }
    const wantsTensorScale = spec.tensorScale !== "none" || spec.scaleRule === "mr-gptq";
    if (
      wantsTensorScale !== (ts !== null) || (ts && (ts.dtype !== "F32" || ts.data.length !== 4))
    ) {
      throw new Error(
        `${dir}: "${module}.weight_tensor_scale" must be F32 [1] exactly when the format has one`,
      );
    }
    const quantized: Quantized = {
      spec,
      shape: [rows, cols],
      codes: codes.data,
      scales: scales.data,
      scaleShape,
      zeros: zeros ? zeros.data : null,
      tensorScale: ts
        ? new DataView(ts.data.buffer, ts.data.byteOffset, 4).getFloat32(0, true)
        : null,
    };
    let data: Float32Array;
    try {
      data = dequantize(quantized);
    } catch (e) {
      throw new Error(`${dir}: "${module}": ${(e as Error).message}`, { cause: e });
    }
    weights.set(name, { dtype: "f32", shape: [rows, cols], data });
    schemes.set(
      module,
      staticAct ? await staticSchemeOf(ckpt, module, scheme, sharedStatic, dir) : scheme,
    );
    const kernelWeights = kernel ? fp4WeightsOf(quantized) : null;
    if (kernelWeights) fp4.set(module, kernelWeights);
  }
  const model = LlamaModel.fromWeights(config, weights);
  return { model, linear: quantizedLinear(model, schemes), schemes, quantizationConfig: qc, fp4 };
}
