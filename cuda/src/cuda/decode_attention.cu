// Attention of new queries over the KV cache (fp4lab/decode.h), flash-decoding style: the
// cache rows 0..*pos + t of query token t are split over a cluster of kSplit blocks, so a
// single decode token spreads over kv_heads * ceil(group / QB) * kSplit blocks instead of one
// block per head. A block serves QB query heads of one KV head (GQA: each K/V row it reads
// serves all QB of them):
//  1. rows: warp w takes its block's rows w, w + kWarps, ... kRows at a time (all their loads
//     in flight before the first use); lane l holds dims [l * DPL, l * DPL + DPL) of q, of the
//     rows and of its accumulators; a score is the warp's xor-shuffle sum, times scale;
//  2. online softmax per warp: running max m, sum l and unnormalized output, rescaled when the
//     max grows;
//  3. the block merges its warps' (m, l, output) in shared memory, then the cluster merges its
//     blocks' through distributed shared memory, each block finishing a slice of the outputs.
// Bytes: (*pos + t + 1) * head_dim * 2 cache elements per (token, KV head, head group), read
// once; q and out once. Differs from the CPU twin (sequential dot products, two passes, f64
// softmax sum) only in rounding.
#include <cooperative_groups.h>

#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "decode_launch.cuh"

namespace fp4::cuda {
namespace {

namespace cg = cooperative_groups;
using fp4::dec::load;
using fp4::dec::store;

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kSplit = 8;  // blocks per cluster (the portable maximum)
constexpr int kMaxHeadDim = 512;

// The lane's DPL dims of the row at element offset `off` as f32; zeros past head_dim. `vec`:
// a bf16 cache, head_dim == 32 * DPL and aligned rows, so one or two vector loads per lane.
template <int DPL>
__device__ __forceinline__ void load_dims(const void *c, int32_t cdt, int64_t off, int lane,
                                          int64_t head_dim, bool vec, float out[DPL]) {
  if (vec) {
    const uint16_t *p = static_cast<const uint16_t *>(c) + off + lane * DPL;
    uint32_t w[(DPL + 1) / 2];
    if constexpr (DPL == 1) {
      w[0] = uint32_t(*p);
    } else if constexpr (DPL == 2) {
      w[0] = *reinterpret_cast<const uint32_t *>(p);
    } else if constexpr (DPL == 4) {
      const uint2 u = *reinterpret_cast<const uint2 *>(p);
      w[0] = u.x;
      w[1] = u.y;
    } else {
#pragma unroll
      for (int v = 0; v < DPL / 8; v++) {
        const uint4 u = reinterpret_cast<const uint4 *>(p)[v];
        w[4 * v] = u.x;
        w[4 * v + 1] = u.y;
        w[4 * v + 2] = u.z;
        w[4 * v + 3] = u.w;
      }
    }
#pragma unroll
    for (int i = 0; i < DPL; i++)
      out[i] = __uint_as_float(i % 2 == 0 ? w[i / 2] << 16 : w[i / 2] & 0xffff0000u);
    return;
  }
#pragma unroll
  for (int i = 0; i < DPL; i++) {
    const int64_t d = int64_t(lane) * DPL + i;
    out[i] = d < head_dim ? load(c, cdt, off + d) : 0.0f;
  }
}

// Weight of a partial result with max m in a merge whose max is M (empty partials weigh 0).
__device__ __forceinline__ float weight(float m, float M) {
  return m == -INFINITY ? 0.0f : expf(m - M);
}

template <int DPL, int QB>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(const void *q, int32_t q_dtype, const void *kc, const void *vc, int32_t cdt,
                     void *out, int32_t out_dtype, const int32_t *pos, int64_t ctx,
                     int64_t heads, int64_t kv_heads, int64_t head_dim, float scale, int hgroups,
                     bool vec) {
  constexpr int kDim = 32 * DPL;
  constexpr int kRows = DPL <= 4 ? 8 : 4;  // rows a warp has in flight (registers permitting)
  __shared__ float s_m[kWarps][QB], s_l[kWarps][QB];
  __shared__ float s_acc[kWarps][QB][kDim];
  __shared__ float b_m[QB], b_l[QB];
  __shared__ float b_acc[QB][kDim];
  pdl_trigger();
  pdl_wait();
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t t = blockIdx.y, unit = blockIdx.x / kSplit;
  const int64_t kvh = unit / hgroups, group = heads / kv_heads;
  const int64_t h0 = kvh * group + (unit % hgroups) * QB;
  const int nh = int(min(int64_t(QB), kvh * group + group - h0));
  // q's loads need no position: they overlap the position's.
  float qv[QB][DPL];
#pragma unroll
  for (int j = 0; j < QB; j++)
#pragma unroll
    for (int i = 0; i < DPL; i++) {
      const int64_t d = int64_t(lane) * DPL + i;
      qv[j][i] = j < nh && d < head_dim ? load(q, q_dtype, (t * heads + h0 + j) * head_dim + d)
                                        : 0.0f;
    }
  const int64_t p0 = *pos, last = p0 + t;
  if (p0 < 0 || last >= ctx) {  // the same for the whole cluster: no block reaches a sync
    if (rank == 0)
      for (int64_t e = threadIdx.x; e < nh * head_dim; e += kThreads)
        store(out, out_dtype, (t * heads + h0) * head_dim + e, __int_as_float(0x7fc00000));
    return;
  }
  const int64_t kv_stride = kv_heads * head_dim, kvoff = kvh * head_dim;
  const int64_t nrows = last + 1, chunk = (nrows + kSplit - 1) / kSplit;
  const int64_t r_begin = int64_t(rank) * chunk;
  const int64_t r_end = min(nrows, r_begin + chunk);

  float m[QB], l[QB], acc[QB][DPL];
#pragma unroll
  for (int j = 0; j < QB; j++) {
    m[j] = -INFINITY;
    l[j] = 0.0f;
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[j][i] = 0.0f;
  }
  for (int64_t r0 = r_begin + warp; r0 < r_end; r0 += int64_t(kWarps) * kRows) {
    float kr[kRows][DPL], vr[kRows][DPL];
#pragma unroll
    for (int rr = 0; rr < kRows; rr++) {
      const int64_t row = r0 + int64_t(rr) * kWarps;
      if (row < r_end) {
        load_dims<DPL>(kc, cdt, row * kv_stride + kvoff, lane, head_dim, vec, kr[rr]);
        load_dims<DPL>(vc, cdt, row * kv_stride + kvoff, lane, head_dim, vec, vr[rr]);
      } else {
#pragma unroll
        for (int i = 0; i < DPL; i++) kr[rr][i] = vr[rr][i] = 0.0f;
      }
    }
    float s[kRows][QB];
#pragma unroll
    for (int rr = 0; rr < kRows; rr++)
#pragma unroll
      for (int j = 0; j < QB; j++) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) dot += qv[j][i] * kr[rr][i];
        s[rr][j] = dot;
      }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
      for (int rr = 0; rr < kRows; rr++)
#pragma unroll
        for (int j = 0; j < QB; j++) s[rr][j] += __shfl_xor_sync(0xffffffffu, s[rr][j], o);
#pragma unroll
    for (int j = 0; j < QB; j++) {
      float mx = m[j];
#pragma unroll
      for (int rr = 0; rr < kRows; rr++) {
        s[rr][j] = r0 + int64_t(rr) * kWarps < r_end ? s[rr][j] * scale : -INFINITY;
        mx = fmaxf(mx, s[rr][j]);
      }
      const float corr = expf(m[j] - mx);  // 0 on the warp's first rows (m = -inf)
      float psum = 0.0f, p[kRows];
#pragma unroll
      for (int rr = 0; rr < kRows; rr++) {
        p[rr] = expf(s[rr][j] - mx);
        psum += p[rr];
      }
      l[j] = l[j] * corr + psum;
#pragma unroll
      for (int i = 0; i < DPL; i++) {
        float a = acc[j][i] * corr;
#pragma unroll
        for (int rr = 0; rr < kRows; rr++) a += p[rr] * vr[rr][i];
        acc[j][i] = a;
      }
      m[j] = mx;
    }
  }

  // Merge the warps: block results in b_m, b_l, b_acc.
#pragma unroll
  for (int j = 0; j < QB; j++) {
    if (lane == 0) {
      s_m[warp][j] = m[j];
      s_l[warp][j] = l[j];
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) s_acc[warp][j][lane * DPL + i] = acc[j][i];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < QB * kDim; e += kThreads) {
    const int j = e / kDim, d = e % kDim;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; w++) M = fmaxf(M, s_m[w][j]);
    float L = 0.0f, A = 0.0f;
    for (int w = 0; w < kWarps; w++) {
      const float g = weight(s_m[w][j], M);
      L += g * s_l[w][j];
      A += g * s_acc[w][j][d];
    }
    b_acc[j][d] = A;
    if (d == 0) {
      b_m[j] = M;
      b_l[j] = L;
    }
  }
  cluster.sync();
  // Merge the cluster's blocks: block `rank` finishes outputs rank * kThreads + threadIdx.x, ...
  for (int64_t e = int64_t(rank) * kThreads + threadIdx.x; e < nh * head_dim;
       e += int64_t(kSplit) * kThreads) {
    const int j = int(e / head_dim), d = int(e % head_dim);
    float bm[kSplit];
    float M = -INFINITY;
#pragma unroll
    for (int b = 0; b < kSplit; b++) {
      bm[b] = *cluster.map_shared_rank(&b_m[j], b);
      M = fmaxf(M, bm[b]);
    }
    float L = 0.0f, A = 0.0f;
#pragma unroll
    for (int b = 0; b < kSplit; b++) {
      const float g = weight(bm[b], M);
      L += g * *cluster.map_shared_rank(&b_l[j], b);
      A += g * *cluster.map_shared_rank(&b_acc[j][d], b);
    }
    store(out, out_dtype, (t * heads + h0 + j) * head_dim + d, A / L);
  }
  cluster.sync();  // no block leaves while another may still read its shared memory
}

template <int DPL, int QB>
fp4_status launch(const void *q, int32_t q_dtype, const void *k_cache, const void *v_cache,
                  int32_t cache_dtype, void *out, int32_t out_dtype, const int32_t *pos,
                  int64_t ctx, int64_t tokens, int64_t heads, int64_t kv_heads, int64_t head_dim,
                  float scale) {
  const int64_t hgroups = (heads / kv_heads + QB - 1) / QB;
  const int64_t bx = kv_heads * hgroups * kSplit;
  FP4_REQUIRE(bx < (int64_t(1) << 31), "fp4_dec_attention: too many heads for CUDA");
  const auto aligned = [](const void *p) {
    return reinterpret_cast<uintptr_t>(p) % (2 * DPL < 16 ? 2 * DPL : 16) == 0;
  };
  const bool vec = cache_dtype == FP4_DTYPE_BF16 && head_dim == 32 * DPL && aligned(k_cache) &&
                   aligned(v_cache);
  return launch_decode(attention_kernel<DPL, QB>, dim3(unsigned(bx), unsigned(tokens)),
                       dim3(kThreads), kSplit, q, q_dtype, k_cache, v_cache, cache_dtype, out,
                       out_dtype, pos, ctx, heads, kv_heads, head_dim, scale, int(hgroups), vec);
}

}  // namespace

fp4_status dec_attention(const void *q, int32_t q_dtype, const void *k_cache,
                         const void *v_cache, int32_t cache_dtype, void *out, int32_t out_dtype,
                         const int32_t *pos, int64_t ctx, int64_t tokens, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, float scale) {
  if (fp4_status s = ensure_device()) return s;
  FP4_REQUIRE(tokens < 65536, "fp4_dec_attention: CUDA handles fewer than 65536 tokens per call");
  FP4_REQUIRE(head_dim <= kMaxHeadDim, "fp4_dec_attention: CUDA handles head_dim <= %d, got %lld",
              kMaxHeadDim, (long long)head_dim);
  // Two query heads per block when the group has them (twice the blocks of four per block, the
  // duplicate K/V reads hitting L2); one where the dims take the registers.
  const bool pair = heads / kv_heads >= 2;
#define FP4_ATTENTION(DPL, QB)                                                                 \
  launch<DPL, QB>(q, q_dtype, k_cache, v_cache, cache_dtype, out, out_dtype, pos, ctx, tokens, \
                  heads, kv_heads, head_dim, scale)
  if (head_dim <= 32) return pair ? FP4_ATTENTION(1, 2) : FP4_ATTENTION(1, 1);
  if (head_dim <= 64) return pair ? FP4_ATTENTION(2, 2) : FP4_ATTENTION(2, 1);
  if (head_dim <= 128) return pair ? FP4_ATTENTION(4, 2) : FP4_ATTENTION(4, 1);
  if (head_dim <= 256) return pair ? FP4_ATTENTION(8, 2) : FP4_ATTENTION(8, 1);
  return FP4_ATTENTION(16, 1);
#undef FP4_ATTENTION
}

}  // namespace fp4::cuda
