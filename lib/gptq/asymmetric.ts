/**
 * Asymmetric calibration (GPTAQ, "GPTQv2", Li et al. 2025) in closed form. GPTQ minimises
 * ||X (W - Q)^T||^2 over the layer's inputs X. Under W4A4 the FP4 GEMM sees other inputs X~
 * (rotated, activation-quantized, after the quantized earlier blocks), so the error that counts
 * is ||X W^T - X~ Q^T||^2 with X the reference inputs (the same stream before activation
 * quantization, or the full-precision model's). With H~ = (2 / n) X~^T X~, the difference
 * D = (2 / n) (X - X~)^T X~ and a damping lambda (the one GPTQ adds to H~),
 *
 *     ||X W^T - X~ Q^T||^2 + lambda ||Q - W||^2  (times 2 / n)
 *       = const + tr((Q - W*) (H~ + lambda I) (Q - W*)^T),
 *     W* = W (C + lambda I) (H~ + lambda I)^-1 = W + W D (H~ + lambda I)^-1,   C = (2 / n) X^T X~,
 *
 * so ordinary GPTQ on the target W* with the Hessian H~ minimises it: the least-squares optimum
 * W* absorbs the correlated part of the input error, GPTQ rounds around it. The ridge term pulls
 * W* towards W (not towards 0) where X~ has little energy. Everything here is in the original
 * (unrotated) space; lib/gptq `quantizeLayer` rotates W* and H~ by the same R, and
 * (W R)(R^T x) = W x keeps the objective unchanged.
 *
 * @module
 */
import { checkAsync, native } from "../../ffi/library.ts";
import { type Device, deviceId, requireDevice } from "../device.ts";
import { matmulWeight } from "../model/forward.ts";
import { Tensor } from "../tensor.ts";
import { cholesky } from "./linalg.ts";

// a [m, k] @ b [n, k]^T through the native CPU matmul (f32 products, f32 accumulation).
function matmulNt(
  a: Float32Array,
  b: Float32Array,
  m: number,
  n: number,
  k: number,
): Promise<Float32Array> {
  return matmulWeight(a, m, { dtype: "f32", shape: [n, k], data: b });
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) t[c * rows + r] = x[r * cols + c];
  }
  return t;
}

// L^-1 for a lower triangular L by forward substitution on the rows of I (row i of the result
// combines rows k < i, whose nonzeros end at column k): contiguous inner loops, n^3 / 6 products.
function lowerInverse(l: Float64Array, n: number): Float64Array {
  const m = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const mi = m.subarray(i * n, i * n + i + 1);
    mi[i] = 1;
    for (let k = 0; k < i; k++) {
      const f = l[i * n + k];
      if (f === 0) continue;
      const mk = m.subarray(k * n, k * n + k + 1);
      for (let c = 0; c <= k; c++) mi[c] -= f * mk[c];
    }
    const d = l[i * n + i];
    for (let c = 0; c <= i; c++) mi[c] /= d;
  }
  return m;
}

/**
 * Streams pairs of calibration batches into the cross product (2 / n) A^T B (cols x cols, the
 * scale of lib/gptq `Hessian`). On the CPU: f32 products per batch through the native matmul,
 * summed over batches in f64. On CUDA: D stays in device memory as an f32 running mean, each
 * batch added by `fp4_gptq_cross_add` (the Hessian's tiled kernel over every tile), and the
 * batches may be device tensors.
 *
 * @example
 * ```ts
 * import { CrossCovariance } from "./asymmetric.ts";
 * const c = new CrossCovariance(2);
 * await c.add(new Float32Array([1, 0]), new Float32Array([3, 4]), 1);
 * console.assert(c.matrix().join() === "6,8,0,0");
 * ```
 */
export class CrossCovariance {
  /** Features of both inputs (the product is cols x cols). */
  readonly cols: number;
  /** Where the accumulation runs and D lives. */
  readonly device: Device;
  #sum: Float64Array | null = null;
  #d: Tensor | null = null;
  #samples = 0;
  #pending: Promise<void> = Promise.resolve();

  /** An empty accumulator for `cols` features, on `options.device` (default the CPU). */
  constructor(cols: number, options: { device?: Device } = {}) {
    if (!Number.isSafeInteger(cols) || cols < 1) throw new Error(`invalid in-features ${cols}`);
    this.cols = cols;
    this.device = requireDevice(options.device ?? "cpu");
    if (this.device === "cpu") this.#sum = new Float64Array(cols * cols);
    else this.#d = Tensor.zeros([cols, cols], "f32", this.device);
  }

  /** Calibration rows added so far. */
  get samples(): number {
    return this.#samples;
  }

  /**
   * Adds `rows` paired rows (`a`, `b`: rows x cols, row-major f32; on CUDA also f32 Tensors on
   * any device). Calls are serialized; the promise settles when the batch is in the sum.
   * Non-finite inputs reject.
   */
  add(a: Float32Array | Tensor, b: Float32Array | Tensor, rows: number): Promise<void> {
    const n = rows * this.cols;
    const size = (x: Float32Array | Tensor) => x instanceof Tensor ? x.size : x.length;
    if (!Number.isSafeInteger(rows) || rows < 1 || size(a) !== n || size(b) !== n) {
      return Promise.reject(
        new Error(
          `a batch of ${rows} rows x ${this.cols} features needs ${n} values per side, got ` +
            `${size(a)} and ${size(b)}`,
        ),
      );
    }
    for (const x of [a, b]) {
      if (x instanceof Tensor && x.dtype !== "f32") {
        return Promise.reject(new Error(`calibration rows must be f32, got ${x.dtype}`));
      }
    }
    if (this.#d) return this.#addNative(a, b, rows);
    if (a instanceof Tensor || b instanceof Tensor) {
      return Promise.reject(new Error("a CPU cross product takes host arrays"));
    }
    for (const x of [a, b]) {
      for (let i = 0; i < n; i++) {
        if (!Number.isFinite(x[i])) {
          return Promise.reject(new Error(`calibration rows have a non-finite value at ${i}`));
        }
      }
    }
    this.#samples += rows;
    const sum = this.#sum!;
    const run = this.#pending.then(async () => {
      const p = await matmulNt(
        transpose(a, rows, this.cols),
        transpose(b, rows, this.cols),
        this.cols,
        this.cols,
        rows,
      );
      for (let i = 0; i < p.length; i++) sum[i] += p[i];
    });
    this.#pending = run.catch(() => {});
    return run;
  }

  #addNative(a: Float32Array | Tensor, b: Float32Array | Tensor, rows: number): Promise<void> {
    const seen = this.#samples;
    this.#samples += rows;
    const d = this.#d!;
    const run = this.#pending.then(async () => {
      const on = (x: Float32Array | Tensor) =>
        (x instanceof Tensor ? x : Tensor.from(x, [rows, this.cols])).to(this.device);
      const ad = on(a), bd = on(b);
      try {
        await checkAsync(
          native().fp4_gptq_cross_add(
            deviceId(this.device),
            d.pointer(),
            ad.pointer(),
            bd.pointer(),
            BigInt(rows),
            BigInt(this.cols),
            BigInt(seen),
          ),
          "fp4_gptq_cross_add",
          [ad, bd, d],
        );
      } finally {
        if (ad !== a) ad.dispose();
        if (bd !== b) bd.dispose();
      }
    });
    this.#pending = run.catch(() => {});
    return run;
  }

  /** (2 / n) A^T B (cols x cols, row-major float64); throws when nothing was added. */
  matrix(): Float64Array {
    if (this.#samples === 0) throw new Error("the cross product has no calibration rows yet");
    if (this.#d) return Float64Array.from(this.#d.toArray() as Float32Array);
    const k = 2 / this.#samples;
    return this.#sum!.map((v) => v * k);
  }

  /** Frees D's device memory (nothing to free on the CPU). */
  dispose(): void {
    this.#d?.dispose();
  }

  /** Same as `dispose()`, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * The least-squares target of the asymmetric objective for every layer that shares one input
 * (q/k/v, gate/up): built from H~ and D once, applied to each layer's W. See the module doc
 * for the algebra; `damp` is GPTQ's relative damping (lambda = damp x mean diag H~), so that
 * GPTQ's damped H~ and the target's ridge are the same.
 *
 * @example
 * ```ts
 * import { AsymmetricTarget } from "./asymmetric.ts";
 * // D = 0 (the GEMM sees the reference inputs): the target is W itself.
 * const t = new AsymmetricTarget(new Float32Array([2, 0, 0, 2]), new Float64Array(4), 2);
 * console.assert((await t.apply(new Float32Array([1, 2]), 1)).join() === "1,2");
 * ```
 */
export class AsymmetricTarget {
  /** Input features. */
  readonly cols: number;
  /** The absolute ridge lambda. */
  readonly lambda: number;
  #h: Float64Array;
  #d: Float64Array;
  #gt: Float32Array | null = null;

  /** From H~ (cols x cols) and D = (2 / n) (X - X~)^T X~ (cols x cols), both row-major. */
  constructor(h: ArrayLike<number>, d: Float64Array, cols: number, damp = 0.01) {
    if (h.length !== cols * cols || d.length !== cols * cols) {
      throw new Error(`H~ (${h.length}) and D (${d.length}) must be ${cols} x ${cols}`);
    }
    if (!(damp > 0) || !Number.isFinite(damp)) throw new Error(`invalid damp ${damp}`);
    let mean = 0;
    for (let j = 0; j < cols; j++) mean += h[j * cols + j];
    mean /= cols;
    this.cols = cols;
    this.lambda = damp * (mean > 0 ? mean : 1);
    this.#h = Float64Array.from(h);
    this.#d = d;
  }

  // G^T = (H~ + lambda I)^-1 D^T = M^T (M D^T) with M = L^-1 (f64 Cholesky and triangular
  // inverse, the two products native in f32), so that W* = W + W G = W + matmulNt(W, G^T).
  async #correction(): Promise<Float32Array> {
    if (!this.#gt) {
      const n = this.cols;
      const a = this.#h.slice();
      for (let j = 0; j < n; j++) a[j * n + j] += this.lambda;
      const l = cholesky(a, n);
      if (!l) {
        throw new Error(`H~ + ${this.lambda} I is not positive definite (bad calibration data?)`);
      }
      const m = lowerInverse(l, n);
      const mt = new Float32Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) mt[j * n + i] = m[i * n + j];
      const md = await matmulNt(Float32Array.from(m), Float32Array.from(this.#d), n, n, n);
      this.#gt = await matmulNt(mt, transpose(md, n, n), n, n, n);
    }
    return this.#gt;
  }

  /** W* = W + W D (H~ + lambda I)^-1 for `w` (rows x cols, row-major). */
  async apply(w: Float32Array, rows: number): Promise<Float32Array> {
    if (w.length !== rows * this.cols) {
      throw new Error(`W has ${w.length} values, not ${rows} x ${this.cols}`);
    }
    const wg = await matmulNt(w, await this.#correction(), rows, this.cols, this.cols);
    for (let i = 0; i < wg.length; i++) wg[i] += w[i];
    return wg;
  }
}
