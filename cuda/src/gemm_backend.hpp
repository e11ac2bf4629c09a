// Host-side declarations of the CUDA W4A16 kernels and their timing helpers (cuda/src/cuda/
// fp4_gemv.cu, fp4_gemm.cu, gemm_bench.cu). Arguments are validated by the C entry points in
// cuda/src/cpu/fp4_gemm.cpp before they get here. Only referenced when FP4LAB_WITH_CUDA is set.
#pragma once
#include <cstdint>

#include "fp4lab.h"

namespace fp4::cuda {

// Batches up to kGemvMaxBatch run the GEMV kernel (weights streamed once, activations from L1);
// larger batches the tiled GEMM kernel (activations staged in shared memory).
constexpr int64_t kGemvMaxBatch = 16;

// Enqueues y = x W^T on `stream` (nullptr = default stream); no synchronisation.
fp4_status fp4_gemv_launch(int32_t format, const uint16_t *x, const uint8_t *codes,
                           const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                           int64_t n, int64_t k, void *stream);
fp4_status fp4_gemm_launch(int32_t format, const uint16_t *x, const uint8_t *codes,
                           const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                           int64_t n, int64_t k, void *stream);

// fp4_gemm_set_kernels's current set (FP4_GEMM_KERNELS_*), or -1 when $FP4LAB_GEMM_WGMMA named
// none and nothing was set since (cpu/fp4_gemm.cpp).
int gemm_kernels();

// The lean wgmma candidates of fp4_gemm_lean.cu for every Hopper batch > kGemvMaxBatch: `set`
// FP4_GEMM_KERNELS_LEAN or _LEAN3 (fp4lab/gemm.h).
fp4_status fp4_gemm_lean_launch(int set, int32_t format, const uint16_t *x,
                                const uint8_t *codes, const uint8_t *scales, float tensor_scale,
                                uint16_t *y, int64_t batch, int64_t n, int64_t k,
                                void *stream);

fp4_status gemm(int32_t format, const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                float tensor_scale, uint16_t *y, int64_t batch, int64_t n, int64_t k);
fp4_status gemm_bench(int32_t format, const uint16_t *x, const uint8_t *codes,
                      const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                      int64_t n, int64_t k, int32_t copies, int32_t reps, int32_t nsamples,
                      float *samples);
fp4_status copy_bench(void *dst, const void *src, uint64_t bytes, int32_t reps, int32_t nsamples,
                      float *samples);
fp4_status cublas_bench(const uint16_t *x, const uint16_t *w, uint16_t *y,
                        int64_t batch, int64_t n, int64_t k, int32_t copies, int32_t reps,
                        int32_t nsamples, float *samples);

}  // namespace fp4::cuda
