// Attention of new queries over the KV cache (fp4lab/decode.h). One block of kWarps warps per
// (query token, head); the warps split the cache rows 0..*pos + t between them, each keeping an
// online softmax (running max, running sum, and a weighted value sum whose head_dim entries are
// spread over the lanes, kMaxPerLane per lane), and the block merges the warps' partial results
// at the end. Bytes: (*pos + t + 1) * head_dim * 2 cache elements per (token, head), read once.
// Differs from the CPU twin (two passes, f64 softmax sum) only in rounding.
#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "stream.cuh"

namespace fp4::cuda {
namespace {

using fp4::dec::load;
using fp4::dec::store;

constexpr int kWarps = 4;
constexpr int kMaxPerLane = 16;  // head_dim <= 512

__global__ void attention_kernel(const void *q, int32_t q_dtype, const void *kc, const void *vc,
                                 int32_t cdt, void *out, int32_t out_dtype, const int32_t *pos,
                                 int64_t ctx, int64_t heads, int64_t kv_heads, int64_t head_dim,
                                 float scale) {
  __shared__ float s_max[kWarps], s_sum[kWarps];
  __shared__ float s_acc[kWarps][kMaxPerLane * 32];
  const int64_t h = blockIdx.x, t = blockIdx.y;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t qbase = (t * heads + h) * head_dim;
  const int64_t last = int64_t(*pos) + t;
  if (*pos < 0 || last >= ctx) {
    for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x)
      store(out, out_dtype, qbase + d, __int_as_float(0x7fc00000));
    return;
  }
  const int64_t kv_stride = kv_heads * head_dim;
  const int64_t kvoff = (h / (heads / kv_heads)) * head_dim;
  float qv[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
  for (int j = 0; j < kMaxPerLane; j++) {
    const int64_t d = lane + 32 * j;
    qv[j] = d < head_dim ? load(q, q_dtype, qbase + d) : 0.0f;
    acc[j] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t s = warp; s <= last; s += kWarps) {
    const int64_t row = s * kv_stride + kvoff;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxPerLane; j++) {
      const int64_t d = lane + 32 * j;
      if (d < head_dim) dot += qv[j] * load(kc, cdt, row + d);
    }
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float score = dot * scale;
    const float m_new = fmaxf(m, score);
    const float correction = expf(m - m_new);  // 0 on the first row (m = -inf)
    const float p = expf(score - m_new);
    l = l * correction + p;
#pragma unroll
    for (int j = 0; j < kMaxPerLane; j++) {
      const int64_t d = lane + 32 * j;
      if (d < head_dim) acc[j] = acc[j] * correction + p * load(vc, cdt, row + d);
    }
    m = m_new;
  }
  if (lane == 0) {
    s_max[warp] = m;
    s_sum[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < kMaxPerLane; j++) s_acc[warp][lane + 32 * j] = acc[j];
  __syncthreads();
  float gmax = -INFINITY;
  for (int w = 0; w < kWarps; w++) gmax = fmaxf(gmax, s_max[w]);
  float total = 0.0f;
  for (int w = 0; w < kWarps; w++)
    if (s_sum[w] > 0.0f) total += s_sum[w] * expf(s_max[w] - gmax);
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < kWarps; w++)
      if (s_sum[w] > 0.0f) v += s_acc[w][d] * expf(s_max[w] - gmax);
    store(out, out_dtype, qbase + d, v / total);
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
  attention_kernel<<<dim3(unsigned(heads), unsigned(tokens)), kWarps * 32, 0, launch_stream()>>>(
      q, q_dtype, k_cache, v_cache, cache_dtype, out, out_dtype, pos, ctx, heads, kv_heads,
      head_dim, scale);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace fp4::cuda
