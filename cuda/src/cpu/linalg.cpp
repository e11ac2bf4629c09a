// Blocked f64 Cholesky factorization and triangular inverse (OpenMP), the upper Cholesky factor
// of an inverse built from them, and the fp4lab/linalg.h entry points.
//
// Both factorizations spend their O(n^3) flops in gemm_sub, C -= A B on row-major blocks: a
// register tile of 4 x 8 outputs accumulates its products over a chunk of K in p order (one
// multiply and one add each: the library builds with -ffp-contract=off), then subtracts the sum
// from C. The loops are blocked so one 64 x 256 panel of A and one 256 x 64 panel of B (128 KiB
// each) stay in L2 while a 64 x 64 block of C is produced. Every output element is computed by
// one thread in a fixed order, so results do not depend on the thread count.
#include "linalg.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "../error.hpp"
#include "../decode_backend.hpp"
#include "../gptq_backend.hpp"

namespace fp4::cpu {

namespace {

constexpr int64_t kNb = 64;   // block size of both factorizations
constexpr int64_t kKc = 256;  // K chunk of gemm_sub
constexpr int64_t kMc = 64, kNc = 64;

template <int MR, int NR>
inline void tile(double *c, int64_t ldc, const double *a, int64_t lda, const double *b,
                 int64_t ldb, int64_t k) {
  double acc[MR][NR] = {};
  for (int64_t p = 0; p < k; p++) {
    const double *bp = b + p * ldb;
    for (int r = 0; r < MR; r++) {
      const double ar = a[r * lda + p];
      for (int q = 0; q < NR; q++) acc[r][q] += ar * bp[q];
    }
  }
  for (int r = 0; r < MR; r++)
    for (int q = 0; q < NR; q++) c[r * ldc + q] -= acc[r][q];
}

// C[i][j] -= sum_p A[i][p] B[p][j] for i < m, j < n, p < k (leading dimensions lda, ldb, ldc).
// Cloned for AVX-512 and AVX2 (chosen at load time), so the tile's adds vectorize wider than
// the SSE2 baseline without changing any rounding.
__attribute__((target_clones("avx512f", "avx2", "default"))) void gemm_sub(
    double *c, int64_t ldc, const double *a, int64_t lda, const double *b, int64_t ldb, int64_t m,
    int64_t n, int64_t k) {
  for (int64_t p0 = 0; p0 < k; p0 += kKc) {
    const int64_t kc = std::min(kKc, k - p0);
    for (int64_t j0 = 0; j0 < n; j0 += kNc) {
      const int64_t j1 = std::min(n, j0 + kNc);
      for (int64_t i0 = 0; i0 < m; i0 += kMc) {
        const int64_t i1 = std::min(m, i0 + kMc);
        int64_t i = i0;
        for (; i + 4 <= i1; i += 4) {
          int64_t j = j0;
          for (; j + 8 <= j1; j += 8)
            tile<4, 8>(c + i * ldc + j, ldc, a + i * lda + p0, lda, b + p0 * ldb + j, ldb, kc);
          for (; j < j1; j++)
            tile<4, 1>(c + i * ldc + j, ldc, a + i * lda + p0, lda, b + p0 * ldb + j, ldb, kc);
        }
        for (; i < i1; i++) {
          int64_t j = j0;
          for (; j + 8 <= j1; j += 8)
            tile<1, 8>(c + i * ldc + j, ldc, a + i * lda + p0, lda, b + p0 * ldb + j, ldb, kc);
          for (; j < j1; j++)
            tile<1, 1>(c + i * ldc + j, ldc, a + i * lda + p0, lda, b + p0 * ldb + j, ldb, kc);
        }
      }
    }
  }
}

// Dot product with four independent partial sums so the compiler can vectorize without
// reassociating (no fast-math in this library).
inline double dot(const double *a, const double *b, int64_t n) {
  double s[4] = {0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4)
    for (int l = 0; l < 4; l++) s[l] += a[k + l] * b[k + l];
  for (; k < n; k++) s[0] += a[k] * b[k];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// Unblocked left-looking Cholesky of the m x m block at `a` (leading dimension ld), in cache.
bool cholesky_block(double *a, int64_t ld, int64_t m) {
  for (int64_t j = 0; j < m; j++) {
    double *lj = a + j * ld;
    double d = lj[j] - dot(lj, lj, j);
    if (!(d > 0) || !std::isfinite(d)) return false;
    d = std::sqrt(d);
    lj[j] = d;
    for (int64_t i = j + 1; i < m; i++) {
      double *li = a + i * ld;
      li[j] = (li[j] - dot(li, lj, j)) / d;
    }
  }
  return true;
}

// Solves L_ii X = X in place for the m x w block at x (rows of x: ldx), L_ii the m x m lower
// block at l (ld): forward substitution by rows, an axpy over the w columns per product.
void lower_solve_rows(const double *l, int64_t ld, int64_t m, double *x, int64_t ldx, int64_t w) {
  for (int64_t r = 0; r < m; r++) {
    double *xr = x + r * ldx;
    const double *lr = l + r * ld;
    for (int64_t p = 0; p < r; p++) {
      const double f = lr[p];
      const double *xp = x + p * ldx;
      for (int64_t c = 0; c < w; c++) xr[c] -= f * xp[c];
    }
    const double d = lr[r];
    for (int64_t c = 0; c < w; c++) xr[c] /= d;
  }
}

}  // namespace

bool cholesky_lower(double *a, int64_t n) {
  std::vector<double> pt;  // the panel below the diagonal block, transposed: [kb, n - t0]
  for (int64_t k0 = 0; k0 < n; k0 += kNb) {
    const int64_t kb = std::min(kNb, n - k0), t0 = k0 + kb, rest = n - t0;
    double *akk = a + k0 * n + k0;
    if (!cholesky_block(akk, n, kb)) return false;
    if (rest == 0) break;
    // Panel: row i of L[t0:, k0:t0] solves x L_kk^T = A[i, k0:t0].
#pragma omp parallel for schedule(static) if (rest > 256)
    for (int64_t i = t0; i < n; i++) {
      double *li = a + i * n + k0;
      for (int64_t c = 0; c < kb; c++) li[c] = (li[c] - dot(li, akk + c * n, c)) / akk[c * n + c];
    }
    pt.resize(size_t(kb) * size_t(rest));
#pragma omp parallel for schedule(static) if (rest > 256)
    for (int64_t j = 0; j < rest; j++)
      for (int64_t p = 0; p < kb; p++) pt[p * rest + j] = a[(t0 + j) * n + k0 + p];
    // Trailing update of the lower triangle by row blocks (the upper part of each diagonal
    // block is updated too: scratch). Later blocks are wider, so they are handed out first.
    const int64_t blocks = (rest + kNb - 1) / kNb;
#pragma omp parallel for schedule(dynamic, 1) if (rest > 256)
    for (int64_t b = blocks - 1; b >= 0; b--) {
      const int64_t i0 = t0 + b * kNb, i1 = std::min(n, i0 + kNb);
      gemm_sub(a + i0 * n + t0, n, a + i0 * n + k0, n, pt.data(), rest, i1 - i0, i1 - t0, kb);
    }
  }
  return true;
}

void lower_inverse(const double *l, int64_t n, double *x) {
#pragma omp parallel for schedule(static) if (n > 256)
  for (int64_t i = 0; i < n; i++) std::memset(x + i * n, 0, size_t(n) * sizeof(double));
  // Block column j of X depends only on L and on block column j of X above the block being
  // computed: L_ii X_ij = -sum_{k=j}^{i-1} L_ik X_kj. Columns nearer the left have more blocks,
  // so dynamic scheduling in index order hands out the largest first.
  const int64_t blocks = (n + kNb - 1) / kNb;
#pragma omp parallel for schedule(dynamic, 1) if (n > 256)
  for (int64_t jb = 0; jb < blocks; jb++) {
    const int64_t j0 = jb * kNb, jw = std::min(kNb, n - j0);
    double *xjj = x + j0 * n + j0;
    for (int64_t r = 0; r < jw; r++) xjj[r * n + r] = 1.0;
    lower_solve_rows(l + j0 * n + j0, n, jw, xjj, n, jw);
    for (int64_t i0 = j0 + jw; i0 < n; i0 += kNb) {
      const int64_t iw = std::min(kNb, n - i0);
      double *xij = x + i0 * n + j0;
      gemm_sub(xij, n, l + i0 * n + j0, n, xjj, n, iw, jw, i0 - j0);
      lower_solve_rows(l + i0 * n + i0, n, iw, xij, n, jw);
    }
  }
}

bool upper_cholesky_of_inverse(const double *a, int64_t n, double *u) {
  std::vector<double> r(size_t(n) * size_t(n));
#pragma omp parallel for schedule(static) if (n > 256)
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++) r[i * n + j] = a[(n - 1 - i) * n + (n - 1 - j)];
  if (!cholesky_lower(r.data(), n)) return false;
  lower_inverse(r.data(), n, u);
  // U = J L^-1 J: rotating the row-major array by half a turn maps [i][j] to [n-1-i][n-1-j].
  const int64_t total = n * n;
  bool ok = true;
#pragma omp parallel for schedule(static) reduction(&& : ok) if (n > 256)
  for (int64_t k = 0; k < total / 2; k++) {
    std::swap(u[k], u[total - 1 - k]);
    ok = ok && std::isfinite(u[k]) && std::isfinite(u[total - 1 - k]);
  }
  if (total % 2) ok = ok && std::isfinite(u[total / 2]);
  return ok;
}

}  // namespace fp4::cpu

static fp4_status inverse_cholesky_upper(int32_t device, const double *a, int64_t n, double *u) {
  FP4_REQUIRE(a && u, "fp4_inverse_cholesky_upper: null pointer");
  FP4_REQUIRE(n > 0 && n <= (int64_t(1) << 20), "fp4_inverse_cholesky_upper: invalid size %lld",
              (long long)n);
  FP4_REQUIRE(device == FP4_DEVICE_CPU || device == FP4_DEVICE_CUDA,
              "fp4_inverse_cholesky_upper: unknown device %d", device);
  if (device == FP4_DEVICE_CUDA) {
    FP4_CUDA_ONLY(return fp4::cuda::inverse_cholesky_upper(a, n, u));
  }
  if (!fp4::cpu::upper_cholesky_of_inverse(a, n, u))
    return fp4::fail(FP4_ERR_NUMERIC,
                     "fp4_inverse_cholesky_upper: the matrix is not positive definite");
  return FP4_OK;
}

FP4_API fp4_status fp4_inverse_cholesky_upper(int32_t device, const double *a, int64_t n,
                                              double *u) {
  FP4_GUARD({ return inverse_cholesky_upper(device, a, n, u); })
}

// Whether a runtime-loaded NVIDIA library is usable; buf gets its path or why not.
#ifdef FP4LAB_WITH_CUDA
#define FP4_LOADED_STATUS(fn)          \
  try {                                \
    return fp4::cuda::fn(buf, cap);    \
  } catch (...) {                      \
    return 0;                          \
  }
#else
#define FP4_LOADED_STATUS(fn)                                                     \
  if (buf && cap > 0) std::snprintf(buf, size_t(cap), "built without CUDA"); \
  return 0;
#endif

FP4_API int32_t fp4_cusolver_status(char *buf, int32_t cap) { FP4_LOADED_STATUS(cusolver_status) }

FP4_API int32_t fp4_cublas_status(char *buf, int32_t cap) { FP4_LOADED_STATUS(cublas_status) }
