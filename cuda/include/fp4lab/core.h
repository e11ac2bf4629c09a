/* Core of the fp4lab C ABI: version, errors, devices, memory. */
#ifndef FP4LAB_CORE_H
#define FP4LAB_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define FP4_EXTERN_C extern "C"
#else
#define FP4_EXTERN_C
#endif
#define FP4_API FP4_EXTERN_C __attribute__((visibility("default")))

/* Bumped whenever a signature in any header under fp4lab/ changes; ffi/ refuses a mismatched
 * library. */
#define FP4_ABI_VERSION 7

typedef int32_t fp4_status;
enum {
  FP4_OK = 0,
  FP4_ERR_INVALID_ARGUMENT = 1,
  FP4_ERR_OUT_OF_MEMORY = 2,
  FP4_ERR_NO_CUDA_BUILD = 3, /* library built without nvcc */
  FP4_ERR_NO_DEVICE = 4,     /* no driver or no GPU */
  FP4_ERR_CUDA = 5,          /* a CUDA runtime call failed */
  FP4_ERR_NUMERIC = 6,       /* NaN/Inf input, matrix not positive definite, ... */
  FP4_ERR_INTERNAL = 7
};

enum { FP4_DEVICE_CPU = 0, FP4_DEVICE_CUDA = 1 };

/* Element types of tensors crossing the ABI. */
enum {
  FP4_DTYPE_F32 = 0,
  FP4_DTYPE_F16 = 1,
  FP4_DTYPE_BF16 = 2,
  FP4_DTYPE_U8 = 3,
  FP4_DTYPE_I32 = 4,
  FP4_DTYPE_I8 = 5,
  FP4_DTYPE_I16 = 6,
  FP4_DTYPE_I64 = 7,
  FP4_DTYPE_F64 = 8
};

FP4_API int32_t fp4_abi_version(void);

/* Copies the most recent error message (NUL-terminated, truncated to cap) into buf and returns
 * its full length. The message is process-wide, so nonblocking calls on worker threads report
 * their errors too. */
FP4_API int32_t fp4_last_error(char *buf, int32_t cap);

/* 1 when the library was compiled with the CUDA backend, else 0. */
FP4_API int32_t fp4_has_cuda_build(void);

/* Number of CUDA devices; FP4_ERR_NO_DEVICE (with the driver's reason) when there are none. */
FP4_API fp4_status fp4_cuda_device_count(int32_t *count);

/* Writes a one-line description of CUDA device `index` (name, SMs, memory) into buf. */
FP4_API fp4_status fp4_cuda_device_name(int32_t index, char *buf, int32_t cap);

/* Free and total memory of the current CUDA device, in bytes (cudaMemGetInfo). */
FP4_API fp4_status fp4_cuda_memory(uint64_t *free_bytes, uint64_t *total_bytes);

FP4_API fp4_status fp4_alloc(int32_t device, uint64_t bytes, void **out);
FP4_API fp4_status fp4_free(int32_t device, void *ptr);
/* Copies between host and device memory; `kind` 0 = host->device, 1 = device->host,
 * 2 = device->device. On the CPU device every kind is a memcpy. */
FP4_API fp4_status fp4_memcpy(int32_t device, void *dst, const void *src, uint64_t bytes, int32_t kind);
/* Waits for the library's work on the device, all of which runs on the legacy default stream
 * (so a graph another thread is recording meanwhile neither blocks it nor makes it fail). */
FP4_API fp4_status fp4_synchronize(int32_t device);
/* y[i] = x[i] converted from x_dtype to y_dtype (f32 or bf16; f32 -> bf16 rounds to nearest
 * even, bf16 -> f32 is exact), n elements; x and y must not overlap. On CUDA it is ordered with
 * the decode ops (same stream). */
FP4_API fp4_status fp4_cast(int32_t device, const void *x, int32_t x_dtype, void *y,
                            int32_t y_dtype, uint64_t n);

/* Does nothing; used to measure the FFI call overhead. */
FP4_API fp4_status fp4_noop(void);

/* Sums n floats (in order, in double) into *out: a tiny numeric smoke test of a backend. */
FP4_API fp4_status fp4_sum_f32(int32_t device, const float *x, uint64_t n, double *out);

#endif
