/**
 * FFI symbols of `cuda/include/fp4lab/gptq.h`: Hessian accumulation and the GPTQ solve. Both
 * are nonblocking (they run for seconds on large layers); callers keep their buffers alive until
 * the promise settles. Data pointers are Tensor pointers (host memory on CPU, device memory on
 * CUDA); `order` and `info` are host buffers on every device.
 *
 * @module
 */

/** Symbols of the GPTQ ABI. */
export const gptqSymbols = {
  fp4_gptq_proxy_loss: {
    parameters: ["buffer", "buffer", "buffer", "i64", "i64", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  fp4_gptq_hessian_add: {
    parameters: ["i32", "pointer", "pointer", "i64", "i64", "i64"],
    result: "i32",
    nonblocking: true,
  },
  fp4_gptq_cross_add: {
    parameters: ["i32", "pointer", "pointer", "pointer", "i64", "i64", "i64"],
    result: "i32",
    nonblocking: true,
  },
  fp4_gptq_solve: {
    parameters: [
      "i32", // device
      "pointer", // w (device memory on CUDA)
      "pointer", // h
      "i64", // rows
      "i64", // cols
      "pointer", // scales
      "i32", // group_size
      "i32", // element codec
      "buffer", // order (host; null = stored order)
      "f64", // damp
      "i32", // block_size
      "i32", // max_retries
      "pointer", // codes
      "buffer", // info (host)
    ],
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;
