/**
 * Block Walsh–Hadamard rotation along the last axis, in float32, with optional random signs
 * from Philox: the rotation MR-GPTQ applies to weights and activations before FP4 quantization.
 * Specification: docs/FORMATS.md §8 (butterfly order and roundings are normative).
 *
 * @module
 */
import { philoxWord0, seedKey } from "./philox.ts";

const fround = Math.fround;

/** Options of {@linkcode hadamard}. */
export interface HadamardOptions {
  /** Block size: a power of two in 2..4096 dividing the number of columns. */
  block: number;
  /** When given, columns are multiplied by random signs (Philox keyed by the seed) first. */
  seed?: number | bigint;
}

/**
 * The float32 normalization constant of a block: the float32 nearest to 1 / sqrt(block).
 *
 * @example
 * ```ts
 * import { hadamardScale } from "./hadamard.ts";
 * console.assert(hadamardScale(16) === 0.25 && hadamardScale(2) === Math.fround(Math.SQRT1_2));
 * ```
 */
export function hadamardScale(block: number): number {
  const k = Math.round(Math.log2(block));
  return k % 2 === 0 ? 2 ** (-k / 2) : fround(Math.SQRT1_2) * 2 ** (-(k - 1) / 2);
}

/**
 * The random sign (+1 or -1) of column `col` for `seed`: -1 iff word 0 of
 * Philox4x32-10(counter (col, 0, 0, 0), key(seed)) >= 2^31.
 *
 * @example
 * ```ts
 * import { hadamardSign } from "./hadamard.ts";
 * console.assert(Math.abs(hadamardSign(3, 42)) === 1);
 * ```
 */
export function hadamardSign(col: number, seed: number | bigint): number {
  const [k0, k1] = seedKey(seed);
  return philoxWord0(col >>> 0, Math.floor(col / 4294967296), k0, k1) >= 0x80000000 ? -1 : 1;
}

function check(
  x: Float32Array | Float64Array,
  shape: readonly number[],
  opts: HadamardOptions,
): [number, number, number] {
  if (shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`hadamard: shape must be [rows, cols], got [${shape.join(", ")}]`);
  }
  const [rows, cols] = shape;
  if (rows * cols !== x.length) {
    throw new Error(
      `hadamard: shape [${rows}, ${cols}] needs ${rows * cols} elements, got ${x.length}`,
    );
  }
  const b = opts.block;
  if (!(Number.isInteger(b) && b >= 2 && b <= 4096 && (b & (b - 1)) === 0)) {
    throw new Error(`hadamard: block must be a power of two in 2..4096, got ${b}`);
  }
  if (cols % b !== 0) throw new Error(`hadamard: block ${b} does not divide the ${cols} columns`);
  return [rows, cols, b];
}

function signs(cols: number, seed: number | bigint | undefined): Float32Array | null {
  if (seed === undefined) return null;
  const s = new Float32Array(cols);
  for (let c = 0; c < cols; c++) s[c] = hadamardSign(c, seed);
  return s;
}

/**
 * In-place normalized transform of every block of `y` (butterflies, then scaling); a
 * Float32Array rounds every step to float32 (the normative transform), a Float64Array computes
 * the same matrix in float64.
 */
function transform(y: Float32Array | Float64Array, b: number): void {
  const c = hadamardScale(b);
  for (let base = 0; base < y.length; base += b) {
    for (let h = 1; h < b; h <<= 1) {
      for (let j = base; j < base + b; j += 2 * h) {
        for (let i = j; i < j + h; i++) {
          const u = y[i];
          const w = y[i + h];
          y[i] = u + w; // Float32Array stores round to float32
          y[i + h] = u - w;
        }
      }
    }
    for (let i = base; i < base + b; i++) y[i] = y[i] * c;
  }
}

// Multiplies column c of every row by the seeded sign of c (no-op without a seed).
function applySigns(y: Float32Array | Float64Array, cols: number, seed?: number | bigint): void {
  const s = signs(cols, seed);
  if (s) { for (let i = 0; i < y.length; i++) y[i] *= s[i % cols]; }
}

// Signs, then the transform: the one body of the float32 and float64 forward rotations.
function rotate<T extends Float32Array | Float64Array>(
  x: T,
  shape: readonly number[],
  opts: HadamardOptions,
): T {
  const [, cols, b] = check(x, shape, opts);
  const y = x.slice() as T;
  applySigns(y, cols, opts.seed);
  transform(y, b);
  return y;
}

/**
 * Rotates each row of a row-major [rows, cols] float32 tensor block by block:
 * y = (H_b / sqrt(b)) · D · x per block, D the optional random signs.
 *
 * @example
 * ```ts
 * import { hadamard } from "./hadamard.ts";
 * const y = hadamard(new Float32Array([1, 1, 1, 1]), [1, 4], { block: 4 });
 * console.assert(y.join() === "2,0,0,0");
 * ```
 */
export function hadamard(
  x: Float32Array,
  shape: readonly number[],
  opts: HadamardOptions,
): Float32Array {
  return rotate(x, shape, opts);
}

/**
 * Inverse of {@linkcode hadamard} with the same options: the transform again (the normalized
 * matrix is its own inverse), then the signs.
 *
 * @example
 * ```ts
 * import { hadamard, inverseHadamard } from "./hadamard.ts";
 * const x = new Float32Array([1, 2, 3, 4]);
 * const y = inverseHadamard(hadamard(x, [1, 4], { block: 4, seed: 7 }), [1, 4], { block: 4, seed: 7 });
 * console.assert(y.join() === "1,2,3,4");
 * ```
 */
export function inverseHadamard(
  y: Float32Array,
  shape: readonly number[],
  opts: HadamardOptions,
): Float32Array {
  const [, cols, b] = check(y, shape, opts);
  const x = y.slice();
  transform(x, b);
  applySigns(x, cols, opts.seed);
  return x;
}

/**
 * The same rotation as {@linkcode hadamard} (same signs, same float32 constant c_b, so the same
 * matrix R with y = x R for row vectors) computed in float64 instead of float32: for quantities
 * derived from rotated tensors, such as a Hessian H' = R^T H R
 * (`hadamardF64(transpose(hadamardF64(H)))`), with a relative error per element of about
 * log2(b) * 2^-53 of the row norm instead of 2^-24.
 *
 * @example
 * ```ts
 * import { hadamardF64 } from "./hadamard.ts";
 * const y = hadamardF64(new Float64Array([1, 1, 1, 1]), [1, 4], { block: 4 });
 * console.assert(y.join() === "2,0,0,0");
 * ```
 */
export function hadamardF64(
  x: Float64Array,
  shape: readonly number[],
  opts: HadamardOptions,
): Float64Array {
  return rotate(x, shape, opts);
}
