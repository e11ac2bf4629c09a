/**
 * Synthetic linear layers for tests, benchmarks and notebooks: Gaussian-ish weights with heavy
 * tails and calibration inputs whose channels are correlated (a shared low-rank component) and
 * outlier-heavy (a few channels tens of times larger than the rest), the regime in which GPTQ and
 * rotations matter. Deterministic for a given seed.
 *
 * @module
 */
import { gaussian, seededRandom } from "../random.ts";

/** A synthetic layer: weights and calibration inputs, row-major float32. */
export interface SyntheticLayer {
  /** Output features. */
  rows: number;
  /** Input features. */
  cols: number;
  /** Calibration rows (tokens). */
  tokens: number;
  /** Weights, rows x cols. */
  w: Float32Array;
  /** Calibration inputs, tokens x cols. */
  x: Float32Array;
}

/**
 * Draws a synthetic layer. Inputs: x = z + B y with a shared rank-8 factor B y (correlation),
 * and 1 in 32 channels scaled by 20 (outliers); weights: Gaussian with 1 in 64 entries
 * multiplied by 5 (heavy tails).
 *
 * @example
 * ```ts
 * import { syntheticLayer } from "./synthetic.ts";
 * const l = syntheticLayer(4, 64, 16, 1);
 * console.assert(l.w.length === 256 && l.x.length === 1024);
 * ```
 */
export function syntheticLayer(
  rows: number,
  cols: number,
  tokens: number,
  seed: number,
): SyntheticLayer {
  const rand = seededRandom(seed);
  const g = gaussian(rand);
  const rank = 8;
  const b = Float64Array.from({ length: rank * cols }, () => g());
  const gain = Float64Array.from({ length: cols }, () => (rand() < 1 / 32 ? 20 : 1));
  const x = new Float32Array(tokens * cols);
  const y = new Float64Array(rank);
  for (let t = 0; t < tokens; t++) {
    for (let k = 0; k < rank; k++) y[k] = g();
    for (let c = 0; c < cols; c++) {
      let v = g();
      for (let k = 0; k < rank; k++) v += y[k] * b[k * cols + c];
      x[t * cols + c] = v * gain[c];
    }
  }
  const w = Float32Array.from(
    { length: rows * cols },
    () => g() * (rand() < 1 / 64 ? 5 : 1) * 0.05,
  );
  return { rows, cols, tokens, w, x };
}

/**
 * H = (2 / n) X^T X in float64 for row-major X (n x cols): the spec for the streaming
 * accumulators.
 *
 * @example
 * ```ts
 * import { hessianOf } from "./synthetic.ts";
 * const h = hessianOf(new Float32Array([1, 2]), 1, 2);
 * console.assert(h[0] === 2 && h[1] === 4 && h[3] === 8);
 * ```
 */
export function hessianOf(x: ArrayLike<number>, n: number, cols: number): Float64Array {
  const h = new Float64Array(cols * cols);
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < cols; i++) {
      const xi = x[t * cols + i];
      if (xi === 0) continue;
      for (let j = 0; j < cols; j++) h[i * cols + j] += xi * x[t * cols + j];
    }
  }
  for (let i = 0; i < h.length; i++) h[i] *= 2 / n;
  return h;
}

/**
 * Squared output error ||X W^T - X Q^T||_F^2 for X (n x cols) and W, Q (rows x cols).
 *
 * @example
 * ```ts
 * import { outputError } from "./synthetic.ts";
 * const e = outputError(new Float32Array([1, 1]), 1, new Float32Array([1, 2]), new Float32Array([1, 1]), 1, 2);
 * console.assert(e === 1);
 * ```
 */
export function outputError(
  x: ArrayLike<number>,
  n: number,
  w: ArrayLike<number>,
  q: ArrayLike<number>,
  rows: number,
  cols: number,
): number {
  let total = 0;
  const d = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) d[c] = w[r * cols + c] - q[r * cols + c];
    for (let t = 0; t < n; t++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += x[t * cols + c] * d[c];
      total += s * s;
    }
  }
  return total;
}
