/* Transformer building blocks of a Llama-family forward pass (one sequence at a time).
 *
 * Activations are f32, row-major, one row per token. Weights are f32 or bf16 (FP4_DTYPE_*),
 * in the Hugging Face layout: a linear layer's weight is [out, in]. Every reduction
 * accumulates in f32 or wider. Only the CPU backend implements these so far; the CUDA device
 * reports FP4_ERR_INVALID_ARGUMENT naming the missing kernel. */
#ifndef FP4LAB_MODEL_H
#define FP4LAB_MODEL_H

#include "core.h"

/* y[m, n] = sum_k x[m, k] * w[n, k]  (x: [rows, in] f32, w: [out, in] f32|bf16, y: [rows, out]). */
FP4_API fp4_status fp4_linear(int32_t device, const float *x, const void *w, int32_t w_dtype,
                              float *y, int64_t rows, int64_t out_features, int64_t in_features);

/* y[t, :] = table[ids[t], :] as f32 (table: [vocab, dim] f32|bf16); ids out of range fail. */
FP4_API fp4_status fp4_embedding(int32_t device, const int32_t *ids, const void *table,
                                 int32_t table_dtype, float *y, int64_t tokens, int64_t vocab,
                                 int64_t dim);

/* y[t, :] = w * x[t, :] / sqrt(mean(x[t, :]^2) + eps)  (w: [dim] f32|bf16); y may alias x. */
FP4_API fp4_status fp4_rmsnorm(int32_t device, const float *x, const void *w, int32_t w_dtype,
                               float *y, int64_t rows, int64_t dim, float eps);

/* Rotary embedding in place, Hugging Face "rotate_half" pairing (i with i + head_dim/2):
 * x: [tokens, heads, head_dim]; cos, sin: [tokens, head_dim/2] (the caller builds the tables,
 * so every rope scaling rule lives in one place on the host). */
FP4_API fp4_status fp4_rope(int32_t device, float *x, const float *cos, const float *sin,
                            int64_t tokens, int64_t heads, int64_t head_dim);

/* Causal grouped-query attention over one sequence: q [tokens, heads, head_dim],
 * k and v [tokens, kv_heads, head_dim], out [tokens, heads, head_dim]; query head h reads kv
 * head h / (heads / kv_heads); softmax(scale * q.k) in f32 over positions <= t. */
FP4_API fp4_status fp4_attention(int32_t device, const float *q, const float *k, const float *v,
                                 float *out, int64_t tokens, int64_t heads, int64_t kv_heads,
                                 int64_t head_dim, float scale);

/* SwiGLU: out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)); out may alias gate. */
FP4_API fp4_status fp4_silu_mul(int32_t device, const float *gate, const float *up, float *out,
                                uint64_t n);

/* y[i] += x[i] (residual connections). */
FP4_API fp4_status fp4_add_inplace(int32_t device, float *y, const float *x, uint64_t n);

/* nll[r] = logsumexp(logits[r, :]) - logits[r, targets[r]]: the negative log-likelihood of the
 * next token, with the softmax sums in f64. Targets out of range fail. The one model op with a
 * CUDA path (device pointers there; sums in another order, so equal to the CPU's within f64
 * rounding): evaluation then downloads one float per token instead of the logits. */
FP4_API fp4_status fp4_nll(int32_t device, const float *logits, const int32_t *targets,
                           float *nll, int64_t rows, int64_t vocab);

#endif
