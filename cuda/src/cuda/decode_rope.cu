// Position-dependent writes of the decode step (fp4lab/decode.h): RoPE of the new queries and
// keys, and the store of the new keys and values into the KV cache, both at positions
// *pos + t read on the device; alone, or all four in one kernel (rope_kv_store). Bytes: rope
// 2 * tokens * heads * head_dim elements plus the tables' rows; kv_store tokens * width *
// (x element + cache element); rope_kv_store the sum of its four parts.
#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "decode_launch.cuh"

namespace fp4::cuda {
namespace {

using fp4::dec::load;
using fp4::dec::store;

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return int(b < 4096 ? b : 4096);
}

// One thread per rotated pair (t, h, i); a position beyond the tables poisons the pair.
__global__ void rope_kernel(void *x, int32_t dtype, const float *cos, const float *sin,
                            const int32_t *pos, int64_t ctx, int64_t tokens, int64_t heads,
                            int64_t head_dim) {
  pdl_trigger();
  pdl_wait();
  const int64_t half = head_dim / 2, n = tokens * heads * half;
  const int64_t p0 = *pos;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / (heads * half), h = (i / half) % heads, j = i % half;
    const int64_t base = (t * heads + h) * head_dim, p = p0 + t;
    if (p < 0 || p >= ctx) {
      store(x, dtype, base + j, __int_as_float(0x7fc00000));
      store(x, dtype, base + j + half, __int_as_float(0x7fc00000));
      continue;
    }
    const float c = cos[p * half + j], s = sin[p * half + j];
    float ra, rb;
    fp4::dec::rope_pair(load(x, dtype, base + j), load(x, dtype, base + j + half), c, s, ra, rb);
    store(x, dtype, base + j, ra);
    store(x, dtype, base + j + half, rb);
  }
}

__global__ void kv_store_kernel(const void *x, int32_t x_dtype, void *cache, int32_t cache_dtype,
                                const int32_t *pos, int64_t ctx, int64_t tokens, int64_t width) {
  pdl_trigger();
  pdl_wait();
  const int64_t p0 = *pos, n = tokens * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = p0 + i / width;
    if (p >= 0 && p < ctx) store(cache, cache_dtype, p0 * width + i, load(x, x_dtype, i));
  }
}

// x as stored in `dtype` and read back.
__device__ __forceinline__ float rounded(int32_t dtype, float x) {
  return dtype == FP4_DTYPE_BF16 ? fp4::fmt::bf16_to_f32(fp4::fmt::f32_to_bf16(x)) : x;
}

// One thread per rotated pair of q (the first tokens * heads * half threads) or of k; a k
// thread also stores its two rotated key elements and the same two value elements into the
// caches. The stored key is the rotated key as rope leaves it in k (rounded to x's dtype).
__global__ void rope_kv_store_kernel(void *q, void *k, const void *v, int32_t dtype,
                                     const float *cos, const float *sin, const int32_t *pos,
                                     int64_t ctx, int64_t tokens, int64_t heads, int64_t kv_heads,
                                     int64_t head_dim, void *kc, void *vc, int32_t cdt) {
  pdl_trigger();
  pdl_wait();
  const int64_t half = head_dim / 2, nq = tokens * heads * half;
  const int64_t n = nq + tokens * kv_heads * half, width = kv_heads * head_dim;
  const int64_t p0 = *pos;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const bool is_q = i < nq;
    const int64_t hs = is_q ? heads : kv_heads, ii = is_q ? i : i - nq;
    const int64_t t = ii / (hs * half), h = (ii / half) % hs, j = ii % half;
    const int64_t base = (t * hs + h) * head_dim, p = p0 + t;
    void *x = is_q ? q : k;
    if (p < 0 || p >= ctx) {
      store(x, dtype, base + j, __int_as_float(0x7fc00000));
      store(x, dtype, base + j + half, __int_as_float(0x7fc00000));
      continue;
    }
    const float c = cos[p * half + j], s = sin[p * half + j];
    float ra, rb;
    fp4::dec::rope_pair(load(x, dtype, base + j), load(x, dtype, base + j + half), c, s, ra, rb);
    store(x, dtype, base + j, ra);
    store(x, dtype, base + j + half, rb);
    if (is_q) continue;
    const int64_t row = p * width + h * head_dim + j;
    store(kc, cdt, row, rounded(dtype, ra));
    store(kc, cdt, row + half, rounded(dtype, rb));
    store(vc, cdt, row, load(v, dtype, base + j));
    store(vc, cdt, row + half, load(v, dtype, base + j + half));
  }
}

}  // namespace

fp4_status dec_rope(void *x, int32_t x_dtype, const float *cos, const float *sin,
                    const int32_t *pos, int64_t ctx, int64_t tokens, int64_t heads,
                    int64_t head_dim) {
  if (fp4_status s = ensure_device()) return s;
  return launch_decode(rope_kernel, dim3(blocks_for(tokens * heads * head_dim / 2)),
                       dim3(kThreads), 1, x, x_dtype, cos, sin, pos, ctx, tokens, heads, head_dim);
}

fp4_status dec_kv_store(const void *x, int32_t x_dtype, void *cache, int32_t cache_dtype,
                        const int32_t *pos, int64_t ctx, int64_t tokens, int64_t width) {
  if (fp4_status s = ensure_device()) return s;
  return launch_decode(kv_store_kernel, dim3(blocks_for(tokens * width)), dim3(kThreads), 1, x,
                       x_dtype, cache, cache_dtype, pos, ctx, tokens, width);
}

fp4_status dec_rope_kv_store(void *q, void *k, const void *v, int32_t x_dtype, const float *cos,
                             const float *sin, const int32_t *pos, int64_t ctx, int64_t tokens,
                             int64_t heads, int64_t kv_heads, int64_t head_dim, void *k_cache,
                             void *v_cache, int32_t cache_dtype) {
  if (fp4_status s = ensure_device()) return s;
  return launch_decode(rope_kv_store_kernel,
                       dim3(blocks_for(tokens * (heads + kv_heads) * (head_dim / 2))),
                       dim3(kThreads), 1, q, k, v, x_dtype, cos, sin, pos, ctx, tokens, heads,
                       kv_heads, head_dim, k_cache, v_cache, cache_dtype);
}

}  // namespace fp4::cuda
