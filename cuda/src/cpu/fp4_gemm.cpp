// W4A16 linear layers (cuda/include/fp4lab/gemm.h): argument checks, device dispatch, and the
// CPU twin of the CUDA kernels.
//
// CPU twin: each OpenMP thread dequantises one weight row to f32 (W[n, k] = e2m1 * scale, the
// scale exactly as docs/FORMATS.md defines it) and takes its dot product with every activation
// row in ascending k, accumulating in f32; the sum is rounded once to bf16. The CUDA kernels add
// the same products in another order (and apply the NVFP4 tensor scale after the sum), so the
// two agree within the accumulation bound stated in tests/fp4_gemm_test.ts, not bit for bit.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../decode_backend.hpp"
#include "../error.hpp"
#include "../formats.hpp"
#include "../gemm_backend.hpp"
#include "../gemv_segments.hpp"

namespace {

int64_t group_of(int32_t format) { return format == FP4_WEIGHTS_MXFP4 ? 32 : 16; }

fp4_status check_shape(const char *fn, int32_t format, float tensor_scale, int64_t batch,
                       int64_t n, int64_t k) {
  FP4_REQUIRE(format == FP4_WEIGHTS_MXFP4 || format == FP4_WEIGHTS_NVFP4,
              "%s: format %d is not 0 (mxfp4) or 1 (nvfp4)", fn, format);
  FP4_REQUIRE(batch >= 1 && n >= 1 && k >= 1, "%s: batch, n and k must be >= 1 (got %lld, %lld, %lld)",
              fn, (long long)batch, (long long)n, (long long)k);
  int64_t g = group_of(format);
  FP4_REQUIRE(k % g == 0, "%s: k = %lld is not a multiple of the %s group size %lld", fn,
              (long long)k, format == FP4_WEIGHTS_MXFP4 ? "MXFP4" : "NVFP4", (long long)g);
  FP4_REQUIRE(n <= (int64_t(1) << 31) - 1 && k <= (int64_t(1) << 31) - 1 &&
                  batch <= (int64_t(1) << 31) - 1,
              "%s: dimensions must be below 2^31", fn);
  if (format == FP4_WEIGHTS_NVFP4) {
    FP4_REQUIRE(std::isfinite(tensor_scale) && tensor_scale > 0,
                "%s: the NVFP4 tensor scale must be finite and > 0 (got %g)", fn,
                double(tensor_scale));
  }
  return FP4_OK;
}

// Rows [ends[i - 1], ends[i]) use tensor_scales[i] (one segment: the whole matrix).
void gemm_cpu(int32_t format, const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
              const float *tensor_scales, const int64_t *ends, uint16_t *y, int64_t batch,
              int64_t n, int64_t k) {
  const int64_t g = group_of(format);
  const fp4::fmt::Minifloat e2m1 = fp4::fmt::fmt_e2m1(), e4m3 = fp4::fmt::fmt_e4m3();
  float value[16];
  for (uint32_t c = 0; c < 16; c++) value[c] = fp4::fmt::mf_decode(e2m1, c);
#pragma omp parallel
  {
    std::vector<float> w(size_t(k), 0.0f);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < n; row++) {
      const uint8_t *rc = codes + row * (k / 2);
      const uint8_t *rs = scales + row * (k / g);
      int64_t seg = 0;
      while (row >= ends[seg]) seg++;
      const float tensor_scale = tensor_scales[seg];
      for (int64_t j = 0; j < k / g; j++) {
        float s = format == FP4_WEIGHTS_MXFP4
                      ? fp4::fmt::e8m0_decode(rs[j])
                      : fp4::fmt::mf_decode(e4m3, rs[j]) * tensor_scale;
        for (int64_t i = j * g; i < (j + 1) * g; i += 2) {
          uint8_t byte = rc[i / 2];
          w[size_t(i)] = value[byte & 15] * s;
          w[size_t(i + 1)] = value[byte >> 4] * s;
        }
      }
      for (int64_t b = 0; b < batch; b++) {
        const uint16_t *xb = x + b * k;
        float acc = 0.0f;
        for (int64_t i = 0; i < k; i++) acc += fp4::fmt::bf16_to_f32(xb[i]) * w[size_t(i)];
        y[b * n + row] = fp4::fmt::f32_to_bf16(acc);
      }
    }
  }
}

// The kernel set named by $FP4LAB_GEMM_WGMMA (unset or empty: v4), -1 for an unknown name.
int kernels_from_env() {
  const char *e = std::getenv("FP4LAB_GEMM_WGMMA");
  if (!e || !*e || std::strcmp(e, "v4") == 0) return FP4_GEMM_KERNELS_V4;
  if (std::strcmp(e, "lean") == 0) return FP4_GEMM_KERNELS_LEAN;
  if (std::strcmp(e, "lean3") == 0) return FP4_GEMM_KERNELS_LEAN3;
  return -1;
}

std::atomic<int> &kernel_set() {
  static std::atomic<int> set{kernels_from_env()};
  return set;
}

}  // namespace

int fp4::cuda::gemm_kernels() { return kernel_set().load(std::memory_order_relaxed); }

FP4_API fp4_status fp4_gemm_set_kernels(int32_t set) {
  FP4_REQUIRE(set == FP4_GEMM_KERNELS_V4 || set == FP4_GEMM_KERNELS_LEAN ||
                  set == FP4_GEMM_KERNELS_LEAN3,
              "fp4_gemm_set_kernels: set %d is not 0 (v4), 1 (lean) or 2 (lean3)", set);
  kernel_set().store(set, std::memory_order_relaxed);
  return FP4_OK;
}

FP4_API fp4_status fp4_gemm(int32_t device, int32_t format, const uint16_t *x,
                            const uint8_t *codes, const uint8_t *scales, float tensor_scale,
                            uint16_t *y, int64_t batch, int64_t n, int64_t k) {
  FP4_GUARD({
    if (fp4_status s = check_shape("fp4_gemm", format, tensor_scale, batch, n, k)) return s;
    FP4_REQUIRE(x && codes && scales && y, "fp4_gemm: null pointer");
    if (device == FP4_DEVICE_CPU) {
      gemm_cpu(format, x, codes, scales, &tensor_scale, &n, y, batch, n, k);
      return FP4_OK;
    }
    FP4_REQUIRE(device == FP4_DEVICE_CUDA, "fp4_gemm: unknown device id %d (0 = cpu, 1 = cuda)",
                device);
    FP4_CUDA_ONLY(return fp4::cuda::gemm(format, x, codes, scales, tensor_scale, y, batch, n, k));
  })
}

// The checks of fp4_gemm_segments, in the words of `fn`.
static fp4_status check_segments(const char *fn, int32_t format, const uint16_t *x, const uint8_t *codes,
                          const uint8_t *scales, const float *tensor_scales,
                          const int64_t *segment_ends, int32_t segments, const uint16_t *y,
                          int64_t batch, int64_t n, int64_t k) {
  FP4_REQUIRE(segments >= 1 && segments <= fp4::cuda::kMaxGemvSegments,
              "%s: %d segments, expected 1 to %d", fn, segments, fp4::cuda::kMaxGemvSegments);
  FP4_REQUIRE(tensor_scales && segment_ends, "%s: null pointer", fn);
  for (int32_t i = 0; i < segments; i++) {
    const int64_t lo = i == 0 ? 0 : segment_ends[i - 1];
    FP4_REQUIRE(segment_ends[i] > lo, "%s: segment %d ends at %lld, not above %lld", fn, i,
                (long long)segment_ends[i], (long long)lo);
    if (fp4_status s = check_shape(fn, format, tensor_scales[i], batch, n, k)) return s;
  }
  FP4_REQUIRE(segment_ends[segments - 1] == n, "%s: the last segment ends at %lld, not at n = %lld",
              fn, (long long)segment_ends[segments - 1], (long long)n);
  FP4_REQUIRE(x && codes && scales && y, "%s: null pointer", fn);
  return FP4_OK;
}

FP4_API fp4_status fp4_gemm_segments(int32_t device, int32_t format, const uint16_t *x,
                                     const uint8_t *codes, const uint8_t *scales,
                                     const float *tensor_scales, const int64_t *segment_ends,
                                     int32_t segments, uint16_t *y, int64_t batch, int64_t n,
                                     int64_t k) {
  FP4_GUARD({
    if (fp4_status s = check_segments("fp4_gemm_segments", format, x, codes, scales,
                                      tensor_scales, segment_ends, segments, y, batch, n, k))
      return s;
    if (device == FP4_DEVICE_CPU) {
      gemm_cpu(format, x, codes, scales, tensor_scales, segment_ends, y, batch, n, k);
      return FP4_OK;
    }
    FP4_REQUIRE(device == FP4_DEVICE_CUDA,
                "fp4_gemm_segments: unknown device id %d (0 = cpu, 1 = cuda)", device);
    FP4_REQUIRE(batch <= fp4::cuda::kGemvMaxBatch,
                "fp4_gemm_segments: batch %lld > %lld on CUDA (one fp4_gemm per segment instead)",
                (long long)batch, (long long)fp4::cuda::kGemvMaxBatch);
    FP4_CUDA_ONLY(return fp4::cuda::gemm_segments(format, x, codes, scales, tensor_scales,
                                                  segment_ends, segments, y, batch, n, k));
  })
}

FP4_API fp4_status fp4_dec_gate_up_silu(int32_t device, int32_t format, const uint16_t *x,
                                        const uint8_t *codes, const uint8_t *scales,
                                        const float *tensor_scales, uint16_t *y, int64_t half,
                                        int64_t k) {
  FP4_GUARD({
    const char *fn = "fp4_dec_gate_up_silu";
    FP4_REQUIRE(half >= 1 && half <= (int64_t(1) << 30), "%s: half = %lld out of range", fn,
                (long long)half);
    int64_t ends[2];  // not a braced list: FP4_GUARD's argument
    ends[0] = half;
    ends[1] = 2 * half;
    if (fp4_status s = check_segments(fn, format, x, codes, scales, tensor_scales, ends, 2, y, 1,
                                      2 * half, k))
      return s;
    if (device == FP4_DEVICE_CPU) {
      gemm_cpu(format, x, codes, scales, tensor_scales, ends, y, 1, 2 * half, k);
      return fp4_dec_silu_mul(FP4_DEVICE_CPU, y, y + half, y, FP4_DTYPE_BF16, uint64_t(half));
    }
    FP4_REQUIRE(device == FP4_DEVICE_CUDA, "%s: unknown device id %d (0 = cpu, 1 = cuda)", fn,
                device);
    FP4_CUDA_ONLY(return fp4::cuda::gemm_gate_up_silu(format, x, codes, scales, tensor_scales, y,
                                                      half, k));
  })
}

FP4_API fp4_status fp4_dec_qkv_rope_kv_store(int32_t device, int32_t format, const uint16_t *x,
                                             const uint8_t *codes, const uint8_t *scales,
                                             const float *tensor_scales, uint16_t *qkv,
                                             const float *cos, const float *sin,
                                             const int32_t *pos, int64_t ctx, int64_t heads,
                                             int64_t kv_heads, int64_t head_dim, int64_t k,
                                             void *k_cache, void *v_cache, int32_t cache_dtype) {
  FP4_GUARD({
    const char *fn = "fp4_dec_qkv_rope_kv_store";
    FP4_REQUIRE(ctx > 0 && heads > 0 && kv_heads > 0 && head_dim > 0 && head_dim % 2 == 0 &&
                    (heads + 2 * kv_heads) * head_dim <= (int64_t(1) << 31) - 1,
                "%s: bad sizes (ctx %lld, heads %lld, kv_heads %lld, head_dim %lld must be even)",
                fn, (long long)ctx, (long long)heads, (long long)kv_heads, (long long)head_dim);
    FP4_REQUIRE(cache_dtype == FP4_DTYPE_F32 || cache_dtype == FP4_DTYPE_BF16,
                "%s: cache dtype %d is not f32 (0) or bf16 (2)", fn, cache_dtype);
    FP4_REQUIRE(cos && sin && pos && k_cache && v_cache, "%s: null pointer", fn);
    const int64_t qn = heads * head_dim;
    const int64_t kn = kv_heads * head_dim;
    int64_t ends[3];  // not a braced list: FP4_GUARD's argument
    ends[0] = qn;
    ends[1] = qn + kn;
    ends[2] = qn + 2 * kn;
    if (fp4_status s = check_segments(fn, format, x, codes, scales, tensor_scales, ends, 3, qkv,
                                      1, ends[2], k))
      return s;
    if (device == FP4_DEVICE_CPU) {
      // Checked before the product so that a bad position leaves qkv as it was.
      FP4_REQUIRE(*pos >= 0 && *pos < ctx, "%s: position %d does not fit a cache of %lld rows",
                  fn, *pos, (long long)ctx);
      gemm_cpu(format, x, codes, scales, tensor_scales, ends, qkv, 1, ends[2], k);
      return fp4_dec_rope_kv_store(FP4_DEVICE_CPU, qkv, qkv + qn, qkv + qn + kn, FP4_DTYPE_BF16,
                                   cos, sin, pos, ctx, 1, heads, kv_heads, head_dim, k_cache,
                                   v_cache, cache_dtype);
    }
    FP4_REQUIRE(device == FP4_DEVICE_CUDA, "%s: unknown device id %d (0 = cpu, 1 = cuda)", fn,
                device);
    FP4_CUDA_ONLY(return fp4::cuda::gemm_qkv_rope_kv_store(
                      format, x, codes, scales, tensor_scales, qkv, cos, sin, pos, ctx, heads,
                      kv_heads, head_dim, k, k_cache, v_cache, cache_dtype));
  })
}

FP4_API fp4_status fp4_dec_gemv_add_rmsnorm(int32_t device, int32_t format, const uint16_t *x,
                                            const uint8_t *codes, const uint8_t *scales,
                                            float tensor_scale, uint16_t *y, int64_t n,
                                            int64_t k, float *hidden, const void *w,
                                            int32_t w_dtype, uint16_t *out, float eps,
                                            int32_t *counter) {
  FP4_GUARD({
    const char *fn = "fp4_dec_gemv_add_rmsnorm";
    if (fp4_status s = check_segments(fn, format, x, codes, scales, &tensor_scale, &n, 1, y, 1, n,
                                      k))
      return s;
    FP4_REQUIRE(hidden && w && out && counter, "%s: null pointer", fn);
    FP4_REQUIRE(w_dtype == FP4_DTYPE_F32 || w_dtype == FP4_DTYPE_BF16,
                "%s: norm weight dtype %d is not f32 (0) or bf16 (2)", fn, w_dtype);
    if (device == FP4_DEVICE_CPU) {
      gemm_cpu(format, x, codes, scales, &tensor_scale, &n, y, 1, n, k);
      return fp4_dec_add_rmsnorm(FP4_DEVICE_CPU, hidden, y, FP4_DTYPE_BF16, w, w_dtype, out,
                                 FP4_DTYPE_BF16, 1, n, eps);
    }
    FP4_REQUIRE(device == FP4_DEVICE_CUDA, "%s: unknown device id %d (0 = cpu, 1 = cuda)", fn,
                device);
    FP4_CUDA_ONLY(return fp4::cuda::gemv_add_rmsnorm(format, x, codes, scales, tensor_scale, y, n,
                                                     k, hidden, w, w_dtype, out, eps, counter));
  })
}

static fp4_status check_timing(const char *fn, int32_t copies, int32_t reps, int32_t nsamples,
                               const float *samples) {
  FP4_REQUIRE(copies >= 1 && reps >= 1 && nsamples >= 1,
              "%s: copies, reps and nsamples must be >= 1 (got %d, %d, %d)", fn, copies, reps,
              nsamples);
  FP4_REQUIRE(samples, "%s: samples is null", fn);
  return FP4_OK;
}

FP4_API fp4_status fp4_gemm_bench(int32_t format, const uint16_t *x, const uint8_t *codes,
                                  const uint8_t *scales, float tensor_scale, uint16_t *y,
                                  int64_t batch, int64_t n, int64_t k, int32_t copies, int32_t reps,
                                  int32_t nsamples, float *samples) {
  FP4_GUARD({
    if (fp4_status s = check_shape("fp4_gemm_bench", format, tensor_scale, batch, n, k)) return s;
    if (fp4_status s = check_timing("fp4_gemm_bench", copies, reps, nsamples, samples)) return s;
    FP4_REQUIRE(x && codes && scales && y, "fp4_gemm_bench: null pointer");
    FP4_CUDA_ONLY(return fp4::cuda::gemm_bench(format, x, codes, scales, tensor_scale, y, batch, n,
                                               k, copies, reps, nsamples, samples));
  })
}

FP4_API fp4_status fp4_copy_bench(void *dst, const void *src, uint64_t bytes, int32_t reps,
                                  int32_t nsamples, float *samples) {
  FP4_GUARD({
    if (fp4_status s = check_timing("fp4_copy_bench", 1, reps, nsamples, samples)) return s;
    FP4_REQUIRE(dst && src && bytes > 0, "fp4_copy_bench: null pointer or zero bytes");
    FP4_CUDA_ONLY(return fp4::cuda::copy_bench(dst, src, bytes, reps, nsamples, samples));
  })
}

FP4_API fp4_status fp4_cublas_bench(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t batch, int64_t n, int64_t k,
                                    int32_t copies, int32_t reps, int32_t nsamples,
                                    float *samples) {
  FP4_GUARD({
    if (fp4_status s = check_timing("fp4_cublas_bench", copies, reps, nsamples, samples)) return s;
    FP4_REQUIRE(x && w && y, "fp4_cublas_bench: null pointer");
    FP4_REQUIRE(batch >= 1 && n >= 1 && k >= 1 && batch < (int64_t(1) << 31) &&
                    n < (int64_t(1) << 31) && k < (int64_t(1) << 31),
                "fp4_cublas_bench: batch, n, k must be in [1, 2^31)");
    FP4_CUDA_ONLY(return fp4::cuda::cublas_bench(x, w, y, batch, n, k, copies, reps,
                                                 nsamples, samples));
  })
}
