/**
 * FFI symbols of `cuda/include/fp4lab/decode.h`: the building blocks of an incremental
 * (KV-cache) decode step on either backend. All run synchronously: a CUDA call only enqueues
 * work, and the CPU engine sends its long linear layers through the nonblocking `fp4_linear`.
 *
 * @module
 */

/** Symbols of the decode ABI: embedding, RMSNorm (alone or after the residual add), linear,
 * RoPE, KV store (alone or fused with RoPE), attention, SwiGLU, the FP4 q/k/v and gate/up
 * products with their RoPE/KV store and SwiGLU, residual add, argmax (alone or feeding the next
 * step). */
export const decodeSymbols = {
  fp4_cublas_status: { parameters: ["buffer", "i32"], result: "i32" },
  fp4_dec_embedding: {
    parameters: ["i32", "pointer", "pointer", "i32", "pointer", "i64", "i64", "i64"],
    result: "i32",
  },
  fp4_dec_rmsnorm: {
    parameters: ["i32", "pointer", "pointer", "i32", "pointer", "i32", "i64", "i64", "f32"],
    result: "i32",
  },
  fp4_dec_add_rmsnorm: {
    parameters: [
      "i32",
      "pointer",
      "pointer",
      "i32",
      "pointer",
      "i32",
      "pointer",
      "i32",
      "i64",
      "i64",
      "f32",
    ],
    result: "i32",
  },
  fp4_dec_linear: {
    parameters: ["i32", "pointer", "i32", "pointer", "i32", "pointer", "i32", "i64", "i64", "i64"],
    result: "i32",
  },
  fp4_dec_rope: {
    parameters: [
      "i32",
      "pointer",
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "i64",
      "i64",
      "i64",
      "i64",
    ],
    result: "i32",
  },
  fp4_dec_kv_store: {
    parameters: ["i32", "pointer", "i32", "pointer", "i32", "pointer", "i64", "i64", "i64"],
    result: "i32",
  },
  fp4_dec_rope_kv_store: {
    parameters: [
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "pointer",
      "pointer",
      "i32",
    ],
    result: "i32",
  },
  fp4_dec_attention: {
    parameters: [
      "i32",
      "pointer",
      "i32",
      "pointer",
      "pointer",
      "i32",
      "pointer",
      "i32",
      "pointer",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "f32",
    ],
    result: "i32",
  },
  fp4_dec_silu_mul: {
    parameters: ["i32", "pointer", "pointer", "pointer", "i32", "u64"],
    result: "i32",
  },
  fp4_dec_gate_up_silu: {
    parameters: [
      "i32",
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "buffer",
      "pointer",
      "i64",
      "i64",
    ],
    result: "i32",
  },
  fp4_dec_qkv_rope_kv_store: {
    parameters: [
      "i32",
      "i32",
      "pointer",
      "pointer",
      "pointer",
      "buffer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "pointer",
      "pointer",
      "i32",
    ],
    result: "i32",
  },
  fp4_dec_add: { parameters: ["i32", "pointer", "pointer", "i32", "u64"], result: "i32" },
  fp4_dec_argmax: { parameters: ["i32", "pointer", "i64", "i64", "pointer"], result: "i32" },
  fp4_dec_argmax_feed: {
    parameters: ["i32", "pointer", "i64", "pointer", "pointer", "pointer", "i64"],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;
