// GPTQ pieces shared by the CPU entry points (cuda/src/cpu/gptq.cpp) and the CUDA backend
// (cuda/src/cuda/gptq_*.cu). Kept out of cuda_backend.hpp, which other concerns share.
#pragma once
#include <cstdint>
#include <vector>

#include "fp4lab.h"
#include "formats.hpp"

namespace fp4::gptq {

// Symmetric element codecs GPTQ accepts (no zero points, no unsigned scale formats).
inline bool symmetric_element(int32_t c) {
  return (c >= fmt::CODEC_E2M1 && c <= fmt::CODEC_E5M2) || c == fmt::CODEC_INT4 ||
         c == fmt::CODEC_INT8 || c == fmt::CODEC_MXINT8;
}

// One element of the solve's column loop: the storage bits of v / s (round to nearest even,
// exactly fp4_quantize's rounding) and the dequantized value; s = 0 gives code 0, value 0.
FP4_HD uint32_t round_element(int32_t element, float v, float s, float *q) {
  if (s == 0.0f) {
    *q = 0.0f;
    return 0u;
  }
  const uint32_t bits = fmt::codec_encode(element, v / s, false, 0u);
  *q = fmt::codec_decode(element, bits) * s;
  return bits;
}

// Host part of the solve on both devices: the permuted f64 Hessian with dead inputs masked
// (dead[j] = 1 when H_jj == 0, stored index), damping with bounded retries, and the upper
// Cholesky factor U of the damped H^-1 rounded to f32 ([n, n], processing order). Returns
// FP4_ERR_NUMERIC naming the last damping when every attempt fails.
fp4_status factor(const float *h, int64_t n, const int32_t *perm, double damp, int32_t max_retries,
                  std::vector<float> &u, std::vector<char> &dead, double *abs_damp);

// Wall-clock seconds (steady clock), for the solve's phase timings in info[2..3].
double now_seconds();

}  // namespace fp4::gptq

namespace fp4::cuda {

// fp4_gptq_hessian_add on device memory (arguments validated by the entry point).
fp4_status gptq_hessian_add(float *h, const float *x, int64_t rows, int64_t cols, int64_t seen);

// fp4_gptq_cross_add on device memory (arguments validated by the entry point).
fp4_status gptq_cross_add(float *d, const float *a, const float *b, int64_t rows, int64_t cols,
                          int64_t seen);

// h <- beta * h + alpha * x^T x (full symmetric [cols, cols], written from the lower triangle
// of tiles) for device x [rows, cols]; beta == 0 does not read h. No input checks, no sync.
fp4_status syrk_f32(const float *x, int64_t rows, int64_t cols, float *h, float alpha, float beta);

// Whether any of the n device floats is non-finite, or (negative_bad) negative. Synchronizes.
fp4_status any_bad(const float *p, int64_t n, bool negative_bad, bool *bad);

// fp4_gptq_solve on device memory; perm is the validated host permutation (never null).
fp4_status gptq_solve(float *w, const float *h, int64_t rows, int64_t cols, const float *scales,
                      int32_t group_size, int32_t element, const int32_t *perm, double damp,
                      int32_t block_size, int32_t max_retries, uint8_t *codes, double *info);

// fp4_inverse_cholesky_upper on device memory (cuSOLVER, or the host path when it is missing).
fp4_status inverse_cholesky_upper(const double *a, int64_t n, double *u);

// fp4_cusolver_status: loads cuSOLVER on the first call (thread-safe), then reports.
int32_t cusolver_status(char *buf, int32_t cap);

// The cuSOLVER half of the GPU factorization (cuda/src/cuda/cusolver_runtime.cu). In place on
// device b [n, n] f64 (full symmetric in, the matrix B = J A J): potrf then trtri, so that b's
// row-major lower triangle holds L^-1 with B = L L^T. *pd = false when B is not positive
// definite. Requires cusolver_status() == 1. Synchronizes.
fp4_status lower_inverse_of_cholesky(double *b, int64_t n, bool *pd);

}  // namespace fp4::cuda
