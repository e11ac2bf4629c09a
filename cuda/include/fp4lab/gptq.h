/* GPTQ on one linear layer: Hessian accumulation and the solve (MR-GPTQ when the caller passes
 * W and H already rotated). The format enters only through two host-chosen inputs: the element
 * grid (ascending values with their codes) and every group's effective scale (block scale times
 * tensor scale), chosen before the loop ("static" group scales). The TypeScript reference
 * lib/gptq/reference.ts is the specification; lib/gptq/layer.ts is the caller. */
#ifndef FP4LAB_GPTQ_H
#define FP4LAB_GPTQ_H

#include "core.h"

/* Streams one batch of calibration rows into a Hessian kept as a running mean:
 *   H <- (seen / (seen + rows)) * H + (2 / (seen + rows)) * X^T X
 * h: [cols, cols] f32 (full symmetric matrix, updated in place); x: [rows, cols] f32;
 * `seen` = calibration rows already in H. Products accumulate in f32 over the batch. */
FP4_API fp4_status fp4_gptq_hessian_add(int32_t device, float *h, const float *x, int64_t rows,
                                        int64_t cols, int64_t seen);

/* GPTQ solve with fixed group scales.
 *   w:      [rows, cols] f32; in: weights (out x in); out: the dequantized weights.
 *   h:      [cols, cols] f32 Hessian, undamped (read only).
 *   scales: [rows, cols / group_size] f32 effective scale of every group in stored layout (> 0).
 *   levels, level_codes: the element grid, n_levels values strictly ascending, and their codes;
 *           x / scale rounds to the nearest level, ties to the level with the even code.
 *   order:  [cols] processing order (stored column of the p-th processed column), a
 *           permutation; NULL = stored order.
 *   damp:   relative damping (fraction of the mean diagonal); on a failed factorization it is
 *           multiplied by 10, at most max_retries times, then FP4_ERR_NUMERIC.
 *   codes:  [rows, cols] u8 out, one code per byte, stored order.
 *   info:   [2] f64 out: absolute damping used, proxy loss trace((W - Q) H (W - Q)^T).
 * Inputs with H_jj = 0 are dead: their weights become 0 (as GPTQ does).
 * Cholesky and the triangular inverse run in f64; the column loop and updates in f32. */
FP4_API fp4_status fp4_gptq_solve(int32_t device, float *w, const float *h, int64_t rows,
                                  int64_t cols, const float *scales, int32_t group_size,
                                  const float *levels, const uint8_t *level_codes,
                                  int32_t n_levels, const int32_t *order, double damp,
                                  int32_t block_size, int32_t max_retries, uint8_t *codes,
                                  double *info);

#endif
