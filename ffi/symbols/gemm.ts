/**
 * FFI symbols of `cuda/include/fp4lab/gemm.h`: W4A16 linear layers with FP4 weights, and the
 * CUDA timing entry points the GPU benchmark uses.
 *
 * @module
 */

/** Symbols of the gemm ABI: FP4-weight GEMV/GEMM, its timing, copy and cuBLAS baselines. */
export const gemmSymbols = {
  fp4_gemm: {
    parameters: [
      "i32",
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "f32",
      "pointer",
      "i64",
      "i64",
      "i64",
    ],
    result: "i32",
  },
  fp4_gemm_segments: {
    parameters: [
      "i32",
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "buffer",
      "buffer",
      "i32",
      "pointer",
      "i64",
      "i64",
      "i64",
    ],
    result: "i32",
  },
  fp4_gemm_set_kernels: { parameters: ["i32"], result: "i32" },
  fp4_gemm_bench: {
    parameters: [
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "f32",
      "pointer",
      "i64",
      "i64",
      "i64",
      "i32",
      "i32",
      "i32",
      "buffer",
    ],
    result: "i32",
  },
  fp4_copy_bench: {
    parameters: ["pointer", "pointer", "u64", "i32", "i32", "buffer"],
    result: "i32",
  },
  fp4_cublas_bench: {
    parameters: [
      "pointer",
      "pointer",
      "pointer",
      "i64",
      "i64",
      "i64",
      "i32",
      "i32",
      "i32",
      "buffer",
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;
