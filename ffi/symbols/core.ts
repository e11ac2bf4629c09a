/**
 * FFI symbols of `cuda/include/fp4lab/core.h`. Kept by hand (deno_bindgen is out of reach);
 * `tests/ffi_header_test.ts` checks every entry against the C header.
 *
 * @module
 */

/** Symbols of the core ABI: version, errors, devices, memory. */
export const coreSymbols = {
  fp4_abi_version: { parameters: [], result: "i32" },
  fp4_last_error: { parameters: ["buffer", "i32"], result: "i32" },
  fp4_has_cuda_build: { parameters: [], result: "i32" },
  fp4_cuda_device_count: { parameters: ["buffer"], result: "i32" },
  fp4_cuda_device_name: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  fp4_cuda_memory: { parameters: ["buffer", "buffer"], result: "i32" },
  fp4_alloc: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  fp4_free: { parameters: ["i32", "pointer"], result: "i32" },
  fp4_memcpy: { parameters: ["i32", "pointer", "pointer", "u64", "i32"], result: "i32" },
  fp4_synchronize: { parameters: ["i32"], result: "i32" },
  fp4_cast: { parameters: ["i32", "pointer", "i32", "pointer", "i32", "u64"], result: "i32" },
  fp4_noop: { parameters: [], result: "i32" },
  fp4_sum_f32: { parameters: ["i32", "pointer", "u64", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;
