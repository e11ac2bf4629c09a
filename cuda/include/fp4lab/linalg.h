/* Dense f64 factorizations behind the GPTQ solve, exposed so they can be checked directly.
 * On FP4_DEVICE_CUDA they run in cuSOLVER, which this library does not link: it is loaded at run
 * time (dlopen) from FP4LAB_CUSOLVER (a path to libcusolver.so.*) or else the usual places; when
 * it cannot be loaded, the CUDA backend factors on the host instead (fp4_cusolver_status says
 * which, and why). */
#ifndef FP4LAB_LINALG_H
#define FP4LAB_LINALG_H

#include "core.h"

/* Upper Cholesky factor U of A^-1 (A^-1 = U^T U, U upper triangular) of a symmetric positive
 * definite A, computed as J chol(J A J)^-1 J (J the reversal permutation) without forming A^-1.
 *   a: [n, n] f64 row-major, full symmetric (read only); u: [n, n] f64 out, zeros below the
 *   diagonal. Device memory on CUDA.
 * A that is not positive definite (or whose factor is not finite) fails with FP4_ERR_NUMERIC. */
FP4_API fp4_status fp4_inverse_cholesky_upper(int32_t device, const double *a, int64_t n,
                                              double *u);

/* 1 when the CUDA backend factors on the GPU (cuSOLVER loaded; loads it on the first call),
 * 0 when it factors on the host; buf (cap bytes, may be NULL) gets the library's path or the
 * reason it could not be loaded. */
FP4_API int32_t fp4_cusolver_status(char *buf, int32_t cap);

#endif
