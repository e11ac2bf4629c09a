/**
 * FFI symbols of `cuda/include/fp4lab/gptq.h`: Hessian accumulation and the GPTQ solve. Both
 * are nonblocking (they run for seconds on large layers); callers keep their buffers alive until
 * the promise settles.
 *
 * @module
 */

/** Symbols of the GPTQ ABI. */
export const gptqSymbols = {
  fp4_gptq_hessian_add: {
    parameters: ["i32", "buffer", "buffer", "i64", "i64", "i64"],
    result: "i32",
    nonblocking: true,
  },
  fp4_gptq_solve: {
    parameters: [
      "i32", // device
      "buffer", // w
      "buffer", // h
      "i64", // rows
      "i64", // cols
      "buffer", // scales
      "i32", // group_size
      "buffer", // levels
      "buffer", // level_codes
      "i32", // n_levels
      "buffer", // order (null = stored order)
      "f64", // damp
      "i32", // block_size
      "i32", // max_retries
      "buffer", // codes
      "buffer", // info
    ],
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;
