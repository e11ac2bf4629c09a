/**
 * The native GPTQ solve (`fp4_gptq_solve`): the same algorithm as lib/gptq/reference.ts with
 * static group scales, in f32 with an f64 Cholesky, run nonblocking on the native library.
 *
 * @module
 */
import { checkAsync, native } from "../../ffi/library.ts";
import { type Device, deviceId, requireDevice } from "../device.ts";
import type { ElementLevels } from "./quantizer.ts";

/** Inputs of {@linkcode gptqSolveNative} besides W and H. */
export interface NativeSolveOptions {
  /** Effective scale (block scale x tensor scale) of every group, rows x groups, stored layout. */
  scales: Float32Array;
  /** Elements per group along the input dimension. */
  groupSize: number;
  /** The element grid. */
  levels: ElementLevels;
  /** Processing order (stored column of the p-th processed column); default stored order. */
  order?: Int32Array;
  /** Relative damping; default 0.01. */
  damp?: number;
  /** Lazy-update block size; default 128. */
  blockSize?: number;
  /** Damping increases (x10) after a failed factorization; default 4. */
  maxDampRetries?: number;
  /** Where to run; default `"cpu"`. */
  device?: Device;
}

/** Output of {@linkcode gptqSolveNative}; arrays in stored column order. */
export interface NativeSolveResult {
  /** Element codes, rows x cols, one per byte. */
  codes: Uint8Array;
  /** Dequantized weights, rows x cols. */
  dequantized: Float32Array;
  /** Absolute damping used. */
  damp: number;
  /** trace((W - Q) H (W - Q)^T), accumulated in f64. */
  proxyLoss: number;
}

/**
 * Runs GPTQ on W (rows x cols) with Hessian H (cols x cols) natively; neither input is modified.
 *
 * @example
 * ```ts
 * import { gptqSolveNative } from "./native.ts";
 * import { uniformQuantizer } from "./quantizer.ts";
 * const h = new Float32Array([2, 0, 0, 1]);
 * const r = await gptqSolveNative(new Float32Array([0.3, -0.7]), h, 1, 2, {
 *   scales: new Float32Array([0.1]), groupSize: 2, levels: uniformQuantizer(4, 2).levels,
 * });
 * console.assert(Math.abs(r.dequantized[1] + 0.7) < 1e-6);
 * ```
 */
export async function gptqSolveNative(
  w: Float32Array,
  h: Float32Array,
  rows: number,
  cols: number,
  options: NativeSolveOptions,
): Promise<NativeSolveResult> {
  const device = requireDevice(options.device ?? "cpu");
  const gs = options.groupSize;
  if (w.length !== rows * cols) {
    throw new Error(`W has ${w.length} elements, expected ${rows * cols}`);
  }
  if (h.length !== cols * cols) {
    throw new Error(`H has ${h.length} elements, expected ${cols * cols}`);
  }
  if (cols % gs !== 0) {
    throw new Error(`in-features ${cols} are not divisible by the group size ${gs}`);
  }
  if (options.scales.length !== rows * (cols / gs)) {
    throw new Error(`expected ${rows * (cols / gs)} group scales, got ${options.scales.length}`);
  }
  if (options.order && options.order.length !== cols) {
    throw new Error(`the order has ${options.order.length} entries, expected ${cols}`);
  }
  const out = w.slice();
  const hc = h.slice();
  const codes = new Uint8Array(rows * cols).fill(0xff);
  const info = new Float64Array([NaN, NaN]);
  const levels = Float32Array.from(options.levels.values);
  const levelCodes = Uint8Array.from(options.levels.codes);
  const scales = options.scales.slice();
  const order = options.order ? Int32Array.from(options.order) : null;
  await checkAsync(
    native().fp4_gptq_solve(
      deviceId(device),
      out,
      hc,
      BigInt(rows),
      BigInt(cols),
      scales,
      gs,
      levels,
      levelCodes,
      levels.length,
      order,
      options.damp ?? 0.01,
      options.blockSize ?? 128,
      options.maxDampRetries ?? 4,
      codes,
      info,
    ),
    "fp4_gptq_solve",
  );
  return { codes, dequantized: out, damp: info[0], proxyLoss: info[1] };
}
