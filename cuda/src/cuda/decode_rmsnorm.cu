// RMSNorm of the decode step (fp4lab/decode.h): one block per row; the sum of squares in f64
// (as the CPU twin), then y = w * (x * inv) rounded to y's dtype. Bytes: rows * dim * (4 + y
// element) plus dim weight elements per row (from L2 after the first row).
#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "stream.cuh"

namespace fp4::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rmsnorm_kernel(const float *x, const void *w, int32_t w_dtype, void *y,
                               int32_t y_dtype, int64_t dim, float eps) {
  __shared__ double partial[kThreads / 32];
  const float *xr = x + blockIdx.x * dim;
  double ss = 0;
  for (int64_t d = threadIdx.x; d < dim; d += kThreads) ss += double(xr[d]) * xr[d];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  double total = 0;
  for (int i = 0; i < kThreads / 32; i++) total += partial[i];
  const float inv = float(1.0 / sqrt(double(float(total / double(dim))) + double(eps)));
  for (int64_t d = threadIdx.x; d < dim; d += kThreads)
    fp4::dec::store(y, y_dtype, blockIdx.x * dim + d, fp4::dec::load(w, w_dtype, d) * (xr[d] * inv));
}

}  // namespace

fp4_status dec_rmsnorm(const float *x, const void *w, int32_t w_dtype, void *y, int32_t y_dtype,
                       int64_t rows, int64_t dim, float eps) {
  if (fp4_status s = ensure_device()) return s;
  FP4_REQUIRE(rows < (int64_t(1) << 31), "fp4_dec_rmsnorm: too many rows for CUDA");
  rmsnorm_kernel<<<unsigned(rows), kThreads, 0, launch_stream()>>>(x, w, w_dtype, y, y_dtype, dim, eps);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace fp4::cuda
