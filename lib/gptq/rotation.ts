/**
 * Micro-rotations for MR-GPTQ in float64: R = blockdiag(H_b / sqrt(b)) (normalized Sylvester
 * Hadamard blocks of size b along the input dimension, docs/FORMATS.md §8 without random signs).
 * R is symmetric and orthonormal, so W' = W R and H' = R^T H R = R H R, and the layer's output is
 * unchanged when activations are rotated the same way online (x' = x R).
 *
 * @module
 */

function fwht(v: Float64Array, off: number, b: number): void {
  for (let h = 1; h < b; h *= 2) {
    for (let i = 0; i < b; i += 2 * h) {
      for (let j = i; j < i + h; j++) {
        const u = v[off + j];
        const w = v[off + j + h];
        v[off + j] = u + w;
        v[off + j + h] = u - w;
      }
    }
  }
  const c = 1 / Math.sqrt(b);
  for (let j = 0; j < b; j++) v[off + j] *= c;
}

function checkBlock(cols: number, b: number): void {
  if (!Number.isSafeInteger(b) || b < 2 || (b & (b - 1)) !== 0 || cols % b !== 0) {
    throw new Error(
      `in-features ${cols} are not divisible by the rotation size ${b} (a power of two >= 2)`,
    );
  }
}

/**
 * W R for row-major W (rows x cols): every row's blocks of `b` transformed.
 *
 * @example
 * ```ts
 * import { rotateRows } from "./rotation.ts";
 * const r = rotateRows(new Float64Array([1, 1]), 1, 2, 2);
 * console.assert(Math.abs(r[0] - Math.SQRT2) < 1e-15 && r[1] === 0);
 * ```
 */
export function rotateRows(
  w: ArrayLike<number>,
  rows: number,
  cols: number,
  b: number,
): Float64Array {
  checkBlock(cols, b);
  const out = Float64Array.from(w);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c += b) fwht(out, r * cols + c, b);
  return out;
}

/**
 * R^T H R for a symmetric H (cols x cols).
 *
 * @example
 * ```ts
 * import { rotateHessian } from "./rotation.ts";
 * const h = rotateHessian(new Float64Array([2, 0, 0, 2]), 2, 2);
 * console.assert(Math.abs(h[0] - 2) < 1e-15 && Math.abs(h[1]) < 1e-15);
 * ```
 */
export function rotateHessian(h: ArrayLike<number>, cols: number, b: number): Float64Array {
  const hr = rotateRows(h, cols, cols, b); // H R
  const t = new Float64Array(cols * cols);
  for (let i = 0; i < cols; i++) for (let j = 0; j < cols; j++) t[j * cols + i] = hr[i * cols + j];
  return rotateRows(t, cols, cols, b); // (R^T H R)^T = R^T H R, H symmetric
}
