// Host-side declarations of the CUDA backend (implemented in cuda/src/cuda/*.cu). Only
// referenced when FP4LAB_WITH_CUDA is defined.
#pragma once
#include <cstdint>
#include "fp4lab.h"

namespace fp4::cuda {

fp4_status device_count(int32_t *count);
fp4_status device_name(int32_t index, char *buf, int32_t cap);
// Ensures a usable device is current; returns FP4_ERR_NO_DEVICE with the driver's reason if not.
fp4_status ensure_device();
fp4_status alloc(uint64_t bytes, void **out);
fp4_status free(void *ptr);
fp4_status memcpy(void *dst, const void *src, uint64_t bytes, int32_t kind);
fp4_status synchronize();
fp4_status cast(const void *x, int32_t x_dtype, void *y, int32_t y_dtype, uint64_t n);
// fp4_nll on device memory (cuda/src/cuda/nll.cu).
fp4_status nll(const float *logits, const int32_t *targets, float *nll, int64_t rows,
               int64_t vocab);
fp4_status memory(uint64_t *free_bytes, uint64_t *total_bytes);
fp4_status sum_f32(const float *x, uint64_t n, double *out);
// fp4lab/graph.h (cuda/src/cuda/graph.cu).
fp4_status graph_begin();
fp4_status graph_end(void **graph);
fp4_status graph_launch(void *graph);
fp4_status graph_destroy(void *graph);

}  // namespace fp4::cuda

// Number formats (cuda/src/cuda/quantize.cu, hadamard.cu, rotate_quantize.cu); arguments are
// validated by the entry points in cuda/src/cpu/quantize.cpp and hadamard.cpp.
namespace fp4::cuda {

fp4_status encode(int32_t codec, const float *x, uint64_t n, const uint32_t *random,
                  uint8_t *codes);
fp4_status decode(int32_t codec, const uint8_t *codes, uint64_t n, float *out);
fp4_status quantize(const fp4_quant_spec &spec, int32_t dtype, const void *x, uint64_t rows,
                    uint64_t cols, uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                    float *tensor_scale);
fp4_status dequantize(const fp4_quant_spec &spec, const uint8_t *codes, const uint8_t *scales,
                      const uint8_t *zeros, const float *tensor_scale, uint64_t rows,
                      uint64_t cols, int32_t out_dtype, void *out);
// fp4_dequantize without waiting for the device (dequantize waits, to report launch errors).
fp4_status dequantize_async(const fp4_quant_spec &spec, const uint8_t *codes,
                            const uint8_t *scales, const uint8_t *zeros,
                            const float *tensor_scale, uint64_t rows, uint64_t cols,
                            int32_t out_dtype, void *out);
// fp4_hadamard without waiting for the device (hadamard waits, to report launch errors).
fp4_status hadamard_async(int32_t dtype, const void *x, int32_t out_dtype, void *out,
                          uint64_t rows, uint64_t cols, int32_t block, int32_t inverse,
                          int32_t has_seed, uint64_t seed);
fp4_status fake_quantize(const fp4_quant_spec &spec, int32_t dtype, const void *x, uint64_t rows,
                         uint64_t cols, int32_t block, int32_t has_seed, uint64_t seed,
                         uint8_t *codes, uint8_t *scales, uint8_t *zeros, float *tensor_scale,
                         int32_t out_dtype, void *out);
fp4_status hadamard(int32_t dtype, const void *x, int32_t out_dtype, void *out, uint64_t rows,
                    uint64_t cols, int32_t block, int32_t inverse, int32_t has_seed,
                    uint64_t seed);
fp4_status rotate_quantize(const fp4_quant_spec &spec, int32_t dtype, const void *x,
                           uint64_t rows, uint64_t cols, int32_t block, int32_t has_seed,
                           uint64_t seed, uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                           float *tensor_scale);
fp4_status bench_formats(int32_t op, const fp4_quant_spec *spec, int32_t dtype, const void *x,
                         uint64_t rows, uint64_t cols, int32_t block, void *out, uint8_t *codes,
                         uint8_t *scales, uint8_t *zeros, float *tensor_scale, int32_t iters,
                         double *seconds);

}  // namespace fp4::cuda

// Shared by the formats .cu files.
namespace fp4::cuda {

// Whole-tensor reductions: first non-finite linear index (~0 when none) and the float bits of
// max |x|, -min(x, 0) and max(x, 0).
struct Stats {
  unsigned long long bad;
  unsigned amax, neg_lo, hi, pad;
};
// FP4_ERR_NUMERIC naming element `index` of the device tensor x (its value and row, col).
fp4_status report_bad(const void *x, int32_t dtype, uint64_t index, uint64_t cols);
// fp4_quantize on device data; `check` = false skips reading back the non-finite flag
// (benchmarks), so the call does not synchronize.
fp4_status quantize_unchecked(const fp4_quant_spec &spec, int32_t dtype, const void *x,
                              uint64_t rows, uint64_t cols, uint8_t *codes, uint8_t *scales,
                              uint8_t *zeros, float *tensor_scale, bool check);
// Device array of the ±1 Hadamard column signs of `seed` (cols floats); the caller cudaFrees it.
fp4_status hadamard_signs(uint64_t cols, uint64_t seed, float **out);

}  // namespace fp4::cuda
namespace fp4::cuda {
// fp4_rotate_quantize on device data; `check` as for quantize_unchecked.
fp4_status rotate_quantize_impl(const fp4_quant_spec &spec, int32_t dtype, const void *x,
                                uint64_t rows, uint64_t cols, int32_t block, int32_t has_seed,
                                uint64_t seed, uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                                float *tensor_scale, bool check);
}  // namespace fp4::cuda
