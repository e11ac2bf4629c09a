/**
 * The native GPTQ solve (`fp4_gptq_solve`): the algorithm of lib/gptq/reference.ts with static
 * group scales, in f32 with an f64 Cholesky, on the CPU or CUDA backend, run nonblocking. The
 * element rounding is the native twin of lib/formats (cuda/src/formats.hpp), so the codes are
 * lib/formats codes. The CUDA solve reproduces the CPU solve's float operations in the same
 * order (same U, unfused products), so both give the same codes up to the division and
 * rounding of the f32 inputs; tests/gptq_layer_test.ts reports the fraction that differ.
 *
 * @module
 */
import { checkAsync, native } from "../../ffi/library.ts";
import { type Device, deviceId, requireDevice } from "../device.ts";
import { Tensor } from "../tensor.ts";
import { CODECS } from "../formats/native.ts";
import type { ElementName } from "../formats/spec.ts";

/** Inputs of {@linkcode gptqSolveNative} besides W and H. */
export interface NativeSolveOptions {
  /** Effective scale S (block scale x tensor scale) of every group, rows x groups, stored layout. */
  scales: Float32Array;
  /** Elements per group along the input dimension. */
  groupSize: number;
  /** The element format (symmetric): codes are its storage bits. */
  element: ElementName;
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
  /** Element codes (storage bits), rows x cols, one per byte. */
  codes: Uint8Array;
  /** Dequantized weights, rows x cols. */
  dequantized: Float32Array;
  /** Absolute damping used. */
  damp: number;
  /** trace((W - Q) H (W - Q)^T): CPU in f64; CUDA as sum H .* (D^T D), D^T D in f32, sum in f64. */
  proxyLoss: number;
  /** Seconds spent in the f64 factorization (host for cpu; cuSOLVER on the GPU for cuda). */
  factorSeconds: number;
  /** Seconds in the column loop and lazy updates. */
  loopSeconds: number;
}

/**
 * Runs GPTQ on W (rows x cols) with Hessian H (cols x cols) natively; neither input is modified.
 *
 * @example
 * ```ts
 * import { gptqSolveNative } from "./native.ts";
 * const h = new Float32Array([2, 0, 0, 1]);
 * const r = await gptqSolveNative(new Float32Array([0.3, -0.7]), h, 1, 2, {
 *   scales: new Float32Array([0.125]), groupSize: 2, element: "int4",
 * });
 * console.assert(Math.abs(r.dequantized[1] + 0.75) < 1e-6 && r.codes[1] === 10);
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
  if (!Number.isSafeInteger(gs) || gs < 1 || cols % gs !== 0) {
    throw new Error(`in-features ${cols} are not divisible by the group size ${gs}`);
  }
  if (options.scales.length !== rows * (cols / gs)) {
    throw new Error(`expected ${rows * (cols / gs)} group scales, got ${options.scales.length}`);
  }
  if (options.order && options.order.length !== cols) {
    throw new Error(`the order has ${options.order.length} entries, expected ${cols}`);
  }
  const codec = CODECS.indexOf(options.element);
  if (codec < 0) throw new Error(`unknown element format "${options.element}"`);
  const order = options.order ? Int32Array.from(options.order) : null;
  const info = new Float64Array([NaN, NaN, NaN, NaN]);
  const tensors: Tensor[] = [];
  const on = (t: Tensor): Tensor => {
    const d = t.to(device);
    tensors.push(d);
    return d;
  };
  try {
    const wd = on(Tensor.from(w.slice(), [rows, cols]));
    const hd = on(Tensor.from(h, [cols, cols]));
    const sd = on(Tensor.from(options.scales, [options.scales.length]));
    const cd = on(Tensor.empty([rows * cols], "u8", "cpu"));
    await checkAsync(
      native().fp4_gptq_solve(
        deviceId(device),
        wd.pointer(),
        hd.pointer(),
        BigInt(rows),
        BigInt(cols),
        sd.pointer(),
        gs,
        codec,
        order,
        options.damp ?? 0.01,
        options.blockSize ?? 128,
        options.maxDampRetries ?? 4,
        cd.pointer(),
        info,
      ),
      "fp4_gptq_solve",
    );
    return {
      codes: Uint8Array.from(cd.toArray() as Uint8Array),
      dequantized: Float32Array.from(wd.toArray() as Float32Array),
      damp: info[0],
      proxyLoss: info[1],
      factorSeconds: info[2],
      loopSeconds: info[3],
    };
  } finally {
    if (device !== "cpu") { for (const t of tensors) t.dispose(); }
  }
}
