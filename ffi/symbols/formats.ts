/**
 * FFI symbols of `cuda/include/fp4lab/formats.h`: element conversion, group quantization,
 * dequantization, block Hadamard rotation, fused rotate+quantize and benchmark timing. The long
 * calls are nonblocking (they run on a worker thread; await them with `checkAsync`).
 *
 * @module
 */

/** Symbols of the formats ABI. */
export const formatsSymbols = {
  fp4_encode: {
    parameters: ["i32", "i32", "pointer", "u64", "pointer", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  fp4_decode: {
    parameters: ["i32", "i32", "pointer", "u64", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  fp4_quant_sizes: {
    parameters: ["buffer", "u64", "u64", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  fp4_quantize: {
    parameters: [
      "i32",
      "buffer",
      "i32",
      "pointer",
      "u64",
      "u64",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
    ],
    result: "i32",
    nonblocking: true,
  },
  fp4_dequantize: {
    parameters: [
      "i32",
      "buffer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "u64",
      "u64",
      "i32",
      "pointer",
    ],
    result: "i32",
    nonblocking: true,
  },
  fp4_hadamard: {
    parameters: [
      "i32",
      "i32",
      "pointer",
      "i32",
      "pointer",
      "u64",
      "u64",
      "i32",
      "i32",
      "i32",
      "u64",
    ],
    result: "i32",
    nonblocking: true,
  },
  fp4_rotate_quantize: {
    parameters: [
      "i32",
      "buffer",
      "i32",
      "pointer",
      "u64",
      "u64",
      "i32",
      "i32",
      "u64",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
    ],
    result: "i32",
    nonblocking: true,
  },
  fp4_bench_formats: {
    parameters: [
      "i32",
      "i32",
      "buffer",
      "i32",
      "pointer",
      "u64",
      "u64",
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "i32",
      "buffer",
    ],
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;
