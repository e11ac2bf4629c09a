/**
 * FFI symbols of `cuda/include/fp4lab/model.h`: the transformer building blocks of a forward
 * pass. The ones that take long on a whole window run nonblocking, so progress bars and
 * notebooks stay responsive while they work.
 *
 * @module
 */

/** Symbols of the model ABI: linear, embedding, RMSNorm, RoPE, attention, SwiGLU, NLL. */
export const modelSymbols = {
  fp4_linear: {
    parameters: ["i32", "pointer", "pointer", "i32", "pointer", "i64", "i64", "i64"],
    result: "i32",
    nonblocking: true,
  },
  fp4_embedding: {
    parameters: ["i32", "pointer", "pointer", "i32", "pointer", "i64", "i64", "i64"],
    result: "i32",
  },
  fp4_rmsnorm: {
    parameters: ["i32", "pointer", "pointer", "i32", "pointer", "i64", "i64", "f32"],
    result: "i32",
  },
  fp4_rope: {
    parameters: ["i32", "pointer", "pointer", "pointer", "i64", "i64", "i64"],
    result: "i32",
  },
  fp4_attention: {
    parameters: [
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "i64",
      "i64",
      "i64",
      "i64",
      "f32",
    ],
    result: "i32",
    nonblocking: true,
  },
  fp4_silu_mul: { parameters: ["i32", "pointer", "pointer", "pointer", "u64"], result: "i32" },
  fp4_add_inplace: { parameters: ["i32", "pointer", "pointer", "u64"], result: "i32" },
  fp4_nll: {
    parameters: ["i32", "pointer", "pointer", "pointer", "i64", "i64"],
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;
