/**
 * FFI symbols of `cuda/include/fp4lab/linalg.h`: the dense f64 factorization behind the GPTQ
 * solve, and which path the CUDA backend takes for it. The factorization is nonblocking (seconds
 * on large matrices); its data pointers are Tensor pointers (host memory on CPU, device memory
 * on CUDA).
 *
 * @module
 */

/** Symbols of the linear-algebra ABI. */
export const linalgSymbols = {
  fp4_inverse_cholesky_upper: {
    parameters: ["i32", "pointer", "i64", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  fp4_cusolver_status: { parameters: ["buffer", "i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;
