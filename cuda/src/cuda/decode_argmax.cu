// Greedy token choice (fp4lab/decode.h): a cluster of kSplit blocks per row scans the row once
// (rows * n * 4 bytes; 16-byte loads when the row allows). Each thread keeps its best (value,
// first index), each block reduces its threads', and the cluster's first block reduces the
// blocks' through distributed shared memory: two stages, one launch, no workspace. Ties go to
// the lower index and NaNs never win, as in the CPU twin. Feeding a decode loop
// (fp4_dec_argmax_feed), the same thread that writes the token also advances the position and
// records the token, so the next step's kernels read both from the device.
#include <cooperative_groups.h>

#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "decode_launch.cuh"

namespace fp4::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 512;
constexpr int kSplit = 8;  // blocks per row: one portable cluster
constexpr int kBatch = 8;  // loads per thread in flight

// Whether (va, ia) beats (vb, ib); an index < 0 marks "nothing seen".
__device__ __forceinline__ bool better(float va, int32_t ia, float vb, int32_t ib) {
  if (ia < 0) return false;
  if (ib < 0) return true;
  return va > vb || (va == vb && ia < ib);
}

__device__ __forceinline__ void consider(float v, int32_t i, float &bv, int32_t &bi) {
  if (!isnan(v) && better(v, i, bv, bi)) {
    bv = v;
    bi = i;
  }
}

__global__ void __launch_bounds__(kThreads)
    argmax_kernel(const float *x, int64_t n, int32_t *out, bool vec, int32_t *pos,
                  int32_t *history, int64_t capacity) {
  __shared__ float sv[kThreads];
  __shared__ int32_t si[kThreads];
  pdl_trigger();
  pdl_wait();
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  const int64_t row = blockIdx.y;
  const float *xr = x + row * n;
  const int64_t tid = int64_t(rank) * kThreads + threadIdx.x, stride = int64_t(kSplit) * kThreads;
  float bv = 0.0f;
  int32_t bi = -1;
  // kBatch loads in flight before the first comparison (one round covers 128K logits).
  if (vec) {
    const float4 *x4 = reinterpret_cast<const float4 *>(xr);
    const int64_t n4 = n / 4;
    for (int64_t i0 = tid; i0 < n4; i0 += kBatch * stride) {
      float4 v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; u++) {
        const int64_t i = i0 + u * stride;
        if (i < n4) v[u] = x4[i];
      }
#pragma unroll
      for (int u = 0; u < kBatch; u++) {
        const int64_t i = i0 + u * stride;
        if (i >= n4) break;
        consider(v[u].x, int32_t(4 * i), bv, bi);
        consider(v[u].y, int32_t(4 * i + 1), bv, bi);
        consider(v[u].z, int32_t(4 * i + 2), bv, bi);
        consider(v[u].w, int32_t(4 * i + 3), bv, bi);
      }
    }
  } else {
    for (int64_t i0 = tid; i0 < n; i0 += kBatch * stride) {
      float v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; u++) {
        const int64_t i = i0 + u * stride;
        if (i < n) v[u] = xr[i];
      }
#pragma unroll
      for (int u = 0; u < kBatch; u++) {
        const int64_t i = i0 + u * stride;
        if (i >= n) break;
        consider(v[u], int32_t(i), bv, bi);
      }
    }
  }
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s && better(sv[threadIdx.x + s], si[threadIdx.x + s], sv[threadIdx.x],
                                  si[threadIdx.x])) {
      sv[threadIdx.x] = sv[threadIdx.x + s];
      si[threadIdx.x] = si[threadIdx.x + s];
    }
    __syncthreads();
  }
  cluster.sync();  // every block's best sits in its sv[0], si[0]
  if (rank == 0 && threadIdx.x == 0) {
    for (unsigned b = 1; b < kSplit; b++) {
      const float v = *cluster.map_shared_rank(&sv[0], b);
      const int32_t i = *cluster.map_shared_rank(&si[0], b);
      if (better(v, i, sv[0], si[0])) {
        sv[0] = v;
        si[0] = i;
      }
    }
    const int32_t best = si[0] < 0 ? 0 : si[0];
    out[row] = best;
    if (pos) {
      const int32_t p = *pos + 1;
      *pos = p;
      if (p < capacity) history[p] = best;
    }
  }
  cluster.sync();  // no block leaves while the first may still read its shared memory
}

// One cluster per row; pos (null: plain argmax) as in argmax_kernel.
fp4_status launch(const float *x, int64_t rows, int64_t n, int32_t *out, int32_t *pos,
                  int32_t *history, int64_t capacity) {
  if (fp4_status s = ensure_device()) return s;
  const bool vec = n % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  return launch_decode(argmax_kernel, dim3(kSplit, unsigned(rows)), dim3(kThreads), kSplit, x, n,
                       out, vec, pos, history, capacity);
}

}  // namespace

fp4_status dec_argmax(const float *x, int64_t rows, int64_t n, int32_t *out) {
  FP4_REQUIRE(rows < 65536, "fp4_dec_argmax: CUDA handles fewer than 65536 rows per call");
  return launch(x, rows, n, out, nullptr, nullptr, 0);
}

fp4_status dec_argmax_feed(const float *x, int64_t n, int32_t *out, int32_t *pos,
                           int32_t *history, int64_t capacity) {
  return launch(x, 1, n, out, pos, history, capacity);
}

}  // namespace fp4::cuda
