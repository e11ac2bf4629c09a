/**
 * The `Hessian` accumulator of a linear layer's inputs: H = (2 / n) * sum over calibration rows
 * of x x^T, streamed batch by batch through the native library (f32 products, summed in f32 over
 * a batch; batches are merged as a running mean, as the MR-GPTQ reference does), so all of X is
 * never held at once.
 *
 * @module
 */
import { checkAsync, native } from "../../ffi/library.ts";
import { type Device, deviceId, requireDevice } from "../device.ts";

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
  /** Where the accumulation runs (only `"cpu"` is implemented natively so far). */
  readonly device: Device;
  #h: Float32Array;
  #samples = 0;
  #pending: Promise<void> = Promise.resolve();

  /** An empty accumulator for `cols` input features. */
  constructor(cols: number, options: { device?: Device } = {}) {
    if (!Number.isSafeInteger(cols) || cols < 1) throw new Error(`invalid in-features ${cols}`);
    this.cols = cols;
    this.device = requireDevice(options.device ?? "cpu");
    this.#h = new Float32Array(cols * cols);
  }

  /** Calibration rows added so far. */
  get samples(): number {
    return this.#samples;
  }

  /**
   * Adds `rows` calibration rows (`x`: rows x cols, row-major f32). Calls are serialized; the
   * returned promise settles when this batch is in H. NaN/Inf inputs reject.
   */
  add(x: Float32Array, rows: number): Promise<void> {
    if (!Number.isSafeInteger(rows) || rows < 1 || x.length !== rows * this.cols) {
      return Promise.reject(
        new Error(
          `a batch of ${rows} rows x ${this.cols} features needs ${rows * this.cols} ` +
            `values, got ${x.length}`,
        ),
      );
    }
    const seen = this.#samples;
    this.#samples += rows;
    const run = this.#pending.then(() =>
      checkAsync(
        native().fp4_gptq_hessian_add(
          deviceId(this.device),
          this.#h,
          x,
          BigInt(rows),
          BigInt(this.cols),
          BigInt(seen),
        ),
        "fp4_gptq_hessian_add",
      )
    );
    this.#pending = run.catch(() => {});
    return run;
  }

  /** A copy of H (cols x cols, row-major); throws when nothing was added. */
  matrix(): Float32Array {
    if (this.#samples === 0) throw new Error("the Hessian has no calibration rows yet");
    return this.#h.slice();
  }
}
