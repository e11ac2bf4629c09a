/**
 * Layer-level quantization: RTN, GPTQ and MR-GPTQ of one linear layer with the same call.
 *
 * - `"rtn"`: round to nearest with the format's scale rule, optionally after a rotation.
 * - `"gptq"`: GPTQ without rotation (MXFP4 with the OCP scale rule, no MSE search by default).
 * - `"mr-gptq"`: block-Hadamard rotation (default block = the format's group size), GPTQ in the
 *   rotated space, format-specific scales: MXFP4 with the `mr-gptq` rule and MSE search, NVFP4
 *   with the tensor scale of the rotated weights and MSE-searched E4M3 block scales.
 *
 * The returned weights live in the rotated space (the layer computes (x R) Q^T); the proxy loss
 * trace((W' - Q) H' (W' - Q)^T) is computed there, and equals trace((W - Q R^T) H (W - Q R^T)^T)
 * in the original space because R is orthonormal.
 *
 * @module
 */
import type { Device } from "../device.ts";
import { Hessian } from "./hessian.ts";
import { formatQuantizer, type GptqFormat, type MxScaleRule } from "./formats.ts";
import { gptqSolveNative } from "./native.ts";
import { roundToLevel } from "./quantizer.ts";
import {
  type ActOrder,
  descendingOrder,
  gptqReference,
  proxyLoss,
  type ScaleMode,
  validateProblem,
} from "./reference.ts";
import { rotateHessian, rotateRows } from "./rotation.ts";

/** Quantization methods with one API. */
export type GptqMethod = "rtn" | "gptq" | "mr-gptq";

/** Options of {@linkcode quantizeLayer}. */
export interface QuantizeLayerOptions {
  /** Number format. */
  format: GptqFormat;
  /** Method; default `"mr-gptq"`. */
  method?: GptqMethod;
  /** Hadamard block size, or 0 for none; default: group size for mr-gptq, 0 otherwise. */
  hadamard?: number;
  /** Elements per scale; default the format's (mxfp4 32, nvfp4 16, int4 32). */
  groupSize?: number;
  /** MXFP4 scale rule; default `"mr-gptq"` for mr-gptq, `"ocp"` otherwise. */
  rule?: MxScaleRule;
  /** MSE scale search; default on for mr-gptq, off otherwise. */
  mse?: boolean;
  /** Group scale mode; default `"static"` (dynamic needs `solver: "reference"`). */
  scales?: ScaleMode;
  /** Column order; default `"static"` for GPTQ methods (ignored by RTN). */
  actOrder?: ActOrder;
  /** Relative damping; default 0.01. */
  damp?: number;
  /** Lazy-update block size; default 128. */
  blockSize?: number;
  /** Damping increases (x10) after a failed factorization; default 4. */
  maxDampRetries?: number;
  /** `"native"` (default) or the float64 `"reference"` (small layers). */
  solver?: "native" | "reference";
  /** Device of the native solver; default `"cpu"`. */
  device?: Device;
}

/** A quantized layer; per-column arrays in stored (rotated-space) column order. */
export interface QuantizedLayer {
  /** Output features. */
  rows: number;
  /** Input features. */
  cols: number;
  /** The method that produced it. */
  method: GptqMethod;
  /** Format name including the MXFP4 rule, e.g. `"mxfp4(mr-gptq)"`. */
  format: string;
  /** Elements per scale. */
  groupSize: number;
  /** Element codes, rows x cols, one per byte (pack with lib/formats). */
  codes: Uint8Array;
  /** Block scale values (decoded), rows x groups. */
  scales: Float32Array;
  /** Per-tensor scale (1 when the format has none). */
  tensorScale: number;
  /** The rotation applied to the input dimension (online: x -> x R), or null. */
  rotation: { block: number } | null;
  /** Processing order with act-order (not needed at inference with static scales). */
  permutation?: Int32Array;
  /** Group of every column when groups follow the processing order (dynamic + act-order). */
  groupIndex?: Int32Array;
  /** Dequantized weights in the rotated space, rows x cols. */
  dequantized: Float32Array;
  /** trace((W' - Q) H' (W' - Q)^T) (= the original-space value; R is orthonormal). */
  proxyLoss: number;
  /** Absolute damping used (0 for RTN). */
  damp: number;
}

/**
 * Quantizes one linear layer `w` (rows x cols = out x in, row-major) given the Hessian of its
 * inputs (cols x cols, or a {@linkcode Hessian}). Bad input throws an Error and returns nothing.
 *
 * @example
 * ```ts
 * import { quantizeLayer } from "./layer.ts";
 * import { hessianOf, syntheticLayer } from "./synthetic.ts";
 * const l = syntheticLayer(8, 64, 128, 1);
 * const q = await quantizeLayer(l.w, 8, 64, Float32Array.from(hessianOf(l.x, 128, 64)), {
 *   format: "mxfp4", method: "mr-gptq",
 * });
 * console.assert(q.rotation?.block === 32 && q.codes.length === 512);
 * ```
 */
export async function quantizeLayer(
  w: ArrayLike<number>,
  rows: number,
  cols: number,
  hessian: ArrayLike<number> | Hessian,
  options: QuantizeLayerOptions,
): Promise<QuantizedLayer> {
  const method = options.method ?? "mr-gptq";
  const mr = method === "mr-gptq";
  const quantizer = formatQuantizer(options.format, {
    groupSize: options.groupSize,
    rule: options.rule ?? (mr ? "mr-gptq" : "ocp"),
    mse: options.mse ?? mr,
  });
  const gs = quantizer.groupSize;
  const h = hessian instanceof Hessian ? hessian.matrix() : hessian;
  const groups = validateProblem(w, h, rows, cols, gs);
  for (const [name, a] of [["W", w], ["H", h]] as const) {
    for (let i = 0; i < a.length; i++) {
      if (!Number.isFinite(a[i])) throw new Error(`${name} has a non-finite value at ${i}`);
    }
  }
  const block = options.hadamard ?? (mr ? gs : 0);
  const wr = block ? rotateRows(w, rows, cols, block) : Float64Array.from(w);
  const hr = block ? rotateHessian(h, cols, block) : Float64Array.from(h);
  const rotation = block ? { block } : null;
  const actOrder = options.actOrder ?? "static";
  const base = { rows, cols, method, format: quantizer.name, groupSize: gs, rotation };

  if (method === "rtn") {
    const st = quantizer.tensorScale(wr, rows, cols);
    const scales = quantizer.chooseScales(wr, rows, cols, 0, groups, st).block;
    const codes = new Uint8Array(rows * cols);
    const dq = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const s = Math.fround(scales[r * groups + Math.floor(c / gs)] * st);
        const li = roundToLevel(quantizer.levels, Math.fround(wr[r * cols + c] / s));
        codes[r * cols + c] = quantizer.levels.codes[li];
        dq[r * cols + c] = Math.fround(quantizer.levels.values[li] * s);
      }
    }
    return {
      ...base,
      codes,
      scales: Float32Array.from(scales),
      tensorScale: st,
      dequantized: dq,
      proxyLoss: proxyLoss(wr, dq, hr, rows, cols),
      damp: 0,
    };
  }

  const common = {
    damp: options.damp,
    blockSize: options.blockSize,
    maxDampRetries: options.maxDampRetries,
  };
  if ((options.solver ?? "native") === "reference") {
    const r = gptqReference(wr, hr, rows, cols, {
      ...common,
      quantizer,
      scales: options.scales,
      actOrder,
    });
    return {
      ...base,
      codes: r.codes,
      scales: Float32Array.from(r.blockScales),
      tensorScale: r.tensorScale,
      permutation: r.permutation,
      groupIndex: r.groupIndex,
      dequantized: Float32Array.from(r.dequantized),
      proxyLoss: r.proxyLoss,
      damp: r.damp,
    };
  }
  if ((options.scales ?? "static") !== "static") {
    throw new Error(
      'dynamic group scales are implemented by the reference solver only (solver: "reference")',
    );
  }
  // Static scales from the rotated weights with dead inputs zeroed, as the reference does.
  const wz = Float64Array.from(wr);
  for (let j = 0; j < cols; j++) {
    if (hr[j * cols + j] !== 0) continue;
    for (let r = 0; r < rows; r++) wz[r * cols + j] = 0;
  }
  const st = quantizer.tensorScale(wz, rows, cols);
  const scales = quantizer.chooseScales(wz, rows, cols, 0, groups, st).block;
  const order = actOrder === "static"
    ? descendingOrder(Float64Array.from({ length: cols }, (_, j) => hr[j * cols + j]))
    : undefined;
  const r = await gptqSolveNative(Float32Array.from(wz), Float32Array.from(hr), rows, cols, {
    ...common,
    scales: Float32Array.from(scales, (s) => s * st),
    groupSize: gs,
    levels: quantizer.levels,
    order,
    device: options.device,
  });
  return {
    ...base,
    codes: r.codes,
    scales: Float32Array.from(scales),
    tensorScale: st,
    permutation: order,
    dequantized: r.dequantized,
    proxyLoss: r.proxyLoss,
    damp: r.damp,
  };
}
