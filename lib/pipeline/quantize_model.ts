/**
 * Sequential (GPTQ-style) quantization of a whole Llama model, block by block:
 *
 * 1. **calibrate**: the calibration windows' residual streams entering the block run through
 *    it with its current weights while {@linkcode HessianCapture} streams the inputs of its
 *    linear layers into Hessians (q/k/v share one, gate/up share one); these are the
 *    unrotated, unquantized inputs (lib/gptq rotates H itself), as in GPTQ and MR-GPTQ. Other
 *    objectives (objective.ts; `"weights"` is the default; `"teacher"` on the CPU only) capture
 *    with {@linkcode ObjectiveCapture} (CUDA: the same inside the block runner) instead: the Hessian of the inputs the FP4 GEMM sees and
 *    the least-squares target GPTQ then rounds;
 * 2. **quantize**: every linear of the block is quantized (RTN with lib/formats, GPTQ and
 *    MR-GPTQ with lib/gptq `quantizeLayer`) and its weight replaced by the dequantized values,
 *    kept in the rotated space when there is a rotation (the forward pass then rotates the
 *    layer's input online, as an FP4 engine does; see act_quant.ts);
 * 3. **propagate**: the windows run through the *quantized* block (with the online input
 *    rotation and activation quantization) to give the next block's inputs.
 *
 * Peak memory is one residual stream per window (windows x 512 x hidden f32) plus one block's
 * Hessians. The LM head and the embeddings stay as they are.
 *
 * @module
 */
import type { Device } from "../device.ts";
import { requireDevice } from "../device.ts";
import { toFloat32 } from "../dtype.ts";
import { hadamard, type HadamardOptions, inverseHadamard } from "../formats/hadamard.ts";
import { dequantize, quantize, type Quantized } from "../formats/quantize.ts";
import { dequantizeOn } from "../formats/native.ts";
import { type QuantSpec, resolveSpec } from "../formats/spec.ts";
import type { Hessian } from "../gptq/hessian.ts";
import { type GptqMethod, mrGptqRotation, quantizeLayer } from "../gptq/layer.ts";
import { type Linear, matmulWeight } from "../model/forward.ts";
import type { LlamaModel, Weight } from "../model/llama.ts";
import { type InputScheme, quantizedLinear } from "./act_quant.ts";
import { calibrateActScales, staticScheme } from "./act_scales.ts";
import { cpuBlockRunner, cudaBlockRunner } from "./block_runner.ts";
import { type Fp4Weights, fp4WeightsOf } from "../kernels/fp4_linear.ts";
import { blockLinears, hessianGroup } from "./calibrate.ts";
import { type CalibrationObjective, resolveObjective } from "./objective.ts";

/** Quantization methods of {@linkcode quantizeModel}. */
export const METHODS: readonly GptqMethod[] = ["rtn", "gptq", "mr-gptq"];

/** Progress of {@linkcode quantizeModel}: one event as a stage starts (`done` 0), then one per finished step. */
export interface QuantizeProgress {
  /** The stage running. */
  stage: "calibrate" | "quantize" | "propagate" | "act-scales";
  /** Decoder block (the last one for `act-scales`, which runs the whole model per window). */
  block: number;
  /** Steps of this stage done (windows, or layers for `quantize`). */
  done: number;
  /** Steps of this stage in this block. */
  total: number;
}

/** Options of {@linkcode quantizeModel}. */
export interface QuantizeModelOptions {
  /** Weight format: a lib/formats preset string such as `"nvfp4"`, `"mxfp4"`, `"int4:g128"`. */
  format: string;
  /** Method; RTN takes any preset, GPTQ and MR-GPTQ the FP4 presets and int4. */
  method: GptqMethod;
  /** Hadamard block size, 0 for none; default lib/gptq `mrGptqRotation` for mr-gptq, else 0. */
  hadamard?: number;
  /** Activation format (W4A4 etc.): inputs of every quantized linear are quantized online. */
  actFormat?: string | null;
  /**
   * The activation tensor scale of formats that have one (NVFP4): `"dynamic"` (default, from
   * each call's input) or `"static"` (one per layer, calibrated on the calibration windows by
   * act_scales.ts on `device` once every layer is quantized).
   */
  actScale?: ActScale;
  /**
   * Where the block forward passes, Hessians and GPTQ solves run (default `"cpu"`); on
   * `"cuda"` the windows' residual streams stay on the GPU (lib/pipeline/block_runner.ts).
   */
  device?: Device;
  /** Relative GPTQ damping (default lib/gptq's 0.01). */
  damp?: number;
  /** What GPTQ minimises per layer (objective.ts); default objective.ts `resolveObjective`'s. */
  objective?: CalibrationObjective;
  /** Called after every window or layer. */
  onProgress?: (p: QuantizeProgress) => void;
  /**
   * Called with each block's Hessians (by group) before its layers are quantized (freed after);
   * on CUDA with GPTQ methods, those of the rotated inputs (R^T H R).
   */
  onHessians?: (block: number, hessians: ReadonlyMap<string, Hessian>) => void;
}

/** How activation tensor scales are found: per call, or calibrated once per layer. */
export type ActScale = "dynamic" | "static";

/** One quantized linear layer. */
export interface QuantizedLinear {
  /** Module name, e.g. `model.layers.0.self_attn.q_proj`. */
  name: string;
  /** Packed codes, raw scale bits and tensor scale of the weight in the rotated space. */
  quantized: Quantized;
  /** How the forward pass treats the layer's input. */
  scheme: InputScheme;
  /**
   * trace((W - Q) H (W - Q)^T) in the original space (with the objectives of objective.ts:
   * (W* - Q) and H~), or NaN without calibration.
   */
  proxyLoss: number;
  /** Seconds spent quantizing this layer. */
  seconds: number;
}

/** The result of {@linkcode quantizeModel}. */
export interface QuantizedModel {
  /** The model, its linear weights replaced by their dequantized (rotated-space) values. */
  model: LlamaModel;
  /** The forward pass's hook for the quantized model (online rotation, activation quant). */
  linear: Linear;
  /** Quantized layers by module name, in forward order. */
  layers: Map<string, QuantizedLinear>;
  /** Weight spec as stored (for GPTQ methods with the scale rule and MSE search lib/gptq used). */
  spec: QuantSpec;
  /** Activation spec, or null (with static scales, each layer's scheme holds its own s_t). */
  actSpec: QuantSpec | null;
  /** Whether the activation tensor scales are dynamic or static (calibrated per layer). */
  actScale: ActScale;
  /** Method. */
  method: GptqMethod;
  /** Hadamard block size (0 = none). */
  hadamard: number;
  /** Calibration windows used (0 for RTN without calibration). */
  calibrationWindows: number;
  /** The per-layer objective GPTQ minimised (objective.ts). */
  objective: CalibrationObjective;
  /** Seconds per stage, summed over blocks. */
  timings: { calibrate: number; quantize: number; propagate: number; actScales: number };
}

/**
 * The stored weight spec of `format` under `method` as far as it is known before quantizing:
 * the preset for RTN; for GPTQ methods lib/gptq also sets the scale rule (`mr-gptq` for E8M0
 * scales under MR-GPTQ) and the MSE search, and {@linkcode QuantizedModel.spec} reports the
 * final spec.
 *
 * @example
 * ```ts
 * import { weightSpec } from "./quantize_model.ts";
 * console.assert(weightSpec("fp8", "rtn").groupSize === "tensor");
 * ```
 */
export function weightSpec(format: string, method: GptqMethod): QuantSpec {
  if (!METHODS.includes(method)) {
    throw new Error(`unknown method "${method}"; expected one of ${METHODS.join(", ")}`);
  }
  const spec = resolveSpec(format);
  if (
    method !== "rtn" &&
    (typeof spec.groupSize !== "number" || spec.element === "uint4" || spec.element === "uint8")
  ) {
    throw new Error(
      `--method ${method} needs a symmetric format with a numeric group size; "${format}" ` +
        `is not (use --method rtn for it)`,
    );
  }
  return spec;
}

function f32Of(w: Weight): Float32Array {
  return w.dtype === "f32" ? w.data as Float32Array : toFloat32(w.data as Uint16Array, "bf16");
}

// trace(E H E^T) with E = W - Q (original space), through the native matmul.
async function proxyLossOf(
  w: Float32Array,
  q: Float32Array,
  rows: number,
  cols: number,
  h: Float32Array,
): Promise<number> {
  const e = new Float32Array(rows * cols);
  for (let i = 0; i < e.length; i++) e[i] = w[i] - q[i];
  const eh = await matmulWeight(e, rows, { dtype: "f32", shape: [cols, cols], data: h });
  let sum = 0;
  for (let i = 0; i < e.length; i++) sum += e[i] * eh[i];
  return sum;
}

interface LayerResult {
  quantized: Quantized;
  dequantized: Float32Array;
  proxyLoss: number;
}

async function quantizeOne(
  w: Float32Array,
  rows: number,
  cols: number,
  hessian: Hessian | null,
  format: string,
  method: GptqMethod,
  rotation: HadamardOptions | null,
  device: Device,
  damp: number | undefined,
  hessianRotated: boolean,
): Promise<LayerResult> {
  if (method === "rtn") {
    const wr = rotation ? hadamard(w, [rows, cols], rotation) : w;
    const quantized = quantize(wr, [rows, cols], format);
    const dequantized = dequantize(quantized);
    let proxyLoss = NaN;
    if (hessian) {
      const back = rotation ? inverseHadamard(dequantized, [rows, cols], rotation) : dequantized;
      proxyLoss = await proxyLossOf(w, back, rows, cols, hessian.matrix());
    }
    return { quantized, dequantized, proxyLoss };
  }
  if (!hessian) throw new Error(`--method ${method} needs calibration data`);
  const r = await quantizeLayer(w, rows, cols, hessian, {
    format,
    method,
    hadamard: rotation?.block ?? 0,
    hadamardSeed: rotation?.seed,
    hessianRotated,
    damp,
    device,
  });
  const quantized: Quantized = Object.freeze({
    spec: r.spec,
    shape: Object.freeze([rows, cols] as [number, number]),
    codes: r.packedCodes,
    scales: r.scaleBits,
    scaleShape: Object.freeze([rows, cols / r.groupSize] as [number, number]),
    zeros: null,
    tensorScale: r.tensorScale,
  });
  // The stored form must give back exactly the weights GPTQ chose (it is what gets exported);
  // the native dequantizer is the TS one's bit-exact twin, and fast.
  using back = await dequantizeOn("cpu", quantized);
  const dequantized = back.data() as Float32Array;
  for (let i = 0; i < dequantized.length; i++) {
    if (dequantized[i] !== r.dequantized[i]) {
      throw new Error(
        `internal: the stored form of the GPTQ result does not reproduce its weights ` +
          `(element ${i}: ${dequantized[i]} vs ${r.dequantized[i]})`,
      );
    }
  }
  return { quantized, dequantized, proxyLoss: r.proxyLoss };
}

/**
 * What a {@linkcode DecodeEngine} over the quantized model (its dequantized weights) takes to run
 * it as an FP4 engine does: every layer's input scheme, and the packed weights of the layers the
 * W4A16 kernels run exactly (MXFP4/NVFP4; the others stay dense).
 *
 * @example
 * ```ts
 * import { engineInputsOf, quantizeModel } from "./quantize_model.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 16,
 * }));
 * const q = await quantizeModel(model, [], { format: "nvfp4", method: "rtn" });
 * const { schemes, quantized } = engineInputsOf(q);
 * console.assert(schemes.size === 7 && quantized.size === 7);
 * ```
 */
export function engineInputsOf(
  q: QuantizedModel,
): { schemes: Map<string, InputScheme>; quantized: Map<string, Fp4Weights> } {
  const schemes = new Map<string, InputScheme>();
  const quantized = new Map<string, Fp4Weights>();
  for (const [name, l] of q.layers) {
    schemes.set(name, l.scheme);
    const w = fp4WeightsOf(l.quantized);
    if (w) quantized.set(name, w);
  }
  return { schemes, quantized };
}

/**
 * Quantizes every decoder linear layer of `model` in place (the LM head stays), sequentially
 * block by block over the calibration windows (each an Int32Array of token ids; may be empty
 * for RTN, which then reports no proxy loss). Bad options (unknown preset, sizes not
 * divisible by the group or rotation size, GPTQ without calibration) throw before any work;
 * a failure later (e.g. a native error) leaves the model partly quantized: reload it.
 *
 * @example
 * ```ts
 * import { quantizeModel } from "./quantize_model.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 16,
 * }));
 * const windows = [Int32Array.from({ length: 8 }, (_, i) => i % 16)];
 * const q = await quantizeModel(model, windows, { format: "nvfp4", method: "mr-gptq" });
 * console.assert(q.layers.size === 7 && q.hadamard === 16);
 * ```
 */
export async function quantizeModel(
  model: LlamaModel,
  calibration: readonly Int32Array[],
  options: QuantizeModelOptions,
): Promise<QuantizedModel> {
  const method = options.method;
  let spec = weightSpec(options.format, method);
  const actSpec = options.actFormat ? resolveSpec(options.actFormat) : null;
  const device = requireDevice(options.device ?? "cpu");
  const objective = resolveObjective(method, actSpec !== null, options.objective);
  const hadamardBlock = options.hadamard ?? (method === "mr-gptq" ? mrGptqRotation(spec) : 0);
  if (!Number.isInteger(hadamardBlock) || hadamardBlock < 0) {
    throw new Error(`--hadamard must be 0 or a power of two, got ${options.hadamard}`);
  }
  if (hadamardBlock !== 0 && (hadamardBlock < 2 || (hadamardBlock & (hadamardBlock - 1)) !== 0)) {
    throw new Error(`the rotation size ${hadamardBlock} is not a power of two >= 2`);
  }
  const rotation: HadamardOptions | null = hadamardBlock ? { block: hadamardBlock } : null;
  if (method !== "rtn" && calibration.length === 0) {
    throw new Error(`--method ${method} needs calibration windows; none were given`);
  }
  const actScale = options.actScale ?? "dynamic";
  if (actScale !== "dynamic" && actScale !== "static") {
    throw new Error(`--act-scale must be dynamic or static, got "${actScale}"`);
  }
  if (actScale === "static") {
    if (!actSpec) throw new Error("--act-scale static needs an activation format (--act-format)");
    if (actSpec.tensorScale !== "amax") {
      throw new Error(
        `--act-scale static calibrates a tensor scale, which the activation format ` +
          `${options.actFormat} does not have (its scales are per group only; use e.g. nvfp4)`,
      );
    }
    if (calibration.length === 0) {
      throw new Error("--act-scale static needs calibration windows; none were given");
    }
  }
  const c = model.config;
  for (const name of blockLinears(0)) {
    const cols = model.weight(`${name}.weight`).shape[1];
    const checks: [string, number | string][] = [
      ["group size", spec.groupSize],
      ["rotation size", hadamardBlock],
      ["activation group size", actSpec?.groupSize ?? 0],
    ];
    for (const [what, n] of checks) {
      if (typeof n === "number" && n > 0 && cols % n !== 0) {
        throw new Error(
          `${name.replace("model.layers.0.", "")}: its ${cols} input features are not ` +
            `divisible by the ${what} ${n}`,
        );
      }
    }
  }
  for (const ids of calibration) {
    if (ids.length < 1) throw new Error("a calibration window is empty");
  }

  const scheme: InputScheme = Object.freeze({ rotation, act: actSpec });
  const schemes = new Map<string, InputScheme>();
  const linear = quantizedLinear(model, schemes);
  const layers = new Map<string, QuantizedLinear>();
  const timings = { calibrate: 0, quantize: 0, propagate: 0, actScales: 0 };
  const progress = options.onProgress ?? (() => {});
  if (objective === "teacher" && device === "cuda") {
    throw new Error(
      'the "teacher" calibration objective runs on the CPU pipeline only (--device cpu)',
    );
  }
  // GPTQ on CUDA takes the Hessians of the rotated inputs, rotated on the device as captured.
  const runner = device === "cuda"
    ? cudaBlockRunner(model, calibration, method === "rtn" ? null : rotation, {
      objective,
      scheme,
    })
    : cpuBlockRunner(model, calibration, linear, { objective, scheme });
  try {
    for (let b = 0; b < c.numLayers; b++) {
      let t = performance.now();
      let hessians: Map<string, Hessian> | null = null;
      if (runner.windows > 0) {
        let done = 0;
        progress({ stage: "calibrate", block: b, done, total: runner.windows });
        hessians = await runner.calibrate(
          b,
          () => progress({ stage: "calibrate", block: b, done: ++done, total: runner.windows }),
        );
        options.onHessians?.(b, hessians);
      }
      timings.calibrate += (performance.now() - t) / 1000;

      t = performance.now();
      const names = blockLinears(b);
      progress({ stage: "quantize", block: b, done: 0, total: names.length });
      for (const [i, name] of names.entries()) {
        const t0 = performance.now();
        const w = model.weight(`${name}.weight`);
        const [rows, cols] = w.shape;
        const hessian = hessians?.get(hessianGroup(name)) ?? null;
        const r = await quantizeOne(
          runner.target ? await runner.target(name, f32Of(w), rows, options.damp) : f32Of(w),
          rows,
          cols,
          hessian,
          options.format,
          method,
          rotation,
          device,
          options.damp,
          runner.hessianRotation !== null,
        );
        const dense: Weight = { dtype: "f32", shape: [rows, cols], data: r.dequantized };
        model.setWeight(`${name}.weight`, dense);
        runner.update(name, dense, scheme, r.quantized);
        spec = r.quantized.spec;
        schemes.set(name, scheme);
        layers.set(name, {
          name,
          quantized: r.quantized,
          scheme,
          proxyLoss: r.proxyLoss,
          seconds: (performance.now() - t0) / 1000,
        });
        progress({ stage: "quantize", block: b, done: i + 1, total: names.length });
      }
      for (const h of hessians?.values() ?? []) h.dispose();
      timings.quantize += (performance.now() - t) / 1000;

      t = performance.now();
      if (b + 1 < c.numLayers && runner.windows > 0) {
        let done = 0;
        progress({ stage: "propagate", block: b, done, total: runner.windows });
        await runner.propagate(
          b,
          () => progress({ stage: "propagate", block: b, done: ++done, total: runner.windows }),
        );
      }
      timings.propagate += (performance.now() - t) / 1000;
    }
  } finally {
    runner.dispose();
  }
  if (actScale === "static") {
    const t = performance.now();
    let done = 0;
    const block = c.numLayers - 1;
    progress({ stage: "act-scales", block, done, total: calibration.length });
    const scales = await calibrateActScales(model, schemes, calibration, {
      device,
      onWindow: () =>
        progress({ stage: "act-scales", block, done: ++done, total: calibration.length }),
    });
    // One scheme object per shared input, so q/k/v (gate/up) keep sharing one transform.
    const byGroup = new Map<string, InputScheme>();
    for (const [name, s] of scales) {
      const group = hessianGroup(name);
      const fixed = byGroup.get(group) ?? staticScheme(scheme, s);
      byGroup.set(group, fixed);
      schemes.set(name, fixed);
      layers.get(name)!.scheme = fixed;
    }
    timings.actScales = (performance.now() - t) / 1000;
  }
  return {
    model,
    linear,
    layers,
    spec,
    actSpec,
    actScale,
    method,
    hadamard: hadamardBlock,
    calibrationWindows: calibration.length,
    objective,
    timings,
  };
}
