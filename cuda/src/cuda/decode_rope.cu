// Position-dependent writes of the decode step (fp4lab/decode.h): RoPE of the new queries and
// keys, and the store of the new keys and values into the KV cache, both at positions
// *pos + t read on the device. Bytes: rope 2 * tokens * heads * head_dim elements plus the
// tables' rows; kv_store tokens * width * (x element + cache element).
#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "stream.cuh"

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
    const float a = load(x, dtype, base + j), b = load(x, dtype, base + j + half);
    store(x, dtype, base + j, a * c - b * s);
    store(x, dtype, base + j + half, b * c + a * s);
  }
}

__global__ void kv_store_kernel(const void *x, int32_t x_dtype, void *cache, int32_t cache_dtype,
                                const int32_t *pos, int64_t ctx, int64_t tokens, int64_t width) {
  const int64_t p0 = *pos, n = tokens * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = p0 + i / width;
    if (p >= 0 && p < ctx) store(cache, cache_dtype, p0 * width + i, load(x, x_dtype, i));
  }
}

}  // namespace

fp4_status dec_rope(void *x, int32_t x_dtype, const float *cos, const float *sin,
                    const int32_t *pos, int64_t ctx, int64_t tokens, int64_t heads,
                    int64_t head_dim) {
  if (fp4_status s = ensure_device()) return s;
  rope_kernel<<<blocks_for(tokens * heads * head_dim / 2), kThreads, 0, launch_stream()>>>(x, x_dtype, cos, sin, pos,
                                                                       ctx, tokens, heads,
                                                                       head_dim);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

fp4_status dec_kv_store(const void *x, int32_t x_dtype, void *cache, int32_t cache_dtype,
                        const int32_t *pos, int64_t ctx, int64_t tokens, int64_t width) {
  if (fp4_status s = ensure_device()) return s;
  kv_store_kernel<<<blocks_for(tokens * width), kThreads, 0, launch_stream()>>>(x, x_dtype, cache, cache_dtype, pos,
                                                            ctx, tokens, width);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace fp4::cuda
