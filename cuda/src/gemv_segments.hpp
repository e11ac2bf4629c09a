// Host-side declaration of the multi-segment W4A16 GEMV (cuda/src/cuda/fp4_gemv.cu): several
// weight matrices stacked by rows in one launch, each row segment with its own NVFP4 tensor
// scale (fp4_gemm_segments of fp4lab/gemm.h). Kept out of gemm_backend.hpp so that the batch > 16
// GEMM does not depend on it. Only referenced when FP4LAB_WITH_CUDA is set.
#pragma once
#include <cstdint>

#include "fp4lab.h"

namespace fp4::cuda {

// Row segments one launch takes (q/k/v is 3).
constexpr int kMaxGemvSegments = 4;

// Enqueues y = x W^T on the decode stream for batch <= kGemvMaxBatch; rows [ends[i - 1],
// ends[i]) use tensor_scales[i] (ends ascending, ends[segments - 1] = n).
fp4_status gemm_segments(int32_t format, const uint16_t *x, const uint8_t *codes,
                         const uint8_t *scales, const float *tensor_scales, const int64_t *ends,
                         int32_t segments, uint16_t *y, int64_t batch, int64_t n, int64_t k);

}  // namespace fp4::cuda
