// Next-token negative log-likelihood on the GPU (fp4_nll; twin: nll_rows in
// cuda/src/cpu/model_ops.cpp): one 256-thread block per row reads its `vocab` logits twice (max,
// then sum of exp(l - max) in f64) and writes one float, so evaluation downloads 4 bytes per token
// instead of 4 * vocab. A target out of range sets a flag the host reads back once per call.
#include <cuda_runtime.h>

#include <cmath>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "check.cuh"
#include "stream.cuh"

namespace fp4::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void nll_kernel(const float *__restrict__ logits, const int32_t *__restrict__ targets,
                           float *__restrict__ nll, int64_t vocab, int *bad) {
  __shared__ float smax[kThreads / 32];
  __shared__ double ssum[kThreads / 32];
  const float *l = logits + blockIdx.x * vocab;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) mx = fmaxf(mx, l[i]);
  for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) smax[warp] = mx;
  __syncthreads();
  mx = smax[0];
  for (int w = 1; w < kThreads / 32; w++) mx = fmaxf(mx, smax[w]);
  double sum = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) sum += exp(double(l[i]) - double(mx));
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) ssum[warp] = sum;
  __syncthreads();
  if (threadIdx.x != 0) return;
  sum = 0;
  for (int w = 0; w < kThreads / 32; w++) sum += ssum[w];
  const int32_t t = targets[blockIdx.x];
  if (t < 0 || t >= vocab) {
    atomicExch(bad, 1);
    nll[blockIdx.x] = NAN;
    return;
  }
  nll[blockIdx.x] = float(log(sum) + double(mx) - double(l[t]));
}

}  // namespace

fp4_status nll(const float *logits, const int32_t *targets, float *out, int64_t rows,
               int64_t vocab) {
  if (fp4_status s = ensure_device()) return s;
  FP4_REQUIRE(rows < (int64_t(1) << 31), "fp4_nll: %lld rows is too many for one call",
              (long long)rows);
  int *bad = nullptr;
  FP4_CU(cudaMallocAsync(&bad, sizeof(int), launch_stream()));
  FP4_CU(cudaMemsetAsync(bad, 0, sizeof(int), launch_stream()));
  nll_kernel<<<unsigned(rows), kThreads, 0, launch_stream()>>>(logits, targets, out, vocab, bad);
  cudaError_t launched = cudaGetLastError();
  int flag = 0;
  cudaError_t copied = cudaMemcpyAsync(&flag, bad, sizeof(int), cudaMemcpyDeviceToHost,
                                       launch_stream());
  cudaFreeAsync(bad, launch_stream());
  FP4_CU(launched);
  FP4_CU(copied);
  FP4_CU(cudaStreamSynchronize(launch_stream()));
  FP4_REQUIRE(flag == 0, "fp4_nll: a target is outside the vocabulary [0, %lld)", (long long)vocab);
  return FP4_OK;
}

}  // namespace fp4::cuda
