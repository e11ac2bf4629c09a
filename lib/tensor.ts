/**
 * A small tensor type: dtype, shape, device, and either a host TypedArray (cpu) or a native
 * device allocation (cuda). Device memory is released explicitly with `dispose()` or `using`;
 * a FinalizationRegistry frees forgotten allocations as a safety net only.
 *
 * @module
 */
import { check, native } from "../ffi/library.ts";
import { type Device, deviceId, requireDevice } from "./device.ts";
import { type DType, dtypeOfArray, type HostArray, hostArray, itemSize } from "./dtype.ts";

const registry = new FinalizationRegistry<{ device: number; ptr: Deno.PointerValue }>(
  ({ device, ptr }) => {
    native().fp4_free(device, ptr);
  },
);

function checkShape(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new Error(`invalid shape [${shape.join(", ")}]: dimensions must be integers >= 0`);
    }
    n *= d;
  }
  return n;
}

/**
 * An n-dimensional array on the CPU (backed by a TypedArray) or on a CUDA device.
 *
 * @example
 * ```ts
 * import { Tensor } from "./tensor.ts";
 * using t = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
 * console.assert(t.size === 6 && t.shape[1] === 3);
 * ```
 */
export class Tensor {
  /** Element type. */
  readonly dtype: DType;
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Where the data lives. */
  readonly device: Device;
  #host: HostArray | undefined;
  #ptr: Deno.PointerValue | undefined;
  #disposed = false;

  private constructor(dtype: DType, shape: readonly number[], device: Device) {
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.device = device;
  }

  /**
   * Wraps a host array (not copied) as a CPU tensor; f16 data must name its dtype, since a
   * Uint16Array is taken as bf16 otherwise.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * const t = Tensor.from(new Uint16Array(4), [2, 2], "f16");
   * console.assert(t.dtype === "f16");
   * ```
   */
  static from(data: HostArray, shape: readonly number[], dtype?: DType): Tensor {
    const dt = dtype ?? dtypeOfArray(data);
    const n = checkShape(shape);
    if (data.length !== n) {
      throw new Error(
        `shape [${shape.join(", ")}] needs ${n} elements, the array has ${data.length}`,
      );
    }
    if (dtypeOfArray(data) !== (dt === "f16" ? "bf16" : dt)) {
      throw new Error(`a ${(data as object).constructor.name} cannot hold dtype ${dt}`);
    }
    const t = new Tensor(dt, shape, "cpu");
    t.#host = data;
    return t;
  }

  /**
   * A zero-filled tensor on `device` (device memory is cleared with a host->device copy).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * using t = Tensor.zeros([3], "i32");
   * console.assert(t.toArray()[2] === 0);
   * ```
   */
  static zeros(shape: readonly number[], dtype: DType = "f32", device: Device = "cpu"): Tensor {
    const host = Tensor.from(hostArray(dtype, checkShape(shape)), shape, dtype);
    return device === "cpu" ? host : host.to(device);
  }

  /**
   * An uninitialised tensor on `device` for a native op to fill. On CUDA the memory is
   * poisoned with 0xFF bytes (NaN for floats) so that unwritten outputs show in tests.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * using t = Tensor.empty([2], "f32");
   * console.assert(Number.isNaN(t.toArray()[0] as number));
   * ```
   */
  static empty(shape: readonly number[], dtype: DType = "f32", device: Device = "cpu"): Tensor {
    const n = checkShape(shape);
    const host = hostArray(dtype, n);
    new Uint8Array(host.buffer).fill(0xff);
    const t = Tensor.from(host, shape, dtype);
    return device === "cpu" ? t : t.to(device);
  }

  /** Number of elements. */
  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** Bytes of storage. */
  get byteLength(): number {
    return this.size * itemSize(this.dtype);
  }

  /** True once `dispose()` has run. */
  get disposed(): boolean {
    return this.#disposed;
  }

  #live(): void {
    if (this.#disposed) throw new Error("tensor used after dispose()");
  }

  /**
   * The host array of a CPU tensor (shared, not copied); throws for device tensors.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * const t = Tensor.from(new Int32Array([7]), [1]);
   * console.assert(t.data()[0] === 7);
   * ```
   */
  data(): HostArray {
    this.#live();
    if (!this.#host) throw new Error(`tensor is on ${this.device}; call toHost() first`);
    return this.#host;
  }

  /**
   * The native pointer to the data, for FFI calls (host memory for cpu, device memory for
   * cuda). The tensor must stay referenced while the native call runs.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * const t = Tensor.from(new Float32Array(2), [2]);
   * console.assert(t.pointer() !== null);
   * ```
   */
  pointer(): Deno.PointerValue {
    this.#live();
    if (this.#host) return Deno.UnsafePointer.of(this.#host as BufferSource);
    return this.#ptr!;
  }

  /**
   * A copy on `device` (`this` itself when already there).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * const t = Tensor.from(new Float32Array([1]), [1]);
   * console.assert(t.to("cpu") === t);
   * ```
   */
  to(device: Device): Tensor {
    this.#live();
    requireDevice(device);
    if (device === this.device) return this;
    const lib = native();
    if (device === "cuda") {
      const out = new BigUint64Array(1);
      check(lib.fp4_alloc(1, BigInt(this.byteLength), out), "fp4_alloc");
      const ptr = Deno.UnsafePointer.create(out[0]);
      const t = new Tensor(this.dtype, this.shape, "cuda");
      t.#ptr = ptr;
      registry.register(t, { device: 1, ptr }, t);
      if (this.byteLength > 0) {
        check(lib.fp4_memcpy(1, ptr, this.pointer(), BigInt(this.byteLength), 0), "fp4_memcpy");
      }
      return t;
    }
    const host = hostArray(this.dtype, this.size);
    if (this.byteLength > 0) {
      check(
        lib.fp4_memcpy(
          1,
          Deno.UnsafePointer.of(host as BufferSource),
          this.#ptr!,
          BigInt(this.byteLength),
          1,
        ),
        "fp4_memcpy",
      );
    }
    return Tensor.from(host, this.shape, this.dtype);
  }

  /**
   * A copy converted to `dtype` on the same device (f32 and bf16 only: f32 -> bf16 rounds to
   * nearest even, bf16 -> f32 is exact), or `this` when it already has that dtype.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * const t = Tensor.from(new Float32Array([1.00390625]), [1]).cast("bf16");
   * console.assert(t.dtype === "bf16" && t.cast("f32").toArray()[0] === 1);
   * ```
   */
  cast(dtype: "f32" | "bf16"): Tensor {
    this.#live();
    if (dtype === this.dtype) return this;
    if (this.dtype !== "f32" && this.dtype !== "bf16") {
      throw new Error(`cast: ${this.dtype} tensors cannot be cast (f32 and bf16 only)`);
    }
    const out = Tensor.empty(this.shape, dtype, this.device);
    const code = (d: DType) => d === "f32" ? 0 : 2;
    check(
      native().fp4_cast(
        deviceId(this.device),
        this.pointer(),
        code(this.dtype),
        out.pointer(),
        code(dtype),
        BigInt(this.size),
      ),
      "fp4_cast",
    );
    return out;
  }

  /**
   * A CPU copy (or `this` when already on the CPU).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * const t = Tensor.from(new Float32Array([1]), [1]);
   * console.assert(t.toHost() === t);
   * ```
   */
  toHost(): Tensor {
    return this.to("cpu");
  }

  /**
   * The elements as a host array (copied from the device if needed).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * console.assert(Tensor.from(new Float32Array([3]), [1]).toArray()[0] === 3);
   * ```
   */
  toArray(): HostArray {
    return this.toHost().data();
  }

  /**
   * A view with another shape of the same number of elements (shares the storage).
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * const t = Tensor.from(new Float32Array(6), [2, 3]).reshape([3, 2]);
   * console.assert(t.shape[0] === 3);
   * ```
   */
  reshape(shape: readonly number[]): Tensor {
    this.#live();
    if (checkShape(shape) !== this.size) {
      throw new Error(`cannot reshape [${this.shape.join(", ")}] to [${shape.join(", ")}]`);
    }
    if (this.#host) return Tensor.from(this.#host, shape, this.dtype);
    throw new Error("reshape of a device tensor would alias its allocation; copy to host first");
  }

  /**
   * Frees device memory now (host arrays are left to the garbage collector). Idempotent.
   *
   * @example
   * ```ts
   * import { Tensor } from "./tensor.ts";
   * const t = Tensor.from(new Float32Array(1), [1]);
   * t.dispose();
   * console.assert(t.disposed);
   * ```
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#ptr) {
      registry.unregister(this);
      check(native().fp4_free(deviceId(this.device), this.#ptr), "fp4_free");
      this.#ptr = undefined;
    }
    this.#host = undefined;
  }

  /** Same as `dispose()`, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
