/* GPTQ on one linear layer: Hessian accumulation and the solve (MR-GPTQ when the caller passes
 * W and H already rotated). The format enters through two host-chosen inputs: the element format
 * (a symmetric FP4_CODEC_* of fp4lab/formats.h; elements are rounded exactly as fp4_quantize
 * rounds them, docs/FORMATS.md §5.6) and every group's effective scale S (block scale times
 * tensor scale), chosen before the loop ("static" group scales, lib/formats chooseGroupScales).
 * The TypeScript reference lib/gptq/reference.ts is the specification; lib/gptq/layer.ts is the
 * caller.
 *
 * Data pointers (h, x, w, scales, codes) are host memory for FP4_DEVICE_CPU and device memory
 * for FP4_DEVICE_CUDA; `order` and `info` are host memory on every device (small parameters). */
#ifndef FP4LAB_GPTQ_H
#define FP4LAB_GPTQ_H

#include "core.h"

/* Streams one batch of calibration rows into a Hessian kept as a running mean:
 *   H <- (seen / (seen + rows)) * H + (2 / (seen + rows)) * X^T X
 * h: [cols, cols] f32 (full symmetric matrix, updated in place); x: [rows, cols] f32;
 * `seen` = calibration rows already in H. Products accumulate in f32 over the batch (CUDA: fused
 * multiply-adds in a tiled SYRK kernel). NaN/Inf in x fails with FP4_ERR_NUMERIC, H untouched. */
FP4_API fp4_status fp4_gptq_hessian_add(int32_t device, float *h, const float *x, int64_t rows,
                                        int64_t cols, int64_t seen);

/* Streams one batch of paired rows into a cross product kept as a running mean, the
 * asymmetric objective's D (lib/gptq/asymmetric.ts):
 *   D <- (seen / (seen + rows)) * D + (2 / (seen + rows)) * A^T B
 * d: [cols, cols] f32 (general, updated in place); a, b: [rows, cols] f32 (row t of both are
 * the same token); `seen` = rows already in D. Products accumulate in f32 over the batch (CUDA:
 * the tiled kernel of fp4_gptq_hessian_add over every tile). NaN/Inf in a or b fails with
 * FP4_ERR_NUMERIC, D untouched. */
FP4_API fp4_status fp4_gptq_cross_add(int32_t device, float *d, const float *a, const float *b,
                                      int64_t rows, int64_t cols, int64_t seen);

/* GPTQ solve with fixed group scales.
 *   w:       [rows, cols] f32; in: weights (out x in); out: the dequantized weights.
 *   h:       [cols, cols] f32 Hessian, undamped (read only).
 *   scales:  [rows, cols / group_size] f32 effective scale S of every group in stored layout
 *            (finite, >= 0; S = 0 quantizes the group to code 0, value 0, as fp4_quantize does).
 *   element: FP4_CODEC_* of a symmetric element format (e2m1 .. e5m2, int4, int8, mxint8);
 *            code = round-to-nearest-even storage bits of w / S, value = decode(code) * S.
 *   order:   [cols] processing order (stored column of the p-th processed column), a
 *            permutation; NULL = stored order.
 *   damp:    relative damping (fraction of the mean diagonal); on a failed factorization it is
 *            multiplied by 10, at most max_retries times, then FP4_ERR_NUMERIC.
 *   codes:   [rows, cols] u8 out, one code per byte, stored order.
 *   info:    [4] f64 out: absolute damping used, proxy loss trace((W - Q) H (W - Q)^T),
 *            seconds spent factoring (f64) and seconds in the column loop (wall clock).
 * Inputs with H_jj = 0 are dead: their weights become 0 (as GPTQ does).
 * Cholesky and the triangular inverse run in f64: on the host for the CPU device, on the GPU through
 * cuSOLVER (loaded at run time; host fallback when it cannot be loaded) for CUDA; the column loop
 * and the lazy updates in f32 with unfused products in the same order on both devices. */
FP4_API fp4_status fp4_gptq_solve(int32_t device, float *w, const float *h, int64_t rows,
                                  int64_t cols, const float *scales, int32_t group_size,
                                  int32_t element, const int32_t *order, double damp,
                                  int32_t block_size, int32_t max_retries, uint8_t *codes,
                                  double *info);

/* The proxy loss trace((W - Q) H (W - Q)^T) that fp4_gptq_solve reports, for any W and Q (e.g.
 * round to nearest): w, q [rows, cols] f32, h [cols, cols] f32, host memory; sums in f64. */
FP4_API fp4_status fp4_gptq_proxy_loss(const float *w, const float *q, const float *h,
                                       int64_t rows, int64_t cols, double *out);

#endif
