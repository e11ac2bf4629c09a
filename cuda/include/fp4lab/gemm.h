/* W4A16 linear layers: FP4 weights (MXFP4 or NVFP4) times BF16 activations -> BF16 output.
 *
 * Weight layout (the plain one of docs/FORMATS.md, used as is by every kernel; no reordering):
 *   codes  [n, k/2] bytes, row-major: E2M1 codes two per byte, element 2i in the low nibble;
 *   scales [n, k/group] bytes, row-major: E8M0 bits (MXFP4, group 32) or E4M3 bits (NVFP4,
 *          group 16); NVFP4 also has an FP32 tensor scale (MXFP4 ignores `tensor_scale`).
 * Dequantised weight: W[n, k] = e2m1(code) * scale, with scale = e8m0(bits) for MXFP4 and
 * scale = fround(e4m3(bits) * tensor_scale) for NVFP4.
 *
 * y[b, n] = sum_k x[b, k] * W[n, k]: x [batch, k] and y [batch, n] are BF16 bits, row-major;
 * products are accumulated in FP32 and the sum is rounded once to BF16. k must be a multiple
 * of the group size; any batch, n >= 1. */
#ifndef FP4LAB_GEMM_H
#define FP4LAB_GEMM_H

#include "core.h"

enum { FP4_WEIGHTS_MXFP4 = 0, FP4_WEIGHTS_NVFP4 = 1 };

FP4_API fp4_status fp4_gemm(int32_t device, int32_t format, const uint16_t *x, const uint8_t *codes,
                            const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                            int64_t n, int64_t k);

/* fp4_gemm of up to 4 weight matrices stacked by rows (codes, scales and y rows concatenated):
 * rows [segment_ends[i - 1], segment_ends[i]) form segment i, with NVFP4 tensor scale
 * tensor_scales[i] (host arrays of `segments` entries; segment_ends ascending, the last = n;
 * MXFP4 ignores tensor_scales). Every row gets the arithmetic of fp4_gemm on its own matrix,
 * bit for bit, in one launch (a decode step's q/k/v or gate/up). CUDA: batch <= 16. */
FP4_API fp4_status fp4_gemm_segments(int32_t device, int32_t format, const uint16_t *x,
                                     const uint8_t *codes, const uint8_t *scales,
                                     const float *tensor_scales, const int64_t *segment_ends,
                                     int32_t segments, uint16_t *y, int64_t batch, int64_t n,
                                     int64_t k);

/* The kernel set that fp4_gemm runs on Hopper GPUs for batches above 16: FP4_GEMM_KERNELS_V4
 * (the default: the dispatch that bench/notes/fp4_gemm.md measured) or a candidate under
 * measurement, FP4_GEMM_KERNELS_LEAN or FP4_GEMM_KERNELS_LEAN3 (fewer instructions per stage
 * and more warpgroups per block; bench/notes/fp4_gemm.md, "Version 8"), so that a benchmark or
 * test can run each in one process. Every set computes the same function within the bound of
 * tests/fp4_gemm_test.ts (not bit for bit: blocks split k differently). Process-wide; its first
 * value comes from $FP4LAB_GEMM_WGMMA ("v4", "lean" or "lean3"; another value makes the first
 * CUDA fp4_gemm above batch 16 fail naming the choices). Other GPUs and the CPU backend ignore
 * it. Call it between fp4_gemm calls, not during them (or during a stream capture of one). */
enum { FP4_GEMM_KERNELS_V4 = 0, FP4_GEMM_KERNELS_LEAN = 1, FP4_GEMM_KERNELS_LEAN3 = 2 };
FP4_API fp4_status fp4_gemm_set_kernels(int32_t set);

/* CUDA timing of fp4_gemm: `copies` weight sets lie back to back in codes (copies * n*k/2 bytes)
 * and scales (copies * n*k/group bytes); launch i uses set i % copies, so that the weights do not
 * stay in L2. samples[s] = milliseconds per launch, averaged over `reps` launches between two
 * CUDA events (the launches are captured in a CUDA graph, as a decode step would run them). */
FP4_API fp4_status fp4_gemm_bench(int32_t format, const uint16_t *x, const uint8_t *codes,
                                  const uint8_t *scales, float tensor_scale, uint16_t *y,
                                  int64_t batch, int64_t n, int64_t k, int32_t copies, int32_t reps,
                                  int32_t nsamples, float *samples);

/* CUDA device-to-device cudaMemcpyAsync of `bytes` from src to dst: samples as above. */
FP4_API fp4_status fp4_copy_bench(void *dst, const void *src, uint64_t bytes, int32_t reps,
                                  int32_t nsamples, float *samples);

/* The BF16 baseline: cublasGemmEx (CUDA_R_16BF in and out, CUBLAS_COMPUTE_32F) computing
 * y[b, n] = sum_k x[b, k] * w[n, k] with w [copies][n, k] BF16, rotating among the copies like
 * fp4_gemm_bench. cuBLAS is loaded at run time as fp4_cublas_status describes (FP4_ERR_CUDA
 * with the reason when it cannot be). */
FP4_API fp4_status fp4_cublas_bench(const uint16_t *x, const uint16_t *w, uint16_t *y,
                                    int64_t batch, int64_t n, int64_t k, int32_t copies,
                                    int32_t reps, int32_t nsamples, float *samples);

#endif
