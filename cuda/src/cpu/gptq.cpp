// GPTQ entry points (fp4lab/gptq.h), their CPU backend and the host factorization both backends
// share.
//
// Solve layout: W is row-major [rows, cols] and every output row is independent once U (the
// upper Cholesky factor of the damped, permuted H^-1) is known, so each OpenMP thread owns whole
// rows: it copies a row into processing order, runs the blocked column loop on it (eager updates
// inside a block of `block_size` columns, then the lazy update of the columns after the block,
// one subtraction per block column in order), and scatters codes and dequantized values back to
// stored order. U is shared and read-only (f32, cols^2 * 4 bytes); per row the loop reads
// ~cols^2 / 2 elements of U. The CUDA backend performs the same float operations in the same
// order (cuda/src/cuda/gptq_solve.cu).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "../error.hpp"
#include "../gptq_backend.hpp"
#include "linalg.hpp"

namespace {

bool all_finite(const float *p, int64_t n) {
  bool ok = true;
#pragma omp parallel for reduction(&& : ok) schedule(static)
  for (int64_t i = 0; i < n; i++) ok = ok && std::isfinite(p[i]);
  return ok;
}

}  // namespace

namespace fp4::gptq {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

fp4_status factor(const float *h, int64_t n, const int32_t *perm, double damp, int32_t max_retries,
                  std::vector<float> &u, std::vector<char> &dead, double *abs_damp_out) {
  if (!all_finite(h, n * n))
    return fp4::fail(FP4_ERR_NUMERIC, "fp4_gptq_solve: H has NaN or Inf values");
  dead.assign(size_t(n), 0);
  for (int64_t j = 0; j < n; j++) dead[j] = h[j * n + j] == 0.0f;
  std::vector<double> hp(size_t(n) * size_t(n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const int64_t si = perm[i];
    for (int64_t j = 0; j < n; j++) {
      const int64_t sj = perm[j];
      hp[i * n + j] = (dead[si] || dead[sj]) ? (si == sj ? 1.0 : 0.0) : double(h[si * n + sj]);
    }
  }
  double mean_diag = 0;
  for (int64_t i = 0; i < n; i++) mean_diag += hp[i * n + i];
  mean_diag /= double(n);

  std::vector<double> ud(size_t(n) * size_t(n));
  std::vector<double> hd(size_t(n) * size_t(n));
  double rel = damp, abs_damp = 0;
  bool factored = false;
  for (int attempt = 0; attempt <= max_retries && !factored; attempt++) {
    if (attempt > 0) rel *= 10;
    abs_damp = rel * mean_diag;
    std::copy(hp.begin(), hp.end(), hd.begin());
    for (int64_t i = 0; i < n; i++) hd[i * n + i] += abs_damp;
    factored = fp4::cpu::upper_cholesky_of_inverse(hd.data(), n, ud.data());
  }
  if (!factored)
    return fp4::fail(FP4_ERR_NUMERIC,
                     "fp4_gptq_solve: the Hessian is not positive definite even with damping "
                     "%g x mean diagonal (%d retries from %g)", rel, max_retries, damp);
  u.resize(size_t(n) * size_t(n));
  for (size_t i = 0; i < u.size(); i++) u[i] = float(ud[i]);
  *abs_damp_out = abs_damp;
  return FP4_OK;
}

}  // namespace fp4::gptq

// Bodies live in plain functions: OpenMP pragmas and commas cannot sit inside FP4_GUARD(...).
static fp4_status hessian_add(int32_t device, float *h, const float *x, int64_t rows,
                              int64_t cols, int64_t seen) {
  FP4_REQUIRE(h && x, "fp4_gptq_hessian_add: null pointer");
  FP4_REQUIRE(rows > 0 && cols > 0 && cols <= (int64_t(1) << 20),
              "fp4_gptq_hessian_add: invalid shape %lld x %lld", (long long)rows, (long long)cols);
  FP4_REQUIRE(seen >= 0, "fp4_gptq_hessian_add: negative sample count %lld", (long long)seen);
  FP4_REQUIRE(device == FP4_DEVICE_CPU || device == FP4_DEVICE_CUDA,
              "fp4_gptq_hessian_add: unknown device %d", device);
  if (device == FP4_DEVICE_CUDA) {
    FP4_CUDA_ONLY(return fp4::cuda::gptq_hessian_add(h, x, rows, cols, seen));
  }
  if (!all_finite(x, rows * cols))
    return fp4::fail(FP4_ERR_NUMERIC, "fp4_gptq_hessian_add: the batch has NaN or Inf values");
  const float beta = float(double(seen) / double(seen + rows));
  const float alpha = float(2.0 / double(seen + rows));
  // Lower triangle of X^T X in f32, tokens in tiles of 256 so a tile of X stays in cache;
  // row i of the sum is updated by axpys over j <= i (vectorizes without reassociation).
  std::vector<float> s(size_t(cols) * size_t(cols), 0.0f);
  const int64_t tile = 256;
  for (int64_t t0 = 0; t0 < rows; t0 += tile) {
    const int64_t t1 = std::min(rows, t0 + tile);
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t i = 0; i < cols; i++) {
      float *si = s.data() + i * cols;
      for (int64_t t = t0; t < t1; t++) {
        const float *xt = x + t * cols;
        const float xi = xt[i];
        if (xi == 0.0f) continue;
        for (int64_t j = 0; j <= i; j++) si[j] += xi * xt[j];
      }
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < cols; i++) {
    for (int64_t j = 0; j <= i; j++) {
      float v = beta * h[i * cols + j] + alpha * s[i * cols + j];
      h[i * cols + j] = v;
      h[j * cols + i] = v;
    }
  }
  return FP4_OK;
}

static fp4_status cross_add(int32_t device, float *d, const float *a, const float *b,
                            int64_t rows, int64_t cols, int64_t seen) {
  FP4_REQUIRE(d && a && b, "fp4_gptq_cross_add: null pointer");
  FP4_REQUIRE(rows > 0 && cols > 0 && cols <= (int64_t(1) << 20),
              "fp4_gptq_cross_add: invalid shape %lld x %lld", (long long)rows, (long long)cols);
  FP4_REQUIRE(seen >= 0, "fp4_gptq_cross_add: negative sample count %lld", (long long)seen);
  FP4_REQUIRE(device == FP4_DEVICE_CPU || device == FP4_DEVICE_CUDA,
              "fp4_gptq_cross_add: unknown device %d", device);
  if (device == FP4_DEVICE_CUDA) {
    FP4_CUDA_ONLY(return fp4::cuda::gptq_cross_add(d, a, b, rows, cols, seen));
  }
  if (!all_finite(a, rows * cols) || !all_finite(b, rows * cols))
    return fp4::fail(FP4_ERR_NUMERIC, "fp4_gptq_cross_add: the batch has NaN or Inf values");
  const float beta = float(double(seen) / double(seen + rows));
  const float alpha = float(2.0 / double(seen + rows));
  // Row i of A^T B gathers a[t][i] * b[t][:] over the tokens t, in tiles of 256 tokens as in
  // hessian_add; unlike the Hessian, every (i, j) is computed.
  std::vector<float> s(size_t(cols) * size_t(cols), 0.0f);
  const int64_t tile = 256;
  for (int64_t t0 = 0; t0 < rows; t0 += tile) {
    const int64_t t1 = std::min(rows, t0 + tile);
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t i = 0; i < cols; i++) {
      float *si = s.data() + i * cols;
      for (int64_t t = t0; t < t1; t++) {
        const float ai = a[t * cols + i];
        if (ai == 0.0f) continue;
        const float *bt = b + t * cols;
        for (int64_t j = 0; j < cols; j++) si[j] += ai * bt[j];
      }
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < cols * cols; i++) d[i] = beta * d[i] + alpha * s[i];
  return FP4_OK;
}

// d^T H d for one row's difference d (f64) and H [n, n] (f32), in f64; zero entries of d skip
// their row of H (dead inputs and exactly quantized weights are common).
double row_proxy_loss(const double *d, const float *h, int64_t n) {
  double loss = 0;
  for (int64_t i = 0; i < n; i++) {
    if (d[i] == 0) continue;
    const float *hi = h + i * n;
    double s = 0;
    for (int64_t j = 0; j < n; j++) s += double(hi[j]) * d[j];
    loss += d[i] * s;
  }
  return loss;
}

static fp4_status solve(int32_t device, float *w, const float *h, int64_t rows, int64_t cols,
                        const float *scales, int32_t group_size, int32_t element,
                        const int32_t *order, double damp, int32_t block_size,
                        int32_t max_retries, uint8_t *codes, double *info) {
  FP4_REQUIRE(w && h && scales && codes && info, "fp4_gptq_solve: null pointer");
  FP4_REQUIRE(rows > 0 && cols > 0 && cols <= (int64_t(1) << 20),
              "fp4_gptq_solve: invalid shape %lld x %lld", (long long)rows, (long long)cols);
  FP4_REQUIRE(group_size > 0 && cols % group_size == 0,
              "fp4_gptq_solve: in-features %lld are not divisible by the group size %d",
              (long long)cols, group_size);
  FP4_REQUIRE(fp4::gptq::symmetric_element(element),
              "fp4_gptq_solve: element codec %d is not a symmetric element format", element);
  FP4_REQUIRE(std::isfinite(damp) && damp >= 0, "fp4_gptq_solve: invalid damp %g", damp);
  FP4_REQUIRE(block_size > 0, "fp4_gptq_solve: invalid block size %d", block_size);
  FP4_REQUIRE(max_retries >= 0 && max_retries <= 16, "fp4_gptq_solve: max_retries %d", max_retries);
  FP4_REQUIRE(device == FP4_DEVICE_CPU || device == FP4_DEVICE_CUDA,
              "fp4_gptq_solve: unknown device %d", device);
  const int64_t n = cols;
  const int64_t groups = cols / group_size;
  std::vector<int32_t> perm(n);
  if (order) {
    std::vector<char> seen_col(n, 0);
    for (int64_t p = 0; p < n; p++) {
      int32_t c = order[p];
      FP4_REQUIRE(c >= 0 && c < n && !seen_col[c], "fp4_gptq_solve: order is not a permutation");
      seen_col[c] = 1;
      perm[p] = c;
    }
  } else {
    for (int64_t p = 0; p < n; p++) perm[p] = int32_t(p);
  }
  if (device == FP4_DEVICE_CUDA) {
    FP4_CUDA_ONLY(return fp4::cuda::gptq_solve(w, h, rows, cols, scales, group_size, element,
                                               perm.data(), damp, block_size, max_retries, codes,
                                               info));
  }
  if (!all_finite(w, rows * cols))
    return fp4::fail(FP4_ERR_NUMERIC, "fp4_gptq_solve: W has NaN or Inf values");
  bool scales_ok = true;
  for (int64_t i = 0; i < rows * groups; i++)
    scales_ok = scales_ok && std::isfinite(scales[i]) && scales[i] >= 0;
  FP4_REQUIRE(scales_ok, "fp4_gptq_solve: group scales must be finite and >= 0");

  const double t0 = fp4::gptq::now_seconds();
  std::vector<float> u;
  std::vector<char> dead;
  double abs_damp = 0;
  fp4_status st = fp4::gptq::factor(h, n, perm.data(), damp, max_retries, u, dead, &abs_damp);
  if (st != FP4_OK) return st;
  const double t1 = fp4::gptq::now_seconds();

  const int64_t bs = block_size;
  double loss = 0;
#pragma omp parallel reduction(+ : loss)
  {
    std::vector<float> row(n), errs(bs);
    std::vector<double> diff(n);
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < rows; r++) {
      float *wr = w + r * cols;
      for (int64_t p = 0; p < n; p++) row[p] = dead[perm[p]] ? 0.0f : wr[perm[p]];
      for (int64_t c1 = 0; c1 < n; c1 += bs) {
        const int64_t c2 = std::min(n, c1 + bs);
        for (int64_t p = c1; p < c2; p++) {
          const int64_t c = perm[p];
          const float v = row[p];
          float q;
          codes[r * cols + c] = uint8_t(
              fp4::gptq::round_element(element, v, scales[r * groups + c / group_size], &q));
          const float *up = u.data() + p * n;
          const float err = (v - q) / up[p];
          errs[p - c1] = err;
          row[p] = q;
          for (int64_t j = p + 1; j < c2; j++) row[j] -= err * up[j];
        }
        for (int64_t k = 0; k < c2 - c1; k++) {
          const float e = errs[k];
          const float *uk = u.data() + (c1 + k) * n;
          for (int64_t j = c2; j < n; j++) row[j] -= e * uk[j];
        }
      }
      // Proxy loss with the caller's H, then write back in stored order.
      for (int64_t p = 0; p < n; p++) diff[perm[p]] = double(wr[perm[p]]) - double(row[p]);
      loss += row_proxy_loss(diff.data(), h, n);
      for (int64_t p = 0; p < n; p++) wr[perm[p]] = row[p];
    }
  }
  info[0] = abs_damp;
  info[1] = loss;
  info[2] = t1 - t0;
  info[3] = fp4::gptq::now_seconds() - t1;
  return FP4_OK;
}

FP4_API fp4_status fp4_gptq_hessian_add(int32_t device, float *h, const float *x, int64_t rows,
                                        int64_t cols, int64_t seen) {
  FP4_GUARD({ return hessian_add(device, h, x, rows, cols, seen); })
}

FP4_API fp4_status fp4_gptq_cross_add(int32_t device, float *d, const float *a, const float *b,
                                      int64_t rows, int64_t cols, int64_t seen) {
  FP4_GUARD({ return cross_add(device, d, a, b, rows, cols, seen); })
}

FP4_API fp4_status fp4_gptq_solve(int32_t device, float *w, const float *h, int64_t rows,
                                  int64_t cols, const float *scales, int32_t group_size,
                                  int32_t element, const int32_t *order, double damp,
                                  int32_t block_size, int32_t max_retries, uint8_t *codes,
                                  double *info) {
  FP4_GUARD({
    return solve(device, w, h, rows, cols, scales, group_size, element, order, damp, block_size,
                 max_retries, codes, info);
  })
}

namespace {

double proxy_loss(const float *w, const float *q, const float *h, int64_t rows, int64_t cols) {
  double loss = 0;
#pragma omp parallel reduction(+ : loss)
  {
    std::vector<double> diff(cols);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      for (int64_t c = 0; c < cols; c++) diff[c] = double(w[r * cols + c]) - double(q[r * cols + c]);
      loss += row_proxy_loss(diff.data(), h, cols);
    }
  }
  return loss;
}

}  // namespace

FP4_API fp4_status fp4_gptq_proxy_loss(const float *w, const float *q, const float *h,
                                       int64_t rows, int64_t cols, double *out) {
  FP4_GUARD({
    FP4_REQUIRE(w && q && h && out, "fp4_gptq_proxy_loss: null pointer");
    FP4_REQUIRE(rows >= 0 && cols > 0, "fp4_gptq_proxy_loss: bad shape [%lld, %lld]",
                (long long)rows, (long long)cols);
    *out = proxy_loss(w, q, h, rows, cols);
    return FP4_OK;
  })
}
