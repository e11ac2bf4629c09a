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
fp4_status sum_f32(const float *x, uint64_t n, double *out);

}  // namespace fp4::cuda
