// GPTQ entry points (fp4lab/gptq.h) and their CPU backend.
//
// Solve layout: W is row-major [rows, cols] and every output row is independent once U (the
// upper Cholesky factor of the damped, permuted H^-1) is known, so each OpenMP thread owns whole
// rows: it copies a row into processing order, runs the blocked column loop on it (eager updates
// inside a block of `block_size` columns, then one lazy vector-matrix update of the columns after
// the block), and scatters codes and dequantized values back to stored order. U is shared and
// read-only (f32, cols^2 * 4 bytes); per row the loop reads ~cols^2 / 2 elements of U.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../error.hpp"
#include "linalg.hpp"

namespace {

bool all_finite(const float *p, int64_t n) {
  bool ok = true;
#pragma omp parallel for reduction(&& : ok) schedule(static)
  for (int64_t i = 0; i < n; i++) ok = ok && std::isfinite(p[i]);
  return ok;
}

// Nearest level of v, ties to the level with the even code (lib/gptq/quantizer.ts roundToLevel).
inline int round_to_level(const float *lv, const uint8_t *codes, int n, float v) {
  if (v <= lv[0]) return 0;
  if (v >= lv[n - 1]) return n - 1;
  int lo = 0, hi = n - 1;
  while (hi - lo > 1) {
    int mid = (lo + hi) >> 1;
    if (lv[mid] <= v) lo = mid; else hi = mid;
  }
  float dl = v - lv[lo], dh = lv[hi] - v;
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (codes[lo] & 1) == 0 ? lo : hi;
}

}  // namespace

// Bodies live in plain functions: OpenMP pragmas and commas cannot sit inside FP4_GUARD(...).
static fp4_status hessian_add(int32_t device, float *h, const float *x, int64_t rows,
                              int64_t cols, int64_t seen) {
  {
    FP4_REQUIRE(h && x, "fp4_gptq_hessian_add: null pointer");
    FP4_REQUIRE(rows > 0 && cols > 0 && cols <= (int64_t(1) << 20),
                "fp4_gptq_hessian_add: invalid shape %lld x %lld", (long long)rows, (long long)cols);
    FP4_REQUIRE(seen >= 0, "fp4_gptq_hessian_add: negative sample count %lld", (long long)seen);
    if (device != FP4_DEVICE_CPU)
      return fp4::fail(FP4_ERR_INVALID_ARGUMENT,
                       "fp4_gptq_hessian_add: only the cpu device is implemented so far");
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
}

static fp4_status solve(int32_t device, float *w, const float *h, int64_t rows, int64_t cols,
                        const float *scales, int32_t group_size, const float *levels,
                        const uint8_t *level_codes, int32_t n_levels, const int32_t *order,
                        double damp, int32_t block_size, int32_t max_retries, uint8_t *codes,
                        double *info) {
  {
    FP4_REQUIRE(w && h && scales && levels && level_codes && codes && info,
                "fp4_gptq_solve: null pointer");
    FP4_REQUIRE(rows > 0 && cols > 0 && cols <= (int64_t(1) << 20),
                "fp4_gptq_solve: invalid shape %lld x %lld", (long long)rows, (long long)cols);
    FP4_REQUIRE(group_size > 0 && cols % group_size == 0,
                "fp4_gptq_solve: in-features %lld are not divisible by the group size %d",
                (long long)cols, group_size);
    FP4_REQUIRE(n_levels >= 2 && n_levels <= 256, "fp4_gptq_solve: %d grid levels", n_levels);
    for (int i = 0; i < n_levels; i++)
      FP4_REQUIRE(std::isfinite(levels[i]) && (i == 0 || levels[i] > levels[i - 1]),
                  "fp4_gptq_solve: grid levels must be finite and strictly ascending");
    FP4_REQUIRE(std::isfinite(damp) && damp >= 0, "fp4_gptq_solve: invalid damp %g", damp);
    FP4_REQUIRE(block_size > 0, "fp4_gptq_solve: invalid block size %d", block_size);
    FP4_REQUIRE(max_retries >= 0 && max_retries <= 16, "fp4_gptq_solve: max_retries %d", max_retries);
    if (device != FP4_DEVICE_CPU)
      return fp4::fail(FP4_ERR_INVALID_ARGUMENT,
                       "fp4_gptq_solve: only the cpu device is implemented so far");
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
    if (!all_finite(w, rows * cols))
      return fp4::fail(FP4_ERR_NUMERIC, "fp4_gptq_solve: W has NaN or Inf values");
    if (!all_finite(h, n * n))
      return fp4::fail(FP4_ERR_NUMERIC, "fp4_gptq_solve: H has NaN or Inf values");
    bool scales_ok = true;
    for (int64_t i = 0; i < rows * groups; i++)
      scales_ok = scales_ok && std::isfinite(scales[i]) && scales[i] > 0;
    FP4_REQUIRE(scales_ok, "fp4_gptq_solve: group scales must be finite and > 0");

    // Permuted f64 Hessian with dead inputs masked.
    std::vector<char> dead(n, 0);
    for (int64_t j = 0; j < n; j++) dead[j] = h[j * n + j] == 0.0f;
    std::vector<double> hp(size_t(n) * size_t(n));
    double mean_diag = 0;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
      const int64_t si = perm[i];
      for (int64_t j = 0; j < n; j++) {
        const int64_t sj = perm[j];
        hp[i * n + j] = (dead[si] || dead[sj]) ? (si == sj ? 1.0 : 0.0) : double(h[si * n + sj]);
      }
    }
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
    hd = std::vector<double>();
    std::vector<float> u(size_t(n) * size_t(n));
    for (size_t i = 0; i < u.size(); i++) u[i] = float(ud[i]);
    ud = std::vector<double>();

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
            const float s = scales[r * groups + c / group_size];
            const float v = row[p];
            const int li = round_to_level(levels, level_codes, n_levels, v / s);
            const float q = levels[li] * s;
            codes[r * cols + c] = level_codes[li];
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
        // Proxy loss with the caller's H (f64), then write back in stored order.
        for (int64_t p = 0; p < n; p++) diff[perm[p]] = double(wr[perm[p]]) - double(row[p]);
        for (int64_t i = 0; i < n; i++) {
          if (diff[i] == 0) continue;
          const float *hi = h + i * n;
          double s = 0;
          for (int64_t j = 0; j < n; j++) s += double(hi[j]) * diff[j];
          loss += diff[i] * s;
        }
        for (int64_t p = 0; p < n; p++) wr[perm[p]] = row[p];
      }
    }
    info[0] = abs_damp;
    info[1] = loss;
    return FP4_OK;
  }
}

FP4_API fp4_status fp4_gptq_hessian_add(int32_t device, float *h, const float *x, int64_t rows,
                                        int64_t cols, int64_t seen) {
  FP4_GUARD({ return hessian_add(device, h, x, rows, cols, seen); })
}

FP4_API fp4_status fp4_gptq_solve(int32_t device, float *w, const float *h, int64_t rows,
                                  int64_t cols, const float *scales, int32_t group_size,
                                  const float *levels, const uint8_t *level_codes,
                                  int32_t n_levels, const int32_t *order, double damp,
                                  int32_t block_size, int32_t max_retries, uint8_t *codes,
                                  double *info) {
  FP4_GUARD({
    return solve(device, w, h, rows, cols, scales, group_size, levels, level_codes, n_levels,
                 order, damp, block_size, max_retries, codes, info);
  })
}
