/**
 * The `Hessian` accumulator of a linear layer's inputs: H = (2 / n) * sum over calibration rows
 * of x x^T, streamed batch by batch through the native library (f32 products, summed in f32 over
 * a batch; batches are merged as a running mean, as the MR-GPTQ reference does), so all of X is
 * never held at once. On CUDA, H stays in device memory between batches (a tiled SYRK kernel,
 * cuda/src/cuda/gptq_hessian.cu) and is copied back by `matrix()`.
 *
 * @module
 */
import { checkAsync, native } from "../../ffi/library.ts";
import { type Device, deviceId, requireDevice } from "../device.ts";
import { Tensor } from "../tensor.ts";

/**
 * Streams calibration inputs into H = (2 / n) X^T X.
 *
 * @example
 * ```ts
 * import { Hessian } from "./hessian.ts";
 * const h = new Hessian(2);
 * await h.add(new Float32Array([1, 2, 3, 4]), 2);
 * console.assert(h.samples === 2 && h.matrix()[0] === 10);
 * ```
 */
export class Hessian {
  /** Input features (H is cols x cols). */
  readonly cols: number;
  /** Where the accumulation runs and H lives. */
  readonly device: Device;
  #h: Tensor;
  #samples = 0;
  #pending: Promise<void> = Promise.resolve();

  /** An empty accumulator for `cols` input features. */
  constructor(cols: number, options: { device?: Device } = {}) {
    if (!Number.isSafeInteger(cols) || cols < 1) throw new Error(`invalid in-features ${cols}`);
    this.cols = cols;
    this.device = requireDevice(options.device ?? "cpu");
    this.#h = Tensor.zeros([cols, cols], "f32", this.device);
  }

  /** Calibration rows added so far. */
  get samples(): number {
    return this.#samples;
  }

  /**
   * Adds `rows` calibration rows (`x`: rows x cols, row-major f32, a host array or an f32
   * Tensor on any device; one already on this Hessian's device is used in place). Calls are
   * serialized; the returned promise settles when this batch is in H. NaN/Inf inputs reject.
   */
  add(x: Float32Array | Tensor, rows: number): Promise<void> {
    const size = x instanceof Tensor ? x.size : x.length;
    if (x instanceof Tensor && x.dtype !== "f32") {
      return Promise.reject(new Error(`calibration rows must be f32, got ${x.dtype}`));
    }
    if (!Number.isSafeInteger(rows) || rows < 1 || size !== rows * this.cols) {
      return Promise.reject(
        new Error(
          `a batch of ${rows} rows x ${this.cols} features needs ${rows * this.cols} ` +
            `values, got ${size}`,
        ),
      );
    }
    const seen = this.#samples;
    this.#samples += rows;
    const run = this.#pending.then(async () => {
      const xd = (x instanceof Tensor ? x : Tensor.from(x, [rows, this.cols])).to(this.device);
      try {
        await checkAsync(
          native().fp4_gptq_hessian_add(
            deviceId(this.device),
            this.#h.pointer(),
            xd.pointer(),
            BigInt(rows),
            BigInt(this.cols),
            BigInt(seen),
          ),
          "fp4_gptq_hessian_add",
          [xd, this.#h],
        );
      } finally {
        if (xd !== x && xd.device !== "cpu") xd.dispose();
      }
    });
    this.#pending = run.catch(() => {});
    return run;
  }

  /** A copy of H (cols x cols, row-major); throws when nothing was added. */
  matrix(): Float32Array {
    if (this.#samples === 0) throw new Error("the Hessian has no calibration rows yet");
    const a = this.#h.toArray() as Float32Array;
    return this.device === "cpu" ? a.slice() : a;
  }

  /** Frees H's device memory (a CPU Hessian is left to the garbage collector). */
  dispose(): void {
    this.#h.dispose();
  }

  /** Same as `dispose()`, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
