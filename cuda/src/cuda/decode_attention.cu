// Attention of new queries over the KV cache (fp4lab/decode.h). One block of kThreads per
// (query token, head), walking the cache rows 0..*pos + t in tiles of kThreads rows:
//  1. scores: thread i takes row i of the tile whole (its dot product with q, which sits in
//     shared memory), so no warp waits on a shuffle reduction per row;
//  2. the tile's max and sum of exponentials (block reductions), rescaling the running sum
//     (online softmax across tiles, two passes within one);
//  3. values: thread (g, d) accumulates dimension d over the tile rows g, g + G, ... (G =
//     kThreads / head_dim groups), consecutive threads reading consecutive elements of a row.
// The G partial sums meet in shared memory at the end. Bytes: (*pos + t + 1) * head_dim * 2
// cache elements per (token, head), read once (the score loads of a row come from L1).
// Differs from the CPU twin (two passes, f64 softmax sum) only in rounding.
#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "stream.cuh"

namespace fp4::cuda {
namespace {

using fp4::dec::load;
using fp4::dec::store;

constexpr int kThreads = 256;
constexpr int kMaxHeadDim = 512;
constexpr int kMaxPerThread = kMaxHeadDim / kThreads;

// Block-wide reduction of v with op (max or sum); every thread gets the result.
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v, float *scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, w) : v + w;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // scratch may still be read by the previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kThreads / 32; w++) r = kMax ? fmaxf(r, scratch[w]) : r + scratch[w];
  return r;
}

// q . k_row over head_dim: 16-byte loads of a bf16 row when aligned, else element loads.
__device__ __forceinline__ float row_dot(const float *q, const void *kc, int32_t cdt, int64_t row,
                                         int64_t head_dim, bool vec) {
  float dot = 0.0f;
  if (vec) {
    const uint4 *kr = reinterpret_cast<const uint4 *>(static_cast<const uint16_t *>(kc) + row);
    for (int64_t c = 0; c < head_dim / 8; c++) {
      const uint4 w = kr[c];
      const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int e = 0; e < 4; e++) {
        dot += q[8 * c + 2 * e] * __uint_as_float(ws[e] << 16);
        dot += q[8 * c + 2 * e + 1] * __uint_as_float(ws[e] & 0xffff0000u);
      }
    }
  } else {
    for (int64_t d = 0; d < head_dim; d++) dot += q[d] * load(kc, cdt, row + d);
  }
  return dot;
}

__global__ void __launch_bounds__(kThreads)
    attention_kernel(const void *q, int32_t q_dtype, const void *kc, const void *vc, int32_t cdt,
                     void *out, int32_t out_dtype, const int32_t *pos, int64_t ctx,
                     int64_t heads, int64_t kv_heads, int64_t head_dim, float scale, bool vec) {
  __shared__ float s_q[kMaxHeadDim];
  __shared__ float s_p[kThreads];
  __shared__ float s_red[kThreads / 32];
  __shared__ float s_acc[kThreads];
  const int64_t h = blockIdx.x, t = blockIdx.y;
  const int tid = threadIdx.x;
  const int64_t qbase = (t * heads + h) * head_dim;
  const int64_t last = int64_t(*pos) + t;
  if (*pos < 0 || last >= ctx) {
    for (int64_t d = tid; d < head_dim; d += kThreads)
      store(out, out_dtype, qbase + d, __int_as_float(0x7fc00000));
    return;
  }
  for (int64_t d = tid; d < head_dim; d += kThreads) s_q[d] = load(q, q_dtype, qbase + d);
  const int64_t kv_stride = kv_heads * head_dim;
  const int64_t kvoff = (h / (heads / kv_heads)) * head_dim;
  // Value roles: G groups of head_dim threads (one group of all threads when head_dim > kThreads).
  const int groups = head_dim <= kThreads ? int(kThreads / head_dim) : 1;
  const int g = head_dim <= kThreads ? int(tid / head_dim) : 0;
  const bool has_dim = g < groups;
  float acc[kMaxPerThread] = {};
  float m = -INFINITY, l = 0.0f;
  __syncthreads();
  for (int64_t tile = 0; tile <= last; tile += kThreads) {
    const int64_t rows = last + 1 - tile < kThreads ? last + 1 - tile : kThreads;
    const float score = tid < rows
                            ? row_dot(s_q, kc, cdt, (tile + tid) * kv_stride + kvoff, head_dim,
                                      vec) * scale
                            : -INFINITY;
    const float m_new = fmaxf(m, block_reduce<true>(score, s_red));
    const float p = tid < rows ? expf(score - m_new) : 0.0f;
    const float correction = expf(m - m_new);  // 0 on the first tile (m = -inf)
    l = l * correction + block_reduce<false>(p, s_red);
    s_p[tid] = p;
    __syncthreads();
    if (has_dim) {
#pragma unroll
      for (int j = 0; j < kMaxPerThread; j++) {
        const int64_t d = (head_dim <= kThreads ? tid % head_dim : tid) + int64_t(j) * kThreads;
        if (d >= head_dim) break;
        float a = acc[j] * correction;
        for (int64_t r = g; r < rows; r += groups)
          a += s_p[r] * load(vc, cdt, (tile + r) * kv_stride + kvoff + d);
        acc[j] = a;
      }
    }
    m = m_new;
  }
  // Sum the groups' partial values (head_dim <= kThreads), or write each thread's dims.
  if (head_dim <= kThreads) {
    s_acc[tid] = has_dim ? acc[0] : 0.0f;
    __syncthreads();
    if (tid < head_dim) {
      float v = 0.0f;
      for (int gg = 0; gg < groups; gg++) v += s_acc[gg * head_dim + tid];
      store(out, out_dtype, qbase + tid, v / l);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kMaxPerThread; j++) {
      const int64_t d = tid + int64_t(j) * kThreads;
      if (d < head_dim) store(out, out_dtype, qbase + d, acc[j] / l);
    }
  }
}

}  // namespace

fp4_status dec_attention(const void *q, int32_t q_dtype, const void *k_cache,
                         const void *v_cache, int32_t cache_dtype, void *out, int32_t out_dtype,
                         const int32_t *pos, int64_t ctx, int64_t tokens, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, float scale) {
  if (fp4_status s = ensure_device()) return s;
  FP4_REQUIRE(heads < 65536 && tokens < 65536,
              "fp4_dec_attention: CUDA handles fewer than 65536 heads and tokens per call");
  FP4_REQUIRE(head_dim <= kMaxHeadDim, "fp4_dec_attention: CUDA handles head_dim <= %d, got %lld",
              kMaxHeadDim, (long long)head_dim);
  const bool vec = cache_dtype == FP4_DTYPE_BF16 && head_dim % 8 == 0 &&
                   (kv_heads * head_dim) % 8 == 0 && reinterpret_cast<uintptr_t>(k_cache) % 16 == 0;
  attention_kernel<<<dim3(unsigned(heads), unsigned(tokens)), kThreads, 0, launch_stream()>>>(
      q, q_dtype, k_cache, v_cache, cache_dtype, out, out_dtype, pos, ctx, heads, kv_heads,
      head_dim, scale, vec);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace fp4::cuda
