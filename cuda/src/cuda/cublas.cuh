// The runtime-loaded cuBLAS of cublas_runtime.cu, for the .cu files that call it.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "fp4lab.h"

namespace fp4::cuda {

// Whether cuBLAS could be loaded; *where = its path, or why not.
bool cublas_loaded(std::string *where);

// y[rows, n] = x[rows, k] w[n, k]^T on `stream`: x, w BF16; y BF16 or FP32 (y_dtype); FP32
// accumulation. FP4_ERR_CUDA with the reason when cuBLAS is not loaded.
fp4_status cublas_linear_bf16(const void *x, const void *w, void *y, int32_t y_dtype,
                              int64_t rows, int64_t n, int64_t k, cudaStream_t stream);

}  // namespace fp4::cuda
