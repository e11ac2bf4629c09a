// Core entry points: version, errors, device dispatch for memory, smoke-test sum.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "../error.hpp"

namespace {
std::mutex g_error_mutex;
std::string g_last_error;
}  // namespace

namespace fp4 {
fp4_status fail(fp4_status code, const char *fmt, ...) {
  char buf[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  std::lock_guard<std::mutex> lock(g_error_mutex);
  g_last_error = buf;
  return code;
}
}  // namespace fp4

static fp4_status check_device(int32_t device) {
  if (device == FP4_DEVICE_CPU) return FP4_OK;
  if (device == FP4_DEVICE_CUDA) {
    FP4_CUDA_ONLY(return fp4::cuda::ensure_device());
  }
  return fp4::fail(FP4_ERR_INVALID_ARGUMENT, "unknown device id %d (0 = cpu, 1 = cuda)", device);
}

FP4_API int32_t fp4_abi_version(void) { return FP4_ABI_VERSION; }

FP4_API int32_t fp4_last_error(char *buf, int32_t cap) {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  if (buf && cap > 0) {
    size_t n = g_last_error.size() < size_t(cap - 1) ? g_last_error.size() : size_t(cap - 1);
    std::memcpy(buf, g_last_error.data(), n);
    buf[n] = 0;
  }
  return int32_t(g_last_error.size());
}

FP4_API int32_t fp4_has_cuda_build(void) {
#ifdef FP4LAB_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

FP4_API fp4_status fp4_cuda_device_count(int32_t *count) {
  FP4_REQUIRE(count, "fp4_cuda_device_count: count is null");
  *count = 0;
  FP4_CUDA_ONLY(return fp4::cuda::device_count(count));
}

FP4_API fp4_status fp4_cuda_device_name(int32_t index, char *buf, int32_t cap) {
  FP4_REQUIRE(buf && cap > 0, "fp4_cuda_device_name: empty buffer");
  buf[0] = 0;
  FP4_CUDA_ONLY(return fp4::cuda::device_name(index, buf, cap));
}

FP4_API fp4_status fp4_alloc(int32_t device, uint64_t bytes, void **out) {
  FP4_GUARD({
    FP4_REQUIRE(out, "fp4_alloc: out is null");
    *out = nullptr;
    if (fp4_status s = check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      // 64-byte alignment keeps vector loads aligned; at least one byte so the pointer is unique.
      size_t size = (bytes + 63) / 64 * 64;
      void *p = std::aligned_alloc(64, size ? size : 64);
      if (!p) return fp4::fail(FP4_ERR_OUT_OF_MEMORY, "out of host memory allocating %llu bytes",
                               (unsigned long long)bytes);
      *out = p;
      return FP4_OK;
    }
    FP4_CUDA_ONLY(return fp4::cuda::alloc(bytes, out));
  })
}

FP4_API fp4_status fp4_free(int32_t device, void *ptr) {
  FP4_GUARD({
    if (!ptr) return FP4_OK;
    if (device == FP4_DEVICE_CPU) {
      std::free(ptr);
      return FP4_OK;
    }
    if (fp4_status s = check_device(device)) return s;
    FP4_CUDA_ONLY(return fp4::cuda::free(ptr));
  })
}

FP4_API fp4_status fp4_memcpy(int32_t device, void *dst, const void *src, uint64_t bytes,
                              int32_t kind) {
  FP4_GUARD({
    FP4_REQUIRE(kind >= 0 && kind <= 2, "fp4_memcpy: kind %d is not 0 (h2d), 1 (d2h) or 2 (d2d)", kind);
    if (bytes == 0) return FP4_OK;
    FP4_REQUIRE(dst && src, "fp4_memcpy: null pointer");
    if (fp4_status s = check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      std::memmove(dst, src, bytes);
      return FP4_OK;
    }
    FP4_CUDA_ONLY(return fp4::cuda::memcpy(dst, src, bytes, kind));
  })
}

FP4_API fp4_status fp4_cuda_memory(uint64_t *free_bytes, uint64_t *total_bytes) {
  FP4_GUARD({
    FP4_REQUIRE(free_bytes && total_bytes, "fp4_cuda_memory: null pointer");
    FP4_CUDA_ONLY(return fp4::cuda::memory(free_bytes, total_bytes));
  })
}

static fp4_status cast_cpu(const void *x, int32_t x_dtype, void *y, int32_t y_dtype,
                           uint64_t n) {
#pragma omp parallel for schedule(static) if (n > (uint64_t(1) << 16))
  for (int64_t i = 0; i < int64_t(n); i++) fp4::dec::store(y, y_dtype, i, fp4::dec::load(x, x_dtype, i));
  return FP4_OK;
}

FP4_API fp4_status fp4_cast(int32_t device, const void *x, int32_t x_dtype, void *y,
                            int32_t y_dtype, uint64_t n) {
  FP4_GUARD({
    for (int32_t d : {x_dtype, y_dtype})
      FP4_REQUIRE(d == FP4_DTYPE_F32 || d == FP4_DTYPE_BF16,
                  "fp4_cast: dtype %d is not f32 (0) or bf16 (2)", d);
    if (n == 0) return FP4_OK;
    FP4_REQUIRE(x && y, "fp4_cast: null pointer");
    if (fp4_status s = check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) return cast_cpu(x, x_dtype, y, y_dtype, n);
    FP4_CUDA_ONLY(return fp4::cuda::cast(x, x_dtype, y, y_dtype, n));
  })
}

FP4_API fp4_status fp4_synchronize(int32_t device) {
  if (fp4_status s = check_device(device)) return s;
  if (device == FP4_DEVICE_CPU) return FP4_OK;
  FP4_CUDA_ONLY(return fp4::cuda::synchronize());
}

FP4_API fp4_status fp4_noop(void) { return FP4_OK; }

FP4_API fp4_status fp4_sum_f32(int32_t device, const float *x, uint64_t n, double *out) {
  FP4_GUARD({
    FP4_REQUIRE(out, "fp4_sum_f32: out is null");
    FP4_REQUIRE(x || n == 0, "fp4_sum_f32: x is null");
    if (fp4_status s = check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      double acc = 0;
      for (uint64_t i = 0; i < n; i++) acc += x[i];
      *out = acc;
      return FP4_OK;
    }
    FP4_CUDA_ONLY(return fp4::cuda::sum_f32(x, n, out));
  })
}
