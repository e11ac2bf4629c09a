// Cholesky factorization and the upper Cholesky factor of an inverse, f64, OpenMP over rows.
// Unblocked (O(n^3) with O(n^2) traffic per pivot): fine for the CPU backend's layer sizes.
#include "linalg.hpp"

#include <cmath>

namespace fp4::cpu {

// Dot product with four independent partial sums so the compiler can vectorize without
// reassociating (no fast-math in this library).
static inline double dot(const double *a, const double *b, int64_t n) {
  double s[4] = {0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4)
    for (int l = 0; l < 4; l++) s[l] += a[k + l] * b[k + l];
  for (; k < n; k++) s[0] += a[k] * b[k];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

bool cholesky_lower(double *a, int64_t n) {
  // Left-looking by rows of L: row j's dot products read rows already final.
  for (int64_t j = 0; j < n; j++) {
    double *lj = a + j * n;
    double d = lj[j] - dot(lj, lj, j);
    if (!(d > 0) || !std::isfinite(d)) return false;
    d = std::sqrt(d);
    lj[j] = d;
#pragma omp parallel for schedule(static) if (n - j > 256)
    for (int64_t i = j + 1; i < n; i++) {
      double *li = a + i * n;
      li[j] = (li[j] - dot(li, lj, j)) / d;
    }
  }
  return true;
}

bool upper_cholesky_of_inverse(const double *a, int64_t n, double *u) {
  std::vector<double> r(size_t(n) * size_t(n));
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++) r[i * n + j] = a[(n - 1 - i) * n + (n - 1 - j)];
  if (!cholesky_lower(r.data(), n)) return false;
  for (int64_t i = 0; i < n * n; i++) u[i] = 0;
  bool ok = true;
  // Column j of M = L^-1 by forward substitution (columns are independent); M[i][j] lands at
  // U[n-1-i][n-1-j].
#pragma omp parallel
  {
    std::vector<double> y(n);
#pragma omp for schedule(dynamic, 8) reduction(&& : ok)
    for (int64_t j = 0; j < n; j++) {
      y[j] = 1.0 / r[j * n + j];
      for (int64_t i = j + 1; i < n; i++) {
        const double *li = r.data() + i * n;
        y[i] = -dot(li + j, y.data() + j, i - j) / li[i];
      }
      for (int64_t i = j; i < n; i++) {
        if (!std::isfinite(y[i])) ok = false;
        u[(n - 1 - i) * n + (n - 1 - j)] = y[i];
      }
    }
  }
  return ok;
}

}  // namespace fp4::cpu
