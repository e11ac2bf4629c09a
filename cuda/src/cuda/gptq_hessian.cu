// CUDA Gram products for GPTQ, the twins of hessian_add and cross_add in cuda/src/cpu/gptq.cpp:
// the Hessian h <- beta * h + alpha * x^T x (a SYRK) and the asymmetric objective's cross
// product d <- beta * d + alpha * a^T b (a GEMM with both operands transposed).
//
// Layout: x, a, b [rows, cols] f32 row-major on the device (rows = calibration tokens); h, d
// [cols, cols] f32. One CTA of 256 threads per 128 x 128 output tile (bi, bj): for the Hessian
// only the tiles bj <= bi of the lower triangle (each written with its mirror), for the cross
// product all of them. Tokens go through shared memory 8 at a time (both operands are slices
// along the contiguous dimension, so loads are coalesced and need no transpose), the next slice
// is prefetched into registers while the current one is multiplied. Each thread owns an 8 x 8
// block of the tile (rows ty*4+{0..3} and 64+ty*4+{0..3}, likewise columns) and accumulates with
// fused multiply-adds in f32 over the whole batch, then writes beta * h + alpha * acc.
// Bytes moved per batch: each tile reads 2 * 128 * rows floats (from L2 after the first tile
// of a column block) and writes 128^2 floats (twice for mirrored Hessian tiles); flops:
// 2 * rows * 128^2 per tile. Throughput is bound by the FMA pipes: ~8 FMAs per shared-memory
// float loaded.
#include <cuda_runtime.h>

#include <cmath>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../gptq_backend.hpp"
#include "check.cuh"

namespace fp4::cuda {

namespace {

constexpr int kTile = 128;
constexpr int kK = 8;
constexpr int kThreads = 256;

// kSym: x^T x from the lower triangle of tiles (a == b); otherwise a^T b over every tile.
template <bool kSym>
__global__ void __launch_bounds__(kThreads, 2)
    gram_kernel(const float *__restrict__ a, const float *__restrict__ b, int64_t rows,
                int64_t cols, float *__restrict__ h, float alpha, float beta) {
  const int64_t t = blockIdx.x;
  int64_t bi, bj;
  if constexpr (kSym) {
    // Tile index -> (bi, bj), bj <= bi, row-major over the lower triangle.
    bi = int64_t((sqrt(8.0 * double(t) + 1.0) - 1.0) / 2.0);
    while (bi * (bi + 1) / 2 > t) bi--;
    while ((bi + 1) * (bi + 2) / 2 <= t) bi++;
    bj = t - bi * (bi + 1) / 2;
  } else {
    const int64_t nb = (cols + kTile - 1) / kTile;
    bi = t / nb;
    bj = t % nb;
  }
  const int64_t i0 = bi * kTile, j0 = bj * kTile;

  __shared__ __align__(16) float As[kK][kTile];
  __shared__ __align__(16) float Bs[kK][kTile];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  // Loader: element l of this thread is (k = tid / 128 + 2 l, c = tid % 128), l = 0..3.
  const int lc = tid % kTile, lk = tid / kTile;
  const bool ai = i0 + lc < cols, bjv = j0 + lc < cols;
  float ra[4], rb[4];
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int l = 0; l < 4; l++) {
      const int64_t k = k0 + lk + 2 * l;
      const bool in = k < rows;
      ra[l] = in && ai ? a[k * cols + i0 + lc] : 0.0f;
      rb[l] = in && bjv ? b[k * cols + j0 + lc] : 0.0f;
    }
  };
  float acc[8][8];
#pragma unroll
  for (int m = 0; m < 8; m++)
#pragma unroll
    for (int n = 0; n < 8; n++) acc[m][n] = 0.0f;

  load(0);
  for (int64_t k0 = 0; k0 < rows; k0 += kK) {
#pragma unroll
    for (int l = 0; l < 4; l++) {
      As[lk + 2 * l][lc] = ra[l];
      Bs[lk + 2 * l][lc] = rb[l];
    }
    __syncthreads();
    if (k0 + kK < rows) load(k0 + kK);
#pragma unroll
    for (int kk = 0; kk < kK; kk++) {
      const float4 a0 = *reinterpret_cast<const float4 *>(&As[kk][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4 *>(&As[kk][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4 *>(&Bs[kk][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4 *>(&Bs[kk][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int m = 0; m < 8; m++)
#pragma unroll
        for (int n = 0; n < 8; n++) acc[m][n] = __fmaf_rn(a[m], b[n], acc[m][n]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int m = 0; m < 8; m++) {
    const int64_t i = i0 + (m < 4 ? ty * 4 + m : 64 + ty * 4 + m - 4);
#pragma unroll
    for (int n = 0; n < 8; n++) {
      const int64_t j = j0 + (n < 4 ? tx * 4 + n : 64 + tx * 4 + n - 4);
      if (i >= cols || j >= cols || (kSym && j > i)) continue;
      // -fmad=false keeps these two products and the sum separate, as on the CPU.
      const float v = beta == 0.0f ? alpha * acc[m][n] : beta * h[i * cols + j] + alpha * acc[m][n];
      h[i * cols + j] = v;
      if (kSym) h[j * cols + i] = v;
    }
  }
}

__global__ void any_bad_kernel(const float *p, int64_t n, bool negative_bad, int *flag) {
  int bad = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = p[i];
    if (!isfinite(v) || (negative_bad && v < 0.0f)) bad = 1;
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flag, 1);
}

}  // namespace

fp4_status syrk_f32(const float *x, int64_t rows, int64_t cols, float *h, float alpha,
                    float beta) {
  const int64_t nb = (cols + kTile - 1) / kTile;
  const int64_t tiles = nb * (nb + 1) / 2;
  if (tiles > 0x7fffffff)
    return fp4::fail(FP4_ERR_INVALID_ARGUMENT, "gptq: %lld in-features are too many for the CUDA "
                     "Hessian kernel", (long long)cols);
  gram_kernel<true><<<unsigned(tiles), kThreads>>>(x, x, rows, cols, h, alpha, beta);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

fp4_status any_bad(const float *p, int64_t n, bool negative_bad, bool *bad) {
  int *flag = nullptr;
  FP4_CU(cudaMalloc(&flag, sizeof(int)));
  cudaError_t e = cudaMemset(flag, 0, sizeof(int));
  if (e == cudaSuccess) {
    const int64_t blocks = std::min<int64_t>((n + 255) / 256, 4096);
    any_bad_kernel<<<unsigned(blocks > 0 ? blocks : 1), 256>>>(p, n, negative_bad, flag);
    e = cudaGetLastError();
  }
  int host = 0;
  if (e == cudaSuccess) e = cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(flag);
  FP4_CU(e);
  *bad = host != 0;
  return FP4_OK;
}

fp4_status gptq_hessian_add(float *h, const float *x, int64_t rows, int64_t cols, int64_t seen) {
  if (fp4_status s = ensure_device()) return s;
  bool bad = false;
  if (fp4_status s = any_bad(x, rows * cols, false, &bad)) return s;
  if (bad) return fp4::fail(FP4_ERR_NUMERIC, "fp4_gptq_hessian_add: the batch has NaN or Inf values");
  const float beta = float(double(seen) / double(seen + rows));
  const float alpha = float(2.0 / double(seen + rows));
  if (fp4_status s = syrk_f32(x, rows, cols, h, alpha, beta)) return s;
  FP4_CU(sync_library());
  return FP4_OK;
}

fp4_status gptq_cross_add(float *d, const float *a, const float *b, int64_t rows, int64_t cols,
                          int64_t seen) {
  if (fp4_status s = ensure_device()) return s;
  bool bad_a = false, bad_b = false;
  if (fp4_status s = any_bad(a, rows * cols, false, &bad_a)) return s;
  if (fp4_status s = any_bad(b, rows * cols, false, &bad_b)) return s;
  if (bad_a || bad_b)
    return fp4::fail(FP4_ERR_NUMERIC, "fp4_gptq_cross_add: the batch has NaN or Inf values");
  const int64_t nb = (cols + kTile - 1) / kTile;
  if (nb * nb > 0x7fffffff)
    return fp4::fail(FP4_ERR_INVALID_ARGUMENT, "gptq: %lld in-features are too many for the CUDA "
                     "cross-product kernel", (long long)cols);
  const float beta = float(double(seen) / double(seen + rows));
  const float alpha = float(2.0 / double(seen + rows));
  gram_kernel<false><<<unsigned(nb * nb), kThreads>>>(a, b, rows, cols, d, alpha, beta);
  FP4_CU_LAUNCH();
  FP4_CU(sync_library());
  return FP4_OK;
}

}  // namespace fp4::cuda
