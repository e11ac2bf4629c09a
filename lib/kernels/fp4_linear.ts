/**
 * W4A16 linear layer: FP4 weights (MXFP4 or NVFP4, packed as docs/FORMATS.md describes) times
 * BF16 activations, FP32 accumulation, BF16 output. On CUDA, batches up to 16 run a
 * bandwidth-bound GEMV kernel and larger ones a tensor-core GEMM; both read the plain row-major
 * layout below, so weights need no reordering after loading.
 *
 * @module
 */
import { check, native } from "../../ffi/library.ts";
import { type Device, deviceId, requireDevice } from "../device.ts";
import type { Quantized } from "../formats/quantize.ts";
import type { QuantSpec } from "../formats/spec.ts";
import { Tensor } from "../tensor.ts";

/** The FP4 weight formats the kernels read. */
export type Fp4WeightFormat = "mxfp4" | "nvfp4";

/** An FP4-quantised weight matrix W [n, k] (output features n, input features k). */
export interface Fp4Weights {
  /** E2M1 codes, u8 [n, k/2] (or flat), two per byte, element 2i in the low nibble. */
  readonly codes: Tensor;
  /** Scale bits, u8 [n, k/group] (or flat): E8M0 for MXFP4, E4M3 for NVFP4. */
  readonly scales: Tensor;
  /** NVFP4's FP32 tensor scale (default 1); MXFP4 has none and must leave it unset or 1. */
  readonly tensorScale?: number;
  /** Element and scale format. */
  readonly format: Fp4WeightFormat;
  /** Output features (rows of W). */
  readonly n: number;
  /** Input features (columns of W); a multiple of the format's group size. */
  readonly k: number;
}

/**
 * Elements per scale: 32 for MXFP4, 16 for NVFP4.
 *
 * @example
 * ```ts
 * import { fp4GroupSize } from "./fp4_linear.ts";
 * console.assert(fp4GroupSize("nvfp4") === 16);
 * ```
 */
export function fp4GroupSize(format: Fp4WeightFormat): number {
  if (format === "mxfp4") return 32;
  if (format === "nvfp4") return 16;
  throw new Error(`unknown FP4 weight format "${format}"; expected "mxfp4" or "nvfp4"`);
}

/**
 * The kernel format that runs tensors quantized with `spec` exactly, or null: E2M1 with E8M0
 * scales per 32 (MXFP4, no tensor scale) or E4M3 scales per 16 with the amax tensor scale
 * (NVFP4), rounded to nearest even (how the scales were chosen does not matter).
 *
 * @example
 * ```ts
 * import { fp4KernelFormat } from "./fp4_linear.ts";
 * import { resolveSpec } from "../formats/spec.ts";
 * console.assert(fp4KernelFormat(resolveSpec("nvfp4")) === "nvfp4");
 * console.assert(fp4KernelFormat(resolveSpec("int4:g32")) === null);
 * ```
 */
export function fp4KernelFormat(spec: QuantSpec): Fp4WeightFormat | null {
  if (spec.element !== "e2m1" || spec.rounding !== "rne") return null;
  if (
    spec.scaleFormat === "e8m0" && spec.groupSize === 32 && spec.tensorScale !== "amax" &&
    spec.scaleRule !== "mr-gptq"
  ) return "mxfp4";
  if (
    spec.scaleFormat === "e4m3" && spec.groupSize === 16 && spec.tensorScale !== "none" &&
    spec.scaleRule !== "mr-gptq"
  ) return "nvfp4";
  return null;
}

/**
 * A quantized weight [n, k] as the W4A16 kernels take it (host tensors sharing its arrays), or
 * null when its format is not one they run exactly ({@linkcode fp4KernelFormat}).
 *
 * @example
 * ```ts
 * import { fp4WeightsOf } from "./fp4_linear.ts";
 * import { quantize } from "../formats/quantize.ts";
 * const w = fp4WeightsOf(quantize(new Float32Array(64).fill(1), [2, 32], "mxfp4"));
 * console.assert(w !== null && w.format === "mxfp4" && w.codes.size === 32);
 * ```
 */
export function fp4WeightsOf(q: Quantized): Fp4Weights | null {
  const format = fp4KernelFormat(q.spec);
  if (!format) return null;
  const [n, k] = q.shape;
  return {
    codes: Tensor.from(q.codes, [q.codes.length]),
    scales: Tensor.from(q.scales, [q.scales.length]),
    tensorScale: q.tensorScale ?? undefined,
    format,
    n,
    k,
  };
}

function checkWeights(device: Device, w: Fp4Weights): void {
  const group = fp4GroupSize(w.format);
  for (const [name, v] of [["n", w.n], ["k", w.k]] as const) {
    if (!Number.isSafeInteger(v) || v < 1 || v >= 2 ** 31) {
      throw new Error(`fp4Linear: ${name} must be an integer in [1, 2^31), got ${v}`);
    }
  }
  if (w.k % group !== 0) {
    throw new Error(
      `fp4Linear: k = ${w.k} is not a multiple of the ${w.format} group size ${group}`,
    );
  }
  const parts = [["codes", w.codes, w.n * w.k / 2], [
    "scales",
    w.scales,
    w.n * w.k / group,
  ]] as const;
  for (const [name, t, size] of parts) {
    if (t.dtype !== "u8") throw new Error(`fp4Linear: ${name} must be u8, got ${t.dtype}`);
    if (t.size !== size) {
      throw new Error(
        `fp4Linear: ${name} has ${t.size} bytes, [n=${w.n}, k=${w.k}] ${w.format} needs ${size}`,
      );
    }
    if (t.device !== device) {
      throw new Error(`fp4Linear: ${name} is on ${t.device}, the operation runs on ${device}`);
    }
  }
  const ts = w.tensorScale ?? 1;
  if (w.format === "mxfp4" && ts !== 1) {
    throw new Error(`fp4Linear: MXFP4 has no tensor scale (got ${ts})`);
  }
  if (!Number.isFinite(ts) || ts <= 0) {
    throw new Error(`fp4Linear: the tensor scale must be finite and > 0, got ${ts}`);
  }
}

/**
 * y[b, n] = Σ_k x[b, k] · W[n, k] with W dequantised from FP4 codes and scales
 * (W = e2m1(code) · scale; NVFP4: scale = fround(e4m3(bits) · tensorScale)). `x` is bf16
 * [batch, k] on `device`; the result is a new bf16 [batch, n] tensor on `device`.
 *
 * @example
 * ```ts
 * import { fp4Linear } from "./fp4_linear.ts";
 * import { Tensor } from "../tensor.ts";
 * import { f32ToBf16, bf16ToF32 } from "../dtype.ts";
 * // W = [[1, 1, ..., 1]] (code 2 = 1.0, E8M0 scale 127 = 1), x = [1, 2, ..., 32]
 * const codes = Tensor.from(new Uint8Array(16).fill(0x22), [1, 16]);
 * const scales = Tensor.from(new Uint8Array([127]), [1, 1]);
 * const x = Tensor.from(new Uint16Array(32).map((_, i) => f32ToBf16(i + 1)), [1, 32], "bf16");
 * const y = fp4Linear("cpu", x, { codes, scales, format: "mxfp4", n: 1, k: 32 });
 * console.assert(bf16ToF32((y.toArray() as Uint16Array)[0]) === 528);
 * ```
 */
export function fp4Linear(device: Device, x: Tensor, w: Fp4Weights): Tensor {
  requireDevice(device);
  checkWeights(device, w);
  if (x.dtype !== "bf16") throw new Error(`fp4Linear: x must be bf16, got ${x.dtype}`);
  if (x.shape.length !== 2 || x.shape[1] !== w.k || x.shape[0] < 1) {
    throw new Error(
      `fp4Linear: x must be [batch >= 1, k=${w.k}], got [${x.shape.join(", ")}]`,
    );
  }
  if (x.device !== device) {
    throw new Error(`fp4Linear: x is on ${x.device}, the operation runs on ${device}`);
  }
  const batch = x.shape[0];
  const y = Tensor.empty([batch, w.n], "bf16", device);
  try {
    check(
      native().fp4_gemm(
        deviceId(device),
        w.format === "mxfp4" ? 0 : 1,
        x.pointer(),
        w.codes.pointer(),
        w.scales.pointer(),
        w.tensorScale ?? 1,
        y.pointer(),
        BigInt(batch),
        BigInt(w.n),
        BigInt(w.k),
      ),
      "fp4_gemm",
    );
  } catch (e) {
    y.dispose();
    throw e;
  }
  return y;
}

/**
 * The kernel sets `fp4Linear` can run on Hopper GPUs for batches above 16: "v4", the default and
 * the one bench/notes/fp4_gemm.md measured, or a candidate under measurement ("lean": fewer
 * instructions per pipeline stage and 4 / 3 / 2 warpgroups per block for batch tiles of 32 / 64 /
 * 128; "lean3": the same with 3 warpgroups at 128).
 */
export type Fp4GemmKernels = "v4" | "lean" | "lean3";

/**
 * Every {@linkcode Fp4GemmKernels} set, the default first.
 *
 * @example
 * ```ts
 * import { fp4GemmKernelSets } from "./fp4_linear.ts";
 * console.assert(fp4GemmKernelSets[0] === "v4");
 * ```
 */
export const fp4GemmKernelSets: readonly Fp4GemmKernels[] = ["v4", "lean", "lean3"];

/**
 * Chooses the kernel set of `fp4Linear` on Hopper GPUs for batches above 16, for the whole
 * process (the first choice comes from `$FP4LAB_GEMM_WGMMA`, default "v4"). Every set computes
 * the same function within the accumulation bound of tests/fp4_gemm_test.ts; they differ in
 * speed. Benchmarks and tests use it to compare candidates in one process; the CPU backend and
 * other GPUs ignore it.
 *
 * @example
 * ```ts
 * import { setFp4GemmKernels } from "./fp4_linear.ts";
 * setFp4GemmKernels("lean");
 * setFp4GemmKernels("v4");
 * ```
 */
export function setFp4GemmKernels(set: Fp4GemmKernels): void {
  const id = fp4GemmKernelSets.indexOf(set);
  if (id < 0) {
    throw new Error(
      `setFp4GemmKernels: unknown kernel set "${set}"; expected ${fp4GemmKernelSets.join(", ")}`,
    );
  }
  check(native().fp4_gemm_set_kernels(id), "fp4_gemm_set_kernels");
}
