// Greedy token choice (fp4lab/decode.h): one block per row scans the row once (rows * n * 4
// bytes); each thread keeps its best (value, first index), then the block reduces them, ties
// going to the lower index and NaNs never winning, as the CPU twin.
#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "stream.cuh"

namespace fp4::cuda {
namespace {

constexpr int kThreads = 512;

// Whether (va, ia) beats (vb, ib); an index < 0 marks "nothing seen".
__device__ bool better(float va, int32_t ia, float vb, int32_t ib) {
  if (ia < 0) return false;
  if (ib < 0) return true;
  return va > vb || (va == vb && ia < ib);
}

__global__ void argmax_kernel(const float *x, int64_t n, int32_t *out) {
  __shared__ float sv[kThreads];
  __shared__ int32_t si[kThreads];
  const float *xr = x + blockIdx.x * n;
  float bv = 0.0f;
  int32_t bi = -1;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float v = xr[i];
    if (!isnan(v) && better(v, int32_t(i), bv, bi)) {
      bv = v;
      bi = int32_t(i);
    }
  }
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride &&
        better(sv[threadIdx.x + stride], si[threadIdx.x + stride], sv[threadIdx.x], si[threadIdx.x])) {
      sv[threadIdx.x] = sv[threadIdx.x + stride];
      si[threadIdx.x] = si[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = si[0] < 0 ? 0 : si[0];
}

}  // namespace

fp4_status dec_argmax(const float *x, int64_t rows, int64_t n, int32_t *out) {
  if (fp4_status s = ensure_device()) return s;
  FP4_REQUIRE(rows < (int64_t(1) << 31), "fp4_dec_argmax: too many rows for CUDA");
  argmax_kernel<<<unsigned(rows), kThreads, 0, launch_stream()>>>(x, n, out);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace fp4::cuda
