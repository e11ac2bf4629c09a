// Host-side declarations of the CUDA decode-step kernels (cuda/src/cuda/decode_*.cu) and the
// element helpers both backends share. Arguments are validated by the C entry points in
// cuda/src/cpu/decode.cpp before they reach the CUDA functions; those only enqueue work on the
// default stream.
#pragma once
#include <cmath>
#include <cstdint>

#include "fp4lab.h"
#include "formats.hpp"

namespace fp4::dec {

// One activation element as f32 (`dtype` is FP4_DTYPE_F32 or FP4_DTYPE_BF16).
FP4_HD float load(const void *p, int32_t dtype, int64_t i) {
  return dtype == FP4_DTYPE_BF16 ? fp4::fmt::bf16_to_f32(static_cast<const uint16_t *>(p)[i])
                                 : static_cast<const float *>(p)[i];
}

// Stores v as f32 or as bf16 (round to nearest even).
FP4_HD void store(void *p, int32_t dtype, int64_t i, float v) {
  if (dtype == FP4_DTYPE_BF16) static_cast<uint16_t *>(p)[i] = fp4::fmt::f32_to_bf16(v);
  else static_cast<float *>(p)[i] = v;
}

// silu(g) * u in f32: the one SwiGLU expression of the kernels and their CPU twin (expf both
// sides; no contraction, -fmad=false and -ffp-contract=off).
FP4_HD float silu_mul(float g, float u) { return (g / (1.0f + expf(-g))) * u; }

// The rotary embedding of the pair (a, b) = (x[i], x[i + head_dim / 2]) by angle (c, s).
FP4_HD void rope_pair(float a, float b, float c, float s, float &ra, float &rb) {
  ra = a * c - b * s;
  rb = b * c + a * s;
}

}  // namespace fp4::dec

namespace fp4::cuda {

fp4_status dec_embedding(const int32_t *ids, const void *table, int32_t table_dtype, float *y,
                         int64_t tokens, int64_t vocab, int64_t dim);
fp4_status dec_rmsnorm(const float *x, const void *w, int32_t w_dtype, void *y, int32_t y_dtype,
                       int64_t rows, int64_t dim, float eps);
fp4_status dec_add_rmsnorm(float *x, const void *r, int32_t r_dtype, const void *w,
                           int32_t w_dtype, void *y, int32_t y_dtype, int64_t rows, int64_t dim,
                           float eps);
fp4_status dec_linear(const void *x, int32_t x_dtype, const void *w, int32_t w_dtype, void *y,
                      int32_t y_dtype, int64_t rows, int64_t out_features, int64_t in_features);
fp4_status dec_rope(void *x, int32_t x_dtype, const float *cos, const float *sin,
                    const int32_t *pos, int64_t ctx, int64_t tokens, int64_t heads,
                    int64_t head_dim);
fp4_status dec_kv_store(const void *x, int32_t x_dtype, void *cache, int32_t cache_dtype,
                        const int32_t *pos, int64_t ctx, int64_t tokens, int64_t width);
fp4_status dec_rope_kv_store(void *q, void *k, const void *v, int32_t x_dtype, const float *cos,
                             const float *sin, const int32_t *pos, int64_t ctx, int64_t tokens,
                             int64_t heads, int64_t kv_heads, int64_t head_dim, void *k_cache,
                             void *v_cache, int32_t cache_dtype);
fp4_status dec_attention(const void *q, int32_t q_dtype, const void *k_cache,
                         const void *v_cache, int32_t cache_dtype, void *out, int32_t out_dtype,
                         const int32_t *pos, int64_t ctx, int64_t tokens, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, float scale);
fp4_status dec_silu_mul(const void *gate, const void *up, void *out, int32_t dtype, uint64_t n);
fp4_status dec_add(float *y, const void *x, int32_t x_dtype, uint64_t n);
fp4_status dec_argmax(const float *x, int64_t rows, int64_t n, int32_t *out);
// The fused batch-1 GEMV epilogues (fp4_gemv.cu): fp4_dec_gate_up_silu,
// fp4_dec_qkv_rope_kv_store and fp4_dec_gemv_add_rmsnorm of fp4lab/decode.h on the decode
// stream.
fp4_status gemm_gate_up_silu(int32_t format, const uint16_t *x, const uint8_t *codes,
                             const uint8_t *scales, const float *tensor_scales, uint16_t *y,
                             int64_t half, int64_t k);
fp4_status gemm_qkv_rope_kv_store(int32_t format, const uint16_t *x, const uint8_t *codes,
                                  const uint8_t *scales, const float *tensor_scales,
                                  uint16_t *qkv, const float *cos, const float *sin,
                                  const int32_t *pos, int64_t ctx, int64_t heads,
                                  int64_t kv_heads, int64_t head_dim, int64_t k, void *k_cache,
                                  void *v_cache, int32_t cache_dtype);
fp4_status gemv_add_rmsnorm(int32_t format, const uint16_t *x, const uint8_t *codes,
                            const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t n,
                            int64_t k, float *hidden, const void *norm, int32_t norm_dtype,
                            uint16_t *out, float eps, int32_t *counter);
fp4_status dec_argmax_feed(const float *x, int64_t n, int32_t *out, int32_t *pos,
                           int32_t *history, int64_t capacity);
// fp4_cublas_status (cublas_runtime.cu).
int32_t cublas_status(char *buf, int32_t cap);

}  // namespace fp4::cuda
