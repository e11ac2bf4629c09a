// CUDA backend core: device discovery, memory, and a reduction smoke test.
// Every CUDA runtime call is checked; failures become fp4 errors with the runtime's message.
#include <cuda_runtime.h>

#include <cstdio>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "stream.cuh"

namespace fp4::cuda {

fp4_status device_count(int32_t *count) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return fail(FP4_ERR_NO_DEVICE, "no usable CUDA device: %s (%s)", cudaGetErrorString(err),
                cudaGetErrorName(err));
  }
  if (n == 0) return fail(FP4_ERR_NO_DEVICE, "no usable CUDA device: the driver reports 0 devices");
  *count = n;
  return FP4_OK;
}

fp4_status ensure_device() {
  // The first successful check is cached: every later call on the hot path is a load.
  static int state = 0;  // 0 unknown, 1 ok
  if (state == 1) return FP4_OK;
  int32_t n = 0;
  if (fp4_status s = device_count(&n)) return s;
  FP4_CU(cudaSetDevice(0));
  state = 1;
  return FP4_OK;
}

fp4_status device_name(int32_t index, char *buf, int32_t cap) {
  int32_t n = 0;
  if (fp4_status s = device_count(&n)) return s;
  FP4_REQUIRE(index >= 0 && index < n, "CUDA device %d does not exist (%d present)", index, n);
  cudaDeviceProp p;
  FP4_CU(cudaGetDeviceProperties(&p, index));
  snprintf(buf, size_t(cap), "%s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor,
           p.multiProcessorCount, double(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return FP4_OK;
}

fp4_status alloc(uint64_t bytes, void **out) {
  cudaError_t err = cudaMalloc(out, bytes ? bytes : 1);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return fail(FP4_ERR_OUT_OF_MEMORY, "out of GPU memory allocating %llu bytes (%llu of %llu free)",
                (unsigned long long)bytes, (unsigned long long)free_b, (unsigned long long)total_b);
  }
  FP4_CU(err);
  return FP4_OK;
}

fp4_status free(void *ptr) {
  FP4_CU(cudaFree(ptr));
  return FP4_OK;
}

fp4_status memcpy(void *dst, const void *src, uint64_t bytes, int32_t kind) {
  static const cudaMemcpyKind kinds[3] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                          cudaMemcpyDeviceToDevice};
  FP4_CU(cudaMemcpy(dst, src, bytes, kinds[kind]));
  return FP4_OK;
}

fp4_status memory(uint64_t *free_bytes, uint64_t *total_bytes) {
  if (fp4_status s = ensure_device()) return s;
  size_t f = 0, t = 0;
  FP4_CU(cudaMemGetInfo(&f, &t));
  *free_bytes = f;
  *total_bytes = t;
  return FP4_OK;
}

fp4_status synchronize() {
  FP4_CU(sync_library());
  return FP4_OK;
}

// Elementwise dtype conversion on the decode ops' stream, grid-stride: 2 + 4 bytes per element for
// bf16 -> f32 (the Hessian capture of calibration reads bf16 activations as f32).
__global__ void cast_kernel(const void *x, int32_t x_dtype, void *y, int32_t y_dtype, uint64_t n) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n;
       i += uint64_t(gridDim.x) * blockDim.x)
    fp4::dec::store(y, y_dtype, int64_t(i), fp4::dec::load(x, x_dtype, int64_t(i)));
}

fp4_status cast(const void *x, int32_t x_dtype, void *y, int32_t y_dtype, uint64_t n) {
  if (fp4_status s = ensure_device()) return s;
  const uint64_t blocks = (n + 255) / 256;
  cast_kernel<<<unsigned(blocks < 8192 ? blocks : 8192), 256, 0, launch_stream()>>>(x, x_dtype, y,
                                                                                  y_dtype, n);
  FP4_CU(cudaGetLastError());
  return FP4_OK;
}

// One block, strided partial sums in double, then a shared-memory tree: exact order is not the
// CPU's, so the test compares within a bound, not bit for bit.
__global__ void sum_f32_kernel(const float *x, uint64_t n, double *out) {
  __shared__ double partial[256];
  double acc = 0;
  for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = partial[0];
}

fp4_status sum_f32(const float *x, uint64_t n, double *out) {
  double *d_out = nullptr;
  FP4_CU(cudaMalloc(&d_out, sizeof(double)));
  sum_f32_kernel<<<1, 256>>>(x, n, d_out);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaMemcpy(out, d_out, sizeof(double), cudaMemcpyDeviceToHost);
  cudaFree(d_out);
  FP4_CU(err);
  return FP4_OK;
}

}  // namespace fp4::cuda
