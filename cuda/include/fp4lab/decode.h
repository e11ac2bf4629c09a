/* Building blocks of an incremental (KV-cache) decode step, on both backends.
 *
 * Every op works on `tokens` consecutive new tokens whose first position is *pos: prefill runs
 * the whole prompt at *pos = 0, decode one token at a time. `pos` points to one int32 in the
 * device's memory (host memory on the CPU, device memory on CUDA), so a decode step needs no
 * host-side argument that changes from token to token. Activations are FP4_DTYPE_F32 or
 * FP4_DTYPE_BF16, row-major, one row per token; every reduction accumulates in f32 (or wider);
 * bf16 results are rounded once, to nearest even.
 *
 * KV cache: per layer one K and one V array [ctx, kv_heads, head_dim] (f32 or bf16); row p
 * holds position p. Attention for the query at position *pos + t reads rows 0..*pos + t.
 * Positions are checked against `ctx` on the CPU (an error) and on CUDA (out-of-range rows are
 * skipped and their outputs written as NaN, since a device-side position cannot be reported
 * without a synchronisation); callers keep *pos + tokens <= ctx.
 *
 * CUDA calls are asynchronous on the default stream, like fp4_gemm; fp4_synchronize waits. Their
 * kernels are launched for programmatic dependent launch: each may start while the previous
 * kernel drains and waits for it on the device before reading anything it may have written,
 * except the norm weights w of fp4_dec_rmsnorm and fp4_dec_add_rmsnorm, read before the wait:
 * write those with a copy, not with the kernel just before ($FP4LAB_PDL=off launches every
 * kernel plainly). */
#ifndef FP4LAB_DECODE_H
#define FP4LAB_DECODE_H

#include "core.h"

/* y[t, :] = table[ids[t], :] as f32 (table [vocab, dim] f32|bf16). Ids out of range fail on
 * the CPU and give NaN rows on CUDA. */
FP4_API fp4_status fp4_dec_embedding(int32_t device, const int32_t *ids, const void *table,
                                     int32_t table_dtype, float *y, int64_t tokens, int64_t vocab,
                                     int64_t dim);

/* y[t, :] = w * x[t, :] / sqrt(mean(x[t, :]^2) + eps); x f32, w f32|bf16, y f32|bf16. */
FP4_API fp4_status fp4_dec_rmsnorm(int32_t device, const float *x, const void *w, int32_t w_dtype,
                                   void *y, int32_t y_dtype, int64_t rows, int64_t dim, float eps);

/* The residual add and the next norm in one pass: x[t, :] += r[t, :] (x f32, r f32|bf16), then
 * y = rmsnorm(x) as fp4_dec_rmsnorm; the same values as fp4_dec_add followed by
 * fp4_dec_rmsnorm. */
FP4_API fp4_status fp4_dec_add_rmsnorm(int32_t device, float *x, const void *r, int32_t r_dtype,
                                       const void *w, int32_t w_dtype, void *y, int32_t y_dtype,
                                       int64_t rows, int64_t dim, float eps);

/* y[r, o] = sum_i x[r, i] * w[o, i]; x f32|bf16 [rows, in], w f32|bf16 [out, in],
 * y f32|bf16 [rows, out]. On CUDA, bf16 x and w go through cuBLAS (cublasGemmEx, f32
 * accumulation) when fp4_cublas_status finds it, else through the library's own kernel. */
FP4_API fp4_status fp4_dec_linear(int32_t device, const void *x, int32_t x_dtype, const void *w,
                                  int32_t w_dtype, void *y, int32_t y_dtype, int64_t rows,
                                  int64_t out_features, int64_t in_features);

/* 1 when cuBLAS was loaded (at run time: this library does not link it) for fp4_dec_linear,
 * else 0; buf gets the library's path or why it was not loaded. $FP4LAB_CUBLAS names the
 * library to load, or "off". */
FP4_API int32_t fp4_cublas_status(char *buf, int32_t cap);

/* Rotary embedding in place ("rotate_half" pairing, i with i + head_dim/2) of x [tokens, heads,
 * head_dim] (f32|bf16), token t at position *pos + t; cos and sin are f32 tables
 * [ctx, head_dim/2] for positions 0..ctx-1. */
FP4_API fp4_status fp4_dec_rope(int32_t device, void *x, int32_t x_dtype, const float *cos,
                                const float *sin, const int32_t *pos, int64_t ctx, int64_t tokens,
                                int64_t heads, int64_t head_dim);

/* cache[*pos + t, :] = x[t, :] for t < tokens (x f32|bf16 [tokens, width], cache f32|bf16
 * [ctx, width]). */
FP4_API fp4_status fp4_dec_kv_store(int32_t device, const void *x, int32_t x_dtype, void *cache,
                                    int32_t cache_dtype, const int32_t *pos, int64_t ctx,
                                    int64_t tokens, int64_t width);

/* The attention block's position-dependent writes in one call: fp4_dec_rope of q [tokens,
 * heads, head_dim] and of k [tokens, kv_heads, head_dim] in place, then fp4_dec_kv_store of k
 * into k_cache and of v (like k) into v_cache; the same values as those four calls. q, k, v
 * have x_dtype, the caches cache_dtype. */
FP4_API fp4_status fp4_dec_rope_kv_store(int32_t device, void *q, void *k, const void *v,
                                         int32_t x_dtype, const float *cos, const float *sin,
                                         const int32_t *pos, int64_t ctx, int64_t tokens,
                                         int64_t heads, int64_t kv_heads, int64_t head_dim,
                                         void *k_cache, void *v_cache, int32_t cache_dtype);

/* Causal grouped-query attention of new queries over the cache: q [tokens, heads, head_dim]
 * (f32|bf16), k_cache and v_cache [ctx, kv_heads, head_dim] (cache_dtype), out like q
 * (out_dtype); query t (position *pos + t) of head h reads kv head h / (heads / kv_heads) at
 * rows 0..*pos + t; softmax(scale * q.k) in f32. */
FP4_API fp4_status fp4_dec_attention(int32_t device, const void *q, int32_t q_dtype,
                                     const void *k_cache, const void *v_cache, int32_t cache_dtype,
                                     void *out, int32_t out_dtype, const int32_t *pos, int64_t ctx,
                                     int64_t tokens, int64_t heads, int64_t kv_heads,
                                     int64_t head_dim, float scale);

/* out[i] = silu(gate[i]) * up[i] (all of `dtype`); out may alias gate. */
FP4_API fp4_status fp4_dec_silu_mul(int32_t device, const void *gate, const void *up, void *out,
                                    int32_t dtype, uint64_t n);

/* One token's gate/up product and SwiGLU in one call: y = x W^T of bf16 x [k] with the FP4
 * weights of gate_proj and up_proj stacked by rows ([2 half, k], as fp4_gemm_segments with
 * segment ends {half, 2 half} and tensor_scales[0..1]), then y[i] = silu(y[i]) * y[half + i]
 * for i < half (as fp4_dec_silu_mul, bf16); y [2 half] bf16 keeps the up products in
 * y[half..]. The same values as those two calls; on CUDA one kernel where the batch-1 GEMV
 * takes k (each block computes the gate and up rows of the same outputs), else the two. */
FP4_API fp4_status fp4_dec_gate_up_silu(int32_t device, int32_t format, const uint16_t *x,
                                        const uint8_t *codes, const uint8_t *scales,
                                        const float *tensor_scales, uint16_t *y, int64_t half,
                                        int64_t k);

/* One token's q/k/v product and the attention block's position-dependent writes in one call:
 * qkv = x W^T of bf16 x [k] with the FP4 weights of q_proj, k_proj and v_proj stacked by rows
 * ([(heads + 2 kv_heads) head_dim, k], as fp4_gemm_segments with tensor_scales[0..2]), then
 * fp4_dec_rope_kv_store of its q, k and v parts (bf16, tokens = 1, position *pos). The same
 * values as those two calls; on CUDA one kernel where the batch-1 GEMV takes k (each block
 * computes both rows of its rotated pairs), else the two. */
FP4_API fp4_status fp4_dec_qkv_rope_kv_store(int32_t device, int32_t format, const uint16_t *x,
                                             const uint8_t *codes, const uint8_t *scales,
                                             const float *tensor_scales, uint16_t *qkv,
                                             const float *cos, const float *sin,
                                             const int32_t *pos, int64_t ctx, int64_t heads,
                                             int64_t kv_heads, int64_t head_dim, int64_t k,
                                             void *k_cache, void *v_cache, int32_t cache_dtype);

/* One token's FP4 product and the residual add and norm after it in one call: y = x W^T (bf16
 * x [k], FP4 weights [n, k] as fp4_gemm, batch 1), then fp4_dec_add_rmsnorm(hidden, y, bf16,
 * w, w_dtype, out, bf16, rows 1, dim n, eps). The same values as those two calls. counter is
 * one int32 of the device's memory holding 0, left 0 (with $FP4LAB_GEMV_TAIL=on the CUDA
 * kernel's blocks count themselves there and the last one runs the norm; by default CUDA runs
 * the two kernels); calls in flight at once need their own. */
FP4_API fp4_status fp4_dec_gemv_add_rmsnorm(int32_t device, int32_t format, const uint16_t *x,
                                            const uint8_t *codes, const uint8_t *scales,
                                            float tensor_scale, uint16_t *y, int64_t n,
                                            int64_t k, float *hidden, const void *w,
                                            int32_t w_dtype, uint16_t *out, float eps,
                                            int32_t *counter);

/* y[i] += x[i]: y f32 (the residual stream), x f32|bf16. */
FP4_API fp4_status fp4_dec_add(int32_t device, float *y, const void *x, int32_t x_dtype,
                               uint64_t n);

/* out[r] = the first index of the largest value of row r of x [rows, n] (f32); NaNs are never
 * the largest; a row of NaNs gives 0. */
FP4_API fp4_status fp4_dec_argmax(int32_t device, const float *x, int64_t rows, int64_t n,
                                  int32_t *out);

/* The next input of a greedy decode loop, chosen on the device so that the next step needs no
 * copy from the host: out[0] = argmax of x [n] (as fp4_dec_argmax), then *pos += 1 and, where the
 * new *pos < capacity, history[*pos] = out[0]. out, pos and history live on the device. */
FP4_API fp4_status fp4_dec_argmax_feed(int32_t device, const float *x, int64_t n, int32_t *out,
                                       int32_t *pos, int32_t *history, int64_t capacity);

#endif
