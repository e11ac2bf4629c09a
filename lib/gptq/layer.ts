/**
 * Layer-level quantization: RTN, GPTQ and MR-GPTQ of one linear layer with the same call.
 *
 * - `"rtn"`: round to nearest with the format's scale rule, optionally after a rotation.
 * - `"gptq"`: GPTQ without rotation (MXFP4 with the OCP scale rule, no MSE search by default).
 * - `"mr-gptq"`: block-Hadamard rotation (default {@linkcode mrGptqRotation}), GPTQ in the
 *   rotated space, format-specific scales: MXFP4 with MSE-searched E8M0 scales (OCP rule as the
 *   starting point: on brown-llama-29m W4A4 it measured 57.87 ppl against 58.04 for the FP-Quant
 *   `mr-gptq` rule, bench/results/accuracy-brown-llama-29m-2026-11-23.json), NVFP4 with the tensor
 *   scale of the rotated weights and MSE-searched E4M3 block scales. A rule or `mse` given in the
 *   format string or spec object wins over these defaults.
 *
 * The returned weights live in the rotated space (the layer computes (x R) Q^T); the proxy loss
 * trace((W' - Q) H' (W' - Q)^T) is computed there, and equals trace((W - Q R^T) H (W - Q R^T)^T)
 * in the original space because R is orthonormal.
 *
 * @module
 */
import type { Device } from "../device.ts";
import { Tensor } from "../tensor.ts";
import {
  hadamardF64,
  type HadamardOptions,
  hadamardScale,
  hadamardSign,
} from "../formats/hadamard.ts";
import { packCodes } from "../formats/quantize.ts";
import { chooseGroupScalesNative, hadamardOn } from "../formats/native.ts";
import { type QuantSpec, resolveSpec, type SpecInput } from "../formats/spec.ts";
import { Hessian } from "./hessian.ts";
import { gptqSolveNative, proxyLossNative } from "./native.ts";
import { groupQuantizer } from "./quantizer.ts";
import {
  type ActOrder,
  descendingOrder,
  gptqReference,
  type ScaleMode,
  validateProblem,
} from "./reference.ts";

/** Quantization methods with one API. */
export type GptqMethod = "rtn" | "gptq" | "mr-gptq";
/** The format presets GPTQ is studied with (any symmetric lib/formats spec works). */
export type GptqFormat = "mxfp4" | "nvfp4" | "int4";
/** MXFP4 (E8M0) scale rules, docs/FORMATS.md §5.5. */
export type MxScaleRule = "ocp" | "ceil" | "round" | "mr-gptq";

/** Options of {@linkcode quantizeLayer}. */
export interface QuantizeLayerOptions {
  /** Number format: a lib/formats preset or spec (`"mxfp4"`, `"nvfp4"`, `"int4:g32"`, ...). */
  format: GptqFormat | SpecInput | QuantSpec;
  /** Method; default `"mr-gptq"`. */
  method?: GptqMethod;
  /** Hadamard block size, or 0 for none; default {@linkcode mrGptqRotation} for mr-gptq, else 0. */
  hadamard?: number;
  /** Seed of the Hadamard's random column signs (lib/formats `hadamard`); default none. */
  hadamardSeed?: number | bigint;
  /**
   * The Hessian is already that of the rotated inputs (R^T H R for this call's rotation, e.g.
   * accumulated from inputs rotated on the device), so it is used as given.
   */
  hessianRotated?: boolean;
  /** Elements per scale; default the format's (mxfp4 32, nvfp4 16, int4 128). */
  groupSize?: number;
  /** E8M0 scale rule; default the one in `format` (OCP for the mxfp4 preset). */
  rule?: MxScaleRule;
  /** MSE scale search (lib/formats DEFAULT_MSE); default on for mr-gptq unless `format` says. */
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
  /** Device of the native solver; default W's device when W is a Tensor, else `"cpu"`. */
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
  /** The resolved lib/formats spec (the layout of codes and scales). */
  spec: QuantSpec;
  /** One-line description of the spec (lib/formats `describeSpec`). */
  format: string;
  /** Elements per scale. */
  groupSize: number;
  /** Element codes (storage bits), rows x cols, one per byte. */
  codes: Uint8Array;
  /** The codes packed as lib/formats stores them (docs/FORMATS.md §6: 4-bit codes two per byte, element 2i in the low nibble). */
  packedCodes: Uint8Array;
  /** Raw scale bits, rows x groups, lib/formats layout (e8m0/e4m3: one byte; f16: two, LE). */
  scaleBits: Uint8Array;
  /** Effective scale of every group (decoded block scale x tensor scale), rows x groups. */
  scales: Float32Array;
  /** The float32 tensor scale (NVFP4 amax, the mr-gptq constant), or null. */
  tensorScale: number | null;
  /** The rotation of the input dimension (online: x -> lib/formats `hadamard(x, ...)`), or null. */
  rotation: { block: number; seed?: number | bigint } | null;
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

// Whether the caller's format already chose `key` (a modifier in a preset string, or a field of a
// spec object), so that a method default must not override it.
function formatSays(format: QuantizeLayerOptions["format"], key: "mse"): boolean {
  if (typeof format === "string") return format.split(":").slice(1).some((m) => m.startsWith(key));
  return key in format;
}

function layerSpec(options: QuantizeLayerOptions, mr: boolean): QuantSpec {
  const base = resolveSpec(options.format);
  const spec: Record<string, unknown> = { ...base };
  if (options.groupSize !== undefined) spec.groupSize = options.groupSize;
  if (options.rule !== undefined) spec.scaleRule = options.rule;
  const mse = options.mse ?? (mr && !formatSays(options.format, "mse") ? true : undefined);
  if (mse !== undefined) spec.mse = mse ? (base.mse ?? true) : null;
  return resolveSpec(spec as SpecInput);
}

/**
 * MR-GPTQ's default rotation size for `spec` with `groupSize` elements per scale: 16 for the
 * FP4 (E2M1) formats, the size that measured best on brown-llama-29m W4A4 for NVFP4 (group 16)
 * and MXFP4 (group 32) alike (MXFP4: 57.48 ppl with 16 against 57.64 with 32, and 57.81 against
 * 58.04 before the output objective; bench/results/accuracy-objective-brown-llama-29m-2026-11-23.md),
 * at most the group size; the group size for every other element (not measured).
 *
 * @example
 * ```ts
 * import { mrGptqRotation } from "./layer.ts";
 * import { resolveSpec } from "../formats/spec.ts";
 * console.assert(mrGptqRotation(resolveSpec("mxfp4")) === 16);
 * console.assert(mrGptqRotation(resolveSpec("int4:g64")) === 64);
 * ```
 */
export function mrGptqRotation(
  spec: QuantSpec,
  groupSize: number = typeof spec.groupSize === "number" ? spec.groupSize : 0,
): number {
  return spec.element === "e2m1" ? Math.min(16, groupSize) : groupSize;
}

function hostF32(name: string, t: Tensor): Float32Array {
  if (t.dtype !== "f32") throw new Error(`${name} must be an f32 tensor, got ${t.dtype}`);
  return t.toArray() as Float32Array;
}

/**
 * H' = R^T H R for the rotation R of lib/formats `hadamard` (x -> x R), in float64: the
 * transform applied to the rows of H (A = H R), then R^T A as the same signs, butterflies and
 * scaling down every column, done as operations between whole rows (contiguous, no transpose):
 * bit for bit the transpose of rotating the rows of A^T (H' is symmetric up to that rounding).
 */
function rotateHessian(h: Float64Array, cols: number, rot: HadamardOptions): Float64Array {
  const a = hadamardF64(h, [cols, cols], rot);
  if (rot.seed !== undefined) {
    for (let i = 0; i < cols; i++) {
      const s = hadamardSign(i, rot.seed);
      for (let k = i * cols; k < (i + 1) * cols; k++) a[k] *= s;
    }
  }
  const b = rot.block, c = hadamardScale(b);
  for (let base = 0; base < cols; base += b) {
    for (let step = 1; step < b; step <<= 1) {
      for (let j = base; j < base + b; j += 2 * step) {
        for (let i = j; i < j + step; i++) {
          const u0 = i * cols, w0 = (i + step) * cols;
          for (let k = 0; k < cols; k++) {
            const u = a[u0 + k], w = a[w0 + k];
            a[u0 + k] = u + w;
            a[w0 + k] = u - w;
          }
        }
      }
    }
    for (let k = base * cols; k < (base + b) * cols; k++) a[k] *= c;
  }
  return a;
}

/** `hadamard` of lib/formats on the rows of W, by the native CPU backend (its bit-exact twin). */
async function rotateRows(
  w: Float32Array,
  rows: number,
  cols: number,
  rot: HadamardOptions,
): Promise<Float32Array> {
  using t = Tensor.from(w, [rows, cols]);
  using r = await hadamardOn("cpu", t, rot);
  return r.data() as Float32Array;
}

/** A Hessian read back, checked and rotated once for every layer that shares it (q/k/v, gate/up). */
interface PreparedHessian {
  /** The rotation applied here ("" when none was, or H came rotated). */
  rotation: string;
  h: Float32Array | ArrayLike<number>;
  /** The float64 rotation of H when this module rotated it. */
  hr: Float64Array | null;
  /** H in the rotated space as the solvers take it, and its diagonal. */
  hr32: Float32Array;
  diag: Float64Array;
}
const prepared = new WeakMap<Hessian, PreparedHessian>();

/**
 * Quantizes one linear layer `w` (rows x cols = out x in, row-major) given the Hessian of its
 * inputs (cols x cols, or a {@linkcode Hessian}). Bad input throws an Error and returns nothing.
 * The rotation is lib/formats `hadamard` (float32, Sylvester order, optional seeded signs), the
 * transform activations get online; W' = hadamard(W) in float32 and H' = R^T H R in float64.
 * W and H may be f32 Tensors: they are read back for the checks, scales and order, and handed to
 * the native solver where they lie when no rotation changes them (no second upload).
 *
 * @example
 * ```ts
 * import { quantizeLayer } from "./layer.ts";
 * import { hessianOf, syntheticLayer } from "./synthetic.ts";
 * const l = syntheticLayer(8, 64, 128, 1);
 * const q = await quantizeLayer(l.w, 8, 64, Float32Array.from(hessianOf(l.x, 128, 64)), {
 *   format: "mxfp4", method: "mr-gptq",
 * });
 * console.assert(q.rotation?.block === 16 && q.codes.length === 512 && q.packedCodes.length === 256);
 * ```
 */
export async function quantizeLayer(
  weights: ArrayLike<number> | Tensor,
  rows: number,
  cols: number,
  hessian: ArrayLike<number> | Hessian | Tensor,
  options: QuantizeLayerOptions,
): Promise<QuantizedLayer> {
  const method = options.method ?? "mr-gptq";
  const mr = method === "mr-gptq";
  const spec = layerSpec(options, mr);
  const quantizer = groupQuantizer(spec);
  const gs = quantizer.groupSize;
  const w = weights instanceof Tensor ? hostF32("W", weights) : weights;
  const memo = hessian instanceof Hessian ? prepared.get(hessian) : undefined;
  const h = memo?.h ??
    (hessian instanceof Hessian
      ? hessian.matrix()
      : hessian instanceof Tensor
      ? hostF32("H", hessian)
      : hessian);
  const groups = validateProblem(w, h, rows, cols, gs);
  for (const [name, a] of (memo ? [["W", w]] : [["W", w], ["H", h]]) as [string, typeof w][]) {
    for (let i = 0; i < a.length; i++) {
      if (!Number.isFinite(a[i])) throw new Error(`${name} has a non-finite value at ${i}`);
    }
  }
  const block = options.hadamard ?? (mr ? mrGptqRotation(spec, gs) : 0);
  if (
    block && !(Number.isInteger(block) && block >= 2 && block <= 4096 &&
      (block & (block - 1)) === 0 && cols % block === 0)
  ) {
    throw new Error(
      `the rotation size ${block} must be a power of two in 2..4096 dividing the ${cols} in-features`,
    );
  }
  const rot: HadamardOptions | null = block
    ? (options.hadamardSeed === undefined ? { block } : { block, seed: options.hadamardSeed })
    : null;
  const w32 = Float32Array.from(w);
  const wr = rot ? await rotateRows(w32, rows, cols, rot) : w32;
  const rotation = rot && !options.hessianRotated ? `${rot.block}|${rot.seed ?? ""}` : "";
  let ph = memo;
  if (!ph || ph.rotation !== rotation) {
    const hr = rotation ? rotateHessian(Float64Array.from(h), cols, rot!) : null;
    const hr32 = hr ? Float32Array.from(hr) : h instanceof Float32Array ? h : Float32Array.from(h);
    const diag = Float64Array.from({ length: cols }, (_, j) => (hr ?? h)[j * cols + j]);
    ph = { rotation, h, hr, hr32, diag };
    if (hessian instanceof Hessian) prepared.set(hessian, ph);
  }
  const prep = ph;
  const codec = quantizer.codec;
  const actOrder = options.actOrder ?? "static";
  const base = {
    rows,
    cols,
    method,
    spec,
    format: quantizer.name,
    groupSize: gs,
    rotation: rot ? { ...rot } : null,
  };
  const pack = (codes: Uint8Array) => ({ codes, packedCodes: packCodes(codes, codec.codeBits) });

  if (method === "rtn") {
    const c = await chooseGroupScalesNative(wr, rows, cols, spec, options.device);
    const codes = new Uint8Array(rows * cols);
    const dq = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < cols; j++) {
        const s = c.effective[r * groups + Math.floor(j / gs)];
        if (s === 0) continue;
        const bits = codec.encode(Math.fround(wr[r * cols + j] / s));
        codes[r * cols + j] = bits;
        dq[r * cols + j] = Math.fround(codec.value(bits) * s);
      }
    }
    return {
      ...base,
      ...pack(codes),
      scaleBits: c.scales,
      scales: c.effective,
      tensorScale: c.tensorScale,
      dequantized: dq,
      proxyLoss: await proxyLossNative(wr, dq, prep.hr32, rows, cols),
      damp: 0,
    };
  }

  const common = {
    damp: options.damp,
    blockSize: options.blockSize,
    maxDampRetries: options.maxDampRetries,
  };
  if ((options.solver ?? "native") === "reference") {
    const r = gptqReference(wr, prep.hr ? prep.hr.slice() : Float64Array.from(prep.h), rows, cols, {
      ...common,
      quantizer,
      scales: options.scales,
      actOrder,
    });
    return {
      ...base,
      ...pack(r.codes),
      scaleBits: r.scaleBits,
      scales: r.scales,
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
  const solverDevice = options.device ?? (weights instanceof Tensor ? weights.device : "cpu");
  // Static scales from the rotated weights with dead inputs zeroed, as the reference does
  // (wr is this call's own copy). An unrotated W Tensor without dead inputs is the same W, so
  // it goes to the solver where it lies.
  let dead = 0;
  for (let j = 0; j < cols; j++) {
    if (prep.diag[j] !== 0) continue;
    dead++;
    for (let r = 0; r < rows; r++) wr[r * cols + j] = 0;
  }
  const c = await chooseGroupScalesNative(wr, rows, cols, spec, solverDevice);
  const order = actOrder === "static" ? descendingOrder(prep.diag) : undefined;
  const wIn = !rot && !dead && weights instanceof Tensor ? weights : wr;
  const hIn = !rot && hessian instanceof Tensor ? hessian : prep.hr32;
  const r = await gptqSolveNative(wIn, hIn, rows, cols, {
    ...common,
    scales: c.effective,
    groupSize: gs,
    element: spec.element,
    order,
    device: solverDevice,
  });
  return {
    ...base,
    ...pack(r.codes),
    scaleBits: c.scales,
    scales: c.effective,
    tensorScale: c.tensorScale,
    permutation: order,
    dequantized: r.dequantized,
    proxyLoss: r.proxyLoss,
    damp: r.damp,
  };
}
