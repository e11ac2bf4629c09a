/**
 * The float64 GPTQ reference: the executable specification the native solvers are checked
 * against. It works on one layer in whatever space it is given (callers rotate W and H first for
 * MR-GPTQ), for small layers only (plain loops, O(cols^3 + rows * cols^2)).
 *
 * Steps, for W (rows x cols, out x in) and H (cols x cols):
 * 1. Dead inputs: a column j with H_jj = 0 has its weights zeroed, its row and column of H
 *    zeroed and H_jj set to 1 (as GPTQ does; such inputs never reach the output).
 * 2. Order: `actOrder: "static"` processes columns by descending H_jj (ties by index);
 *    `"none"` in stored order.
 * 3. Damping: `damp * mean(diag H)` is added to the diagonal; when H (or its inverse) is not
 *    positive definite, the relative damping is multiplied by 10 and the factorization retried,
 *    at most `maxDampRetries` times, then an Error is thrown (never a silent identity).
 * 4. U = upper Cholesky factor of H^-1. For every column in processing order:
 *    q = value(encode(w / S)) * S with its group's effective scale S (lib/formats element
 *    rounding, here on the float64 quotient; S = 0 gives code 0 and q = 0); err = (w - q) / U_jj; the remaining columns
 *    get w -= err * U_j,: — eagerly inside a block of `blockSize` columns and lazily (one
 *    matrix product) for the columns after the block.
 * 5. Group scales (lib/formats `chooseGroupScales` on the weights rounded to float32):
 *    `"static"` chooses all scales before the loop from the (dead-column-zeroed) weights,
 *    groups in stored layout, so act-order needs no permutation at inference.
 *    `"dynamic"` chooses a group's scale from the error-compensated weights when the loop
 *    reaches its first column, with the whole matrix's tensor scale; groups are then runs of `groupSize` columns in processing order,
 *    so with act-order the result carries the permutation and every column's group (`groupIndex`,
 *    GPTQ's g_idx), and inference must gather columns by it.
 *
 * @module
 */
import type { GroupQuantizer } from "./quantizer.ts";
import { scaleBytes } from "../formats/scales.ts";
import { inverseSpd, upperCholeskyOfInverse } from "./linalg.ts";

/** How group scales are chosen: before the loop (`"static"`) or as the loop reaches a group. */
export type ScaleMode = "static" | "dynamic";
/** Column processing order: stored order, or by descending Hessian diagonal. */
export type ActOrder = "none" | "static";

/** Options of {@linkcode gptqReference}. */
export interface ReferenceOptions {
  /** The number format's grid and scale rule. */
  quantizer: GroupQuantizer;
  /** Group scale mode; default `"static"`. */
  scales?: ScaleMode;
  /** Column order; default `"none"`. */
  actOrder?: ActOrder;
  /** Relative damping (fraction of the mean Hessian diagonal); default 0.01. */
  damp?: number;
  /** Columns per lazy-update block; default 128. */
  blockSize?: number;
  /** Damping increases (x10 each) tried after the first failure; default 4. */
  maxDampRetries?: number;
  /** The solve: `"blocked"` (GPTQ with lazy updates, default) or `"naive"` (for tests). */
  solver?: "blocked" | "naive";
}

/** Result of {@linkcode gptqReference}; every per-column array is in stored column order. */
export interface ReferenceResult {
  /** Element codes, rows x cols, one per byte. */
  codes: Uint8Array;
  /** Dequantized weights (code value * effective scale), rows x cols. */
  dequantized: Float64Array;
  /** Raw scale bits, rows x groups (group g of row r at `r * groups + g`), lib/formats layout. */
  scaleBits: Uint8Array;
  /** Effective scale S (block scale x tensor scale) of every group, rows x groups. */
  scales: Float32Array;
  /** The float32 tensor scale, or null when the format has none. */
  tensorScale: number | null;
  /** Processing order (stored column index of the p-th processed column); with act-order. */
  permutation?: Int32Array;
  /** Group of every stored column; only when groups do not follow the stored layout. */
  groupIndex?: Int32Array;
  /** Absolute damping added to the diagonal (after any retries). */
  damp: number;
  /** trace((W - Q) H (W - Q)^T) with the caller's undamped H. */
  proxyLoss: number;
}

function requireFinite(a: Float64Array, what: string): void {
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) throw new Error(`${what} has a non-finite value (${a[i]}) at ${i}`);
  }
}

/** Checks shapes and values shared by every GPTQ entry point; returns the group count. */
export function validateProblem(
  w: ArrayLike<number>,
  h: ArrayLike<number>,
  rows: number,
  cols: number,
  groupSize: number,
): number {
  if (!Number.isSafeInteger(rows) || !Number.isSafeInteger(cols) || rows < 1 || cols < 1) {
    throw new Error(`invalid layer shape ${rows} x ${cols}`);
  }
  if (w.length !== rows * cols) {
    throw new Error(`W has ${w.length} elements, a ${rows} x ${cols} layer needs ${rows * cols}`);
  }
  if (h.length !== cols * cols) {
    throw new Error(`H has ${h.length} elements, ${cols} input features need ${cols * cols}`);
  }
  if (!Number.isSafeInteger(groupSize) || groupSize < 1 || cols % groupSize !== 0) {
    throw new Error(`in-features ${cols} are not divisible by the group size ${groupSize}`);
  }
  return cols / groupSize;
}

/** Stable order of columns by descending `diag`. */
export function descendingOrder(diag: ArrayLike<number>): Int32Array {
  const idx = Array.from({ length: diag.length }, (_, i) => i);
  idx.sort((a, b) => diag[b] - diag[a] || a - b);
  return Int32Array.from(idx);
}

/**
 * trace((W - Q) H (W - Q)^T) for row-major W, Q (rows x cols) and H (cols x cols).
 *
 * @example
 * ```ts
 * import { proxyLoss } from "./reference.ts";
 * const l = proxyLoss(new Float64Array([1, 0]), new Float64Array([0, 0]), new Float64Array([2, 0, 0, 1]), 1, 2);
 * console.assert(l === 2);
 * ```
 */
export function proxyLoss(
  w: ArrayLike<number>,
  q: ArrayLike<number>,
  h: ArrayLike<number>,
  rows: number,
  cols: number,
): number {
  let total = 0;
  const d = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) d[c] = w[r * cols + c] - q[r * cols + c];
    for (let i = 0; i < cols; i++) {
      if (d[i] === 0) continue;
      let s = 0;
      for (let j = 0; j < cols; j++) s += h[i * cols + j] * d[j];
      total += d[i] * s;
    }
  }
  return total;
}

/**
 * GPTQ on one layer in float64 (see the module doc for the exact steps). `w` is rows x cols
 * (out x in), `h` is cols x cols; neither is modified.
 *
 * @example
 * ```ts
 * import { gptqReference } from "./reference.ts";
 * import { groupQuantizer } from "./quantizer.ts";
 * const w = Float64Array.from({ length: 2 * 8 }, (_, i) => Math.sin(i));
 * const h = new Float64Array(64);
 * for (let i = 0; i < 8; i++) h[i * 8 + i] = 1 + i;
 * const r = gptqReference(w, h, 2, 8, { quantizer: groupQuantizer("int4:g4") });
 * console.assert(r.codes.length === 16 && r.proxyLoss >= 0);
 * ```
 */
export function gptqReference(
  w: ArrayLike<number>,
  h: ArrayLike<number>,
  rows: number,
  cols: number,
  options: ReferenceOptions,
): ReferenceResult {
  const quant = options.quantizer;
  const gs = quant.groupSize;
  const groups = validateProblem(w, h, rows, cols, gs);
  const mode = options.scales ?? "static";
  const actOrder = options.actOrder ?? "none";
  const relDamp = options.damp ?? 0.01;
  const blockSize = options.blockSize ?? 128;
  const maxRetries = options.maxDampRetries ?? 4;
  if (!(relDamp >= 0) || !Number.isFinite(relDamp)) throw new Error(`invalid damp ${relDamp}`);
  if (!Number.isSafeInteger(blockSize) || blockSize < 1) {
    throw new Error(`invalid block size ${blockSize}`);
  }
  const w0 = Float64Array.from(w);
  const h0 = Float64Array.from(h);
  requireFinite(w0, "W");
  requireFinite(h0, "H");

  // 1. Dead inputs.
  const hm = Float64Array.from(h0);
  const wz = Float64Array.from(w0);
  for (let j = 0; j < cols; j++) {
    if (hm[j * cols + j] !== 0) continue;
    for (let k = 0; k < cols; k++) hm[j * cols + k] = hm[k * cols + j] = 0;
    hm[j * cols + j] = 1;
    for (let r = 0; r < rows; r++) wz[r * cols + j] = 0;
  }

  // 2. Order.
  const diag = Float64Array.from({ length: cols }, (_, j) => hm[j * cols + j]);
  const perm = actOrder === "static"
    ? descendingOrder(diag)
    : Int32Array.from({ length: cols }, (_, j) => j);

  // Static scales come from the stored layout, before any permutation.
  const whole = quant.chooseScales(Float32Array.from(wz), rows, cols);
  const tensorScale = whole.tensorScale;
  const nb = scaleBytes(quant.spec.scaleFormat);
  const scaleBits = mode === "static" ? whole.scales.slice() : new Uint8Array(rows * groups * nb);
  const scales = mode === "static" ? whole.effective.slice() : new Float32Array(rows * groups);

  // Permuted problem.
  const hp = new Float64Array(cols * cols);
  for (let i = 0; i < cols; i++) {
    for (let j = 0; j < cols; j++) hp[i * cols + j] = hm[perm[i] * cols + perm[j]];
  }
  const wp = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let p = 0; p < cols; p++) wp[r * cols + p] = wz[r * cols + perm[p]];
  }

  // 3. Damping with bounded retries.
  let meanDiag = 0;
  for (let j = 0; j < cols; j++) meanDiag += diag[j];
  meanDiag /= cols;
  let rel = relDamp;
  let damp = 0;
  let factor: Float64Array | undefined;
  const naive = options.solver === "naive";
  for (let attempt = 0; attempt <= maxRetries; attempt++, rel *= 10) {
    damp = rel * meanDiag;
    const hd = Float64Array.from(hp);
    for (let j = 0; j < cols; j++) hd[j * cols + j] += damp;
    factor = naive ? inverseSpd(hd, cols) : upperCholeskyOfInverse(hd, cols);
    if (factor) break;
  }
  if (!factor) {
    throw new Error(
      `the Hessian is not positive definite even with damping ${rel / 10} x mean diagonal ` +
        `(${maxRetries} retries from ${relDamp}); check the calibration data for NaN or a ` +
        `degenerate Hessian`,
    );
  }

  // 4./5. The loop, in processing order.
  const codesP = new Uint8Array(rows * cols);
  const qP = new Float64Array(rows * cols);
  const groupOfPos = new Int32Array(cols);
  for (let p = 0; p < cols; p++) {
    groupOfPos[p] = mode === "static" ? Math.floor(perm[p] / gs) : Math.floor(p / gs);
  }

  const quantizeColumn = (p: number, col: Float64Array): void => {
    const g = groupOfPos[p];
    for (let r = 0; r < rows; r++) {
      const s = scales[r * groups + g];
      const bits = s === 0 ? 0 : quant.codec.encode(col[r] / s);
      codesP[r * cols + p] = bits;
      qP[r * cols + p] = s === 0 ? 0 : quant.codec.value(bits) * s;
    }
  };
  const chooseDynamic = (p: number, current: (c: number, r: number) => number): void => {
    if (mode !== "dynamic" || p % gs !== 0) return;
    const slice = new Float32Array(rows * gs);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < gs; c++) slice[r * gs + c] = current(p + c, r);
    }
    const c = quant.chooseScales(slice, rows, gs, tensorScale ?? undefined);
    for (let r = 0; r < rows; r++) {
      const i = r * groups + p / gs;
      scales[i] = c.effective[r];
      scaleBits.set(c.scales.subarray(r * nb, (r + 1) * nb), i * nb);
    }
  };

  const col = new Float64Array(rows);
  if (naive) {
    // OBQ form: after quantizing column p, remove it from the inverse Hessian by a rank-1
    // downdate; no Cholesky factor, no blocks, an independent route to the same result.
    const hinv = factor;
    for (let p = 0; p < cols; p++) {
      chooseDynamic(p, (c, r) => wp[r * cols + c]);
      for (let r = 0; r < rows; r++) col[r] = wp[r * cols + p];
      quantizeColumn(p, col);
      const d = hinv[p * cols + p];
      for (let r = 0; r < rows; r++) {
        const err = (col[r] - qP[r * cols + p]) / d;
        for (let c = p + 1; c < cols; c++) wp[r * cols + c] -= err * hinv[p * cols + c];
      }
      for (let i = p + 1; i < cols; i++) {
        const f = hinv[i * cols + p] / d;
        for (let j = p + 1; j < cols; j++) hinv[i * cols + j] -= f * hinv[p * cols + j];
      }
    }
  } else {
    const u = factor;
    const errs = new Float64Array(rows * blockSize);
    for (let c1 = 0; c1 < cols; c1 += blockSize) {
      const c2 = Math.min(c1 + blockSize, cols);
      for (let p = c1; p < c2; p++) {
        const k = p - c1;
        // Columns past the block have not had this block's lazy update yet: add it on the fly.
        chooseDynamic(p, (c, r) => {
          let v = wp[r * cols + c];
          if (c >= c2) {
            for (let t = 0; t < k; t++) v -= errs[r * blockSize + t] * u[(c1 + t) * cols + c];
          }
          return v;
        });
        for (let r = 0; r < rows; r++) col[r] = wp[r * cols + p];
        quantizeColumn(p, col);
        const d = u[p * cols + p];
        for (let r = 0; r < rows; r++) {
          const err = (col[r] - qP[r * cols + p]) / d;
          errs[r * blockSize + k] = err;
          for (let c = p + 1; c < c2; c++) wp[r * cols + c] -= err * u[p * cols + c];
        }
      }
      for (let r = 0; r < rows; r++) {
        for (let c = c2; c < cols; c++) {
          let s = 0;
          for (let t = 0; t < c2 - c1; t++) s += errs[r * blockSize + t] * u[(c1 + t) * cols + c];
          wp[r * cols + c] -= s;
        }
      }
    }
  }

  // Back to stored order.
  const codes = new Uint8Array(rows * cols);
  const dequantized = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let p = 0; p < cols; p++) {
      codes[r * cols + perm[p]] = codesP[r * cols + p];
      dequantized[r * cols + perm[p]] = qP[r * cols + p];
    }
  }
  const result: ReferenceResult = {
    codes,
    dequantized,
    scaleBits,
    scales,
    tensorScale,
    damp,
    proxyLoss: proxyLoss(w0, dequantized, h0, rows, cols),
  };
  if (actOrder === "static") result.permutation = perm;
  if (mode === "dynamic" && actOrder === "static") {
    const gi = new Int32Array(cols);
    for (let p = 0; p < cols; p++) gi[perm[p]] = groupOfPos[p];
    result.groupIndex = gi;
  }
  return result;
}
