// Benchmark timing of the formats kernels between CUDA events (fp4_bench_formats): one warm-up
// run, then `iters` runs without host synchronization in between (the non-finite read-back of
// the API calls is skipped), and the device-to-device copy of the same input bytes as the
// bandwidth reference.
#include <cuda_runtime.h>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "check.cuh"

namespace fp4::cuda {

fp4_status bench_formats(int32_t op, const fp4_quant_spec *spec, int32_t dtype, const void *x,
                         uint64_t rows, uint64_t cols, int32_t block, void *out, uint8_t *codes,
                         uint8_t *scales, uint8_t *zeros, float *tensor_scale, int32_t iters,
                         double *seconds) {
  const uint64_t bytes = rows * cols * (dtype == FP4_DTYPE_BF16 ? 2 : 4);
  auto run = [&]() -> fp4_status {
    if (op == 0) {
      FP4_CU(cudaMemcpyAsync(out, x, bytes, cudaMemcpyDeviceToDevice, 0));
      return FP4_OK;
    }
    if (op == 1) {
      return quantize_unchecked(*spec, dtype, x, rows, cols, codes, scales, zeros, tensor_scale,
                                false);
    }
    return rotate_quantize_impl(*spec, dtype, x, rows, cols, block, 0, 0, codes, scales, zeros,
                                tensor_scale, false);
  };
  if (fp4_status s = run()) return s;
  FP4_CU(cudaDeviceSynchronize());
  cudaEvent_t t0, t1;
  FP4_CU(cudaEventCreate(&t0));
  FP4_CU(cudaEventCreate(&t1));
  fp4_status status = FP4_OK;
  cudaEventRecord(t0, 0);
  for (int32_t i = 0; i < iters && status == FP4_OK; i++) status = run();
  cudaEventRecord(t1, 0);
  cudaError_t e = cudaEventSynchronize(t1);
  float ms = 0;
  if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, t0, t1);
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  if (status) return status;
  FP4_CU(e);
  *seconds = double(ms) * 1e-3 / iters;
  return FP4_OK;
}

}  // namespace fp4::cuda
