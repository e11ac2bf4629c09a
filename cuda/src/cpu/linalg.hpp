// Dense f64 linear algebra of the CPU backend (used by the GPTQ solver). Row-major n x n.
#pragma once
#include <cstdint>

namespace fp4::cpu {

// In place: the lower triangle of `a` becomes L with A = L L^T; the strict upper triangle is
// scratch afterwards. Blocked right-looking, OpenMP over row blocks of the trailing update.
// Returns false when a pivot is not positive and finite (A not positive definite).
bool cholesky_lower(double *a, int64_t n);

// x = L^-1 for the lower triangle of `l` (x: full n x n, zeros above the diagonal). Blocked,
// OpenMP over independent block columns.
void lower_inverse(const double *l, int64_t n, double *x);

// Upper Cholesky factor U of A^-1 (A^-1 = U^T U) for symmetric positive definite A, written to
// `u` (full n x n, zeros below the diagonal). Computed as U = J chol(J A J)^-1 J with J the
// reversal permutation: one Cholesky and one triangular inverse, no explicit inverse of A.
// Returns false when A is not positive definite or the factor is not finite.
bool upper_cholesky_of_inverse(const double *a, int64_t n, double *u);

}  // namespace fp4::cpu
