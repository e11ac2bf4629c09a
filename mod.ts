/**
 * fp4lab: 4-bit floating-point (MXFP4, NVFP4) quantization of large language models, from a
 * notebook or a script. This module is the public API; everything here is re-exported from
 * `lib/`.
 *
 * @example
 * ```ts
 * import { Tensor, cudaStatus } from "./mod.ts";
 * using t = Tensor.from(new Float32Array([1, 2]), [2]);
 * console.log(t.shape, cudaStatus().available);
 * ```
 *
 * @module
 */
export * from "./lib/dtype.ts";
export * from "./lib/device.ts";
export * from "./lib/tensor.ts";
export { LibraryLoadError, NativeError, Status, type StatusName } from "./ffi/library.ts";
export * from "./lib/paths.ts";
export * from "./lib/model/mod.ts";
export * from "./lib/formats/mod.ts";
export * from "./lib/formats/native.ts";
export * from "./lib/gptq/mod.ts";
export * from "./lib/kernels/fp4_linear.ts";
export * from "./lib/generate/mod.ts";
export * from "./lib/safetensors.ts";
export * from "./lib/pipeline/mod.ts";
export * from "./lib/random.ts";
