/**
 * Device selection: `"cpu"` always works; `"cuda"` needs a library built with nvcc and a GPU,
 * and otherwise fails with an Error naming the reason.
 *
 * @module
 */
import { check, native, NativeError } from "../ffi/library.ts";

/** Where a tensor lives and where an operation runs. */
export type Device = "cpu" | "cuda";

/** All device names. */
export const DEVICES: readonly Device[] = ["cpu", "cuda"];

/**
 * Throws unless `name` is a device name; returns it typed.
 *
 * @example
 * ```ts
 * import { parseDevice } from "./device.ts";
 * console.assert(parseDevice("cpu") === "cpu");
 * ```
 */
export function parseDevice(name: string): Device {
  if (name === "cpu" || name === "cuda") return name;
  throw new Error(`unknown device "${name}"; expected "cpu" or "cuda"`);
}

/**
 * The device's id in the C ABI (`FP4_DEVICE_*`).
 *
 * @example
 * ```ts
 * import { deviceId } from "./device.ts";
 * console.assert(deviceId("cuda") === 1);
 * ```
 */
export function deviceId(device: Device): number {
  return device === "cpu" ? 0 : 1;
}

/** Whether CUDA can be used here, and why not when it cannot. */
export interface CudaStatus {
  /** True when a GPU is usable. */
  available: boolean;
  /** Number of CUDA devices (0 when unavailable). */
  deviceCount: number;
  /** Name and size of device 0, when available. */
  name?: string;
  /** Why CUDA is unavailable (built without nvcc, no driver, no device). */
  reason?: string;
}

let cached: CudaStatus | undefined;

/**
 * Probes CUDA once (library built with it, driver present, a device present).
 *
 * @example
 * ```ts
 * import { cudaStatus } from "./device.ts";
 * const s = cudaStatus();
 * console.log(s.available ? s.name : s.reason);
 * ```
 */
export function cudaStatus(): CudaStatus {
  if (cached) return cached;
  const lib = native();
  const count = new Int32Array(1);
  try {
    check(lib.fp4_cuda_device_count(count), "fp4_cuda_device_count");
    const buf = new Uint8Array(256);
    check(lib.fp4_cuda_device_name(0, buf, buf.length), "fp4_cuda_device_name");
    const name = new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
    cached = { available: true, deviceCount: count[0], name };
  } catch (e) {
    if (!(e instanceof NativeError)) throw e;
    cached = { available: false, deviceCount: 0, reason: e.message };
  }
  return cached;
}

/**
 * Returns `device` after checking that it is usable; `"cuda"` without a GPU throws an Error
 * that says why (library built without CUDA, no driver, no device).
 *
 * @example
 * ```ts
 * import { requireDevice } from "./device.ts";
 * console.assert(requireDevice("cpu") === "cpu");
 * ```
 */
export function requireDevice(device: Device | string): Device {
  const d = parseDevice(device);
  if (d === "cuda") {
    const s = cudaStatus();
    if (!s.available) throw new Error(`device "cuda" is not usable here: ${s.reason}`);
  }
  return d;
}

/**
 * `"cuda"` when a GPU is usable, else `"cpu"`; `FP4LAB_DEVICE` overrides.
 *
 * @example
 * ```ts
 * import { defaultDevice } from "./device.ts";
 * console.assert(["cpu", "cuda"].includes(defaultDevice()));
 * ```
 */
export function defaultDevice(): Device {
  const env = Deno.env.get("FP4LAB_DEVICE");
  if (env) return requireDevice(env);
  return cudaStatus().available ? "cuda" : "cpu";
}

/** Free and total memory of the CUDA device, in bytes. */
export interface CudaMemory {
  /** Bytes not allocated by anyone. */
  free: number;
  /** Bytes the device has. */
  total: number;
}

/**
 * The CUDA device's free and total memory (cudaMemGetInfo); throws without a usable GPU.
 *
 * @example
 * ```ts
 * import { cudaMemory, cudaStatus } from "./device.ts";
 * if (cudaStatus().available) console.assert(cudaMemory().free <= cudaMemory().total);
 * ```
 */
export function cudaMemory(): CudaMemory {
  requireDevice("cuda");
  const f = new BigUint64Array(1), t = new BigUint64Array(1);
  check(native().fp4_cuda_memory(f, t), "fp4_cuda_memory");
  return { free: Number(f[0]), total: Number(t[0]) };
}
