/**
 * Dense float64 linear algebra for the GPTQ reference: Cholesky factorization, inverse of a
 * symmetric positive definite matrix and the upper Cholesky factor of that inverse. Matrices are
 * row-major `Float64Array`s of n x n. Written for clarity (small layers), not speed.
 *
 * @module
 */

/**
 * Lower Cholesky factor L of a symmetric positive definite matrix (A = L L^T), or `undefined`
 * when a pivot is not positive (A is not positive definite to working precision).
 *
 * @example
 * ```ts
 * import { cholesky } from "./linalg.ts";
 * const l = cholesky(new Float64Array([4, 2, 2, 3]), 2)!;
 * console.assert(l[0] === 2 && l[2] === 1 && l[3] === Math.SQRT2);
 * ```
 */
export function cholesky(a: Float64Array, n: number): Float64Array | undefined {
  const l = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let d = a[j * n + j];
    for (let k = 0; k < j; k++) d -= l[j * n + k] * l[j * n + k];
    if (!(d > 0) || !Number.isFinite(d)) return undefined;
    const djj = Math.sqrt(d);
    l[j * n + j] = djj;
    for (let i = j + 1; i < n; i++) {
      let s = a[i * n + j];
      for (let k = 0; k < j; k++) s -= l[i * n + k] * l[j * n + k];
      l[i * n + j] = s / djj;
    }
  }
  return l;
}

/**
 * Inverse of a lower triangular matrix with a nonzero diagonal (the result is lower triangular).
 *
 * @example
 * ```ts
 * import { invertLower } from "./linalg.ts";
 * const m = invertLower(new Float64Array([2, 0, 1, 4]), 2);
 * console.assert(m[0] === 0.5 && m[2] === -0.125 && m[3] === 0.25);
 * ```
 */
export function invertLower(l: Float64Array, n: number): Float64Array {
  const m = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    m[j * n + j] = 1 / l[j * n + j];
    for (let i = j + 1; i < n; i++) {
      let s = 0;
      for (let k = j; k < i; k++) s += l[i * n + k] * m[k * n + j];
      m[i * n + j] = -s / l[i * n + i];
    }
  }
  return m;
}

/**
 * Inverse of a symmetric positive definite matrix through its Cholesky factor
 * (A^-1 = L^-T L^-1), or `undefined` when A is not positive definite.
 *
 * @example
 * ```ts
 * import { inverseSpd } from "./linalg.ts";
 * const inv = inverseSpd(new Float64Array([2, 0, 0, 4]), 2)!;
 * console.assert(inv[0] === 0.5 && inv[3] === 0.25 && inv[1] === 0);
 * ```
 */
export function inverseSpd(a: Float64Array, n: number): Float64Array | undefined {
  const l = cholesky(a, n);
  if (!l) return undefined;
  const m = invertLower(l, n);
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      // (L^-T L^-1)_{ij} = sum_k M_{ki} M_{kj}, where M = L^-1 is zero above the diagonal.
      let s = 0;
      for (let k = i; k < n; k++) s += m[k * n + i] * m[k * n + j];
      inv[i * n + j] = s;
      inv[j * n + i] = s;
    }
  }
  return inv;
}

/**
 * Upper Cholesky factor U of the inverse of a symmetric positive definite matrix
 * (A^-1 = U^T U), the factor GPTQ's error feedback reads; `undefined` when A or its computed
 * inverse is not positive definite. Computed the plain way (invert, then factor) because this is
 * the specification that the native solvers, which use a cheaper route, are checked against.
 *
 * @example
 * ```ts
 * import { upperCholeskyOfInverse } from "./linalg.ts";
 * const u = upperCholeskyOfInverse(new Float64Array([4, 0, 0, 1]), 2)!;
 * console.assert(u[0] === 0.5 && u[1] === 0 && u[3] === 1);
 * ```
 */
export function upperCholeskyOfInverse(a: Float64Array, n: number): Float64Array | undefined {
  const inv = inverseSpd(a, n);
  if (!inv) return undefined;
  const l = cholesky(inv, n);
  if (!l) return undefined;
  const u = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) u[i * n + j] = l[j * n + i];
  return u;
}
