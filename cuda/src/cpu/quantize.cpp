// Formats entry points (element conversion, quantize, dequantize, rotate+quantize, benchmark
// timing): argument validation shared by both backends, and the CPU backend.
//
// CPU quantize: one scan for non-finite values and the tensor amax, then two OpenMP passes —
// phase A picks every group's scale (groups in parallel), phase B encodes and packs the
// elements (bytes in parallel, each looking up its group), so any group size packs race-free.
// Bytes moved: reads the input twice (three times with an MSE search), writes packed codes,
// scales and zero points.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../formats.hpp"

namespace fp4::cpu {

using namespace fp4::fmt;

void hadamard_rows(int32_t dtype, const void *x, int32_t out_dtype, void *out, uint64_t rows,
                   uint64_t cols, int32_t block, bool inverse, bool has_seed, uint64_t seed);
fp4_status check_hadamard(const char *fn, int32_t dtype, uint64_t rows, uint64_t cols,
                          int32_t block);

fp4_status formats_check_device(int32_t device) {
  if (device == FP4_DEVICE_CPU) return FP4_OK;
  if (device == FP4_DEVICE_CUDA) {
    FP4_CUDA_ONLY(return fp4::cuda::ensure_device());
  }
  return fail(FP4_ERR_INVALID_ARGUMENT, "unknown device id %d (0 = cpu, 1 = cuda)", device);
}

namespace {

// The rules of resolveSpec (lib/formats/spec.ts) plus the shape rules of quantize (§5.1-5.3).
fp4_status validate(const char *fn, const fp4_quant_spec *s, uint64_t rows, uint64_t cols) {
  FP4_REQUIRE(s, "%s: spec is null", fn);
  FP4_REQUIRE(s->element >= FP4_CODEC_E2M1 && s->element <= FP4_CODEC_MXINT8 &&
                  s->element != FP4_CODEC_UE4M3 && s->element != FP4_CODEC_UE5M3,
              "%s: unknown element code %d", fn, s->element);
  FP4_REQUIRE(s->scale_format >= FP4_SCALE_E8M0 && s->scale_format <= FP4_SCALE_F16,
              "%s: unknown scale format code %d", fn, s->scale_format);
  FP4_REQUIRE(s->scale_rule >= FP4_RULE_OCP && s->scale_rule <= FP4_RULE_MINMAX,
              "%s: unknown scale rule code %d", fn, s->scale_rule);
  FP4_REQUIRE(s->tensor_scale >= 0 && s->tensor_scale <= 2,
              "%s: tensor_scale must be 0 (none), 1 (amax) or 2 (given), got %d", fn,
              s->tensor_scale);
  FP4_REQUIRE(s->rounding == 0 || s->rounding == 1,
              "%s: rounding must be 0 (rne) or 1 (stochastic), got %d", fn, s->rounding);
  if (s->tensor_scale == 2) {
    FP4_REQUIRE(std::isfinite(s->tensor_scale_value) && s->tensor_scale_value > 0,
                "%s: a given tensor scale must be finite and > 0, got %g", fn,
                double(s->tensor_scale_value));
  } else {
    FP4_REQUIRE(s->tensor_scale_value == 0,
                "%s: tensor_scale_value must be 0 unless tensor_scale is 2 (given)", fn);
  }
  const bool asym = s->element == FP4_CODEC_UINT4 || s->element == FP4_CODEC_UINT8;
  const int r = s->scale_rule;
  if (s->scale_format == FP4_SCALE_E8M0) {
    FP4_REQUIRE(r <= FP4_RULE_MR_GPTQ, "%s: scale rule %d does not apply to e8m0 scales", fn, r);
    FP4_REQUIRE(!asym, "%s: asymmetric elements need a zero point, which e8m0 scales lack", fn);
  } else {
    FP4_REQUIRE(r == (asym ? FP4_RULE_MINMAX : FP4_RULE_ABSMAX),
                "%s: scale rule %d does not fit scale format %d and element %d", fn, r,
                s->scale_format, s->element);
  }
  if (s->tensor_scale != 0) {
    FP4_REQUIRE(s->scale_format == FP4_SCALE_E4M3 || s->scale_format == FP4_SCALE_UE5M3,
                "%s: a tensor scale needs e4m3 or ue5m3 group scales", fn);
    FP4_REQUIRE(!asym, "%s: a tensor scale does not combine with asymmetric elements", fn);
  }
  FP4_REQUIRE(s->mse_candidates >= 0 && s->mse_candidates <= 10000,
              "%s: mse_candidates must be in 0..10000, got %d", fn, s->mse_candidates);
  if (s->mse_candidates > 0) {
    FP4_REQUIRE(s->mse_min_shrink > 0 && s->mse_min_shrink <= 4,
                "%s: mse_min_shrink must be in (0, 4], got %g", fn, s->mse_min_shrink);
    FP4_REQUIRE(std::isfinite(s->mse_norm) && s->mse_norm > 0,
                "%s: mse_norm must be finite and > 0, got %g", fn, s->mse_norm);
  }
  FP4_REQUIRE(rows > 0 && cols > 0, "%s: empty tensor [%llu, %llu]", fn,
              (unsigned long long)rows, (unsigned long long)cols);
  FP4_REQUIRE(rows <= (uint64_t(1) << 62) / cols, "%s: [%llu, %llu] is too large", fn,
              (unsigned long long)rows, (unsigned long long)cols);
  const int g = s->group_size;
  FP4_REQUIRE(g > 0 || g == FP4_GROUP_CHANNEL || g == FP4_GROUP_TENSOR,
              "%s: group size must be > 0, -1 (channel) or -2 (tensor), got %d", fn, g);
  FP4_REQUIRE(g < 0 || cols % uint64_t(g) == 0, "%s: group size %d does not divide the %llu columns",
              fn, g, (unsigned long long)cols);
  return FP4_OK;
}

QuantParams params_of(const fp4_quant_spec &s) {
  return make_params(s.element, s.scale_format, s.scale_rule, s.tensor_scale,
                     s.tensor_scale_value, s.rounding, s.mse_candidates, s.mse_min_shrink,
                     s.mse_norm, s.seed);
}

const char *js_number(float v, char *buf, size_t cap) {
  if (v != v) return "NaN";
  if (v > 0 && !std::isfinite(v)) return "Infinity";
  if (v < 0 && !std::isfinite(v)) return "-Infinity";
  snprintf(buf, cap, "%.9g", double(v));
  return buf;
}

// First non-finite element in linear order (n when none) and the max |x|, exact in any order.
template <class Load>
void scan(const Load &load, uint64_t n, uint64_t &first_bad, float &amax) {
  uint64_t bad = n;
  float a = 0.0f;
#pragma omp parallel for schedule(static) reduction(min : bad) reduction(max : a)
  for (int64_t i = 0; i < int64_t(n); i++) {
    float v = load(uint64_t(i));
    if (!is_finite(v)) {
      if (uint64_t(i) < bad) bad = uint64_t(i);
    } else {
      float av = fabsf(v);
      if (av > a) a = av;
    }
  }
  first_bad = bad;
  amax = a;
}

template <class Load>
struct Offset {
  Load load;
  uint64_t base;
  float operator()(uint64_t i) const { return load(base + i); }
};

// Magnitude code of mf_encode(e2m1, v) for finite v >= 0, without the generic minifloat walk
// (the CPU twin of e2m1_magnitude in cuda/src/cuda/quantize_fast.cuh): at v >= 1, RNE of the
// bits at bit 22 (the carry moves into the exponent as the grid does), capped at 7; below 1,
// rint(2v) through 2v + 2^23 (2v is exact, so the sum rounds once, ties to even).
inline uint32_t e2m1_magnitude(float v) {
  const uint32_t u = f32_bits(v);
  const uint32_t lo = f32_bits(v * 2.0f + 8388608.0f) - 0x4b000000u;
  const uint32_t n = (u + 0x1fffffu + ((u >> 22) & 1u)) >> 22;
  const uint32_t hi = (n < 259u ? n : 259u) - 252u;
  return u < 0x3f800000u ? lo : hi;  // both computed: a branch here mispredicts on real data
}

// One pass per group for groups of at most kFusedMax elements that own whole code bytes and
// need no MSE search: load the group once, take its statistics and scale, encode and pack,
// all while it is in L1. E2M1 with nearest rounding divides by a power-of-two scale as a
// multiplication by its exact reciprocal (the same rounding of the same real) and uses the
// short encoder above; the rest goes through quantize_element.
constexpr uint64_t kFusedMax = 256;

// Returns false when a group holds a non-finite value (that group is left unwritten).
template <class Load>
bool quantize_groups_fused(const QuantParams &q, const Layout &l, const Load &load,
                           uint8_t *codes, uint8_t *scales, uint8_t *zeros) {
  const bool fast = q.elem == CODEC_E2M1 && !q.stochastic && q.rule != RULE_MINMAX;
  const uint64_t len = l.len;
  int finite = 1;
#pragma omp parallel for schedule(static) reduction(min : finite)
  for (int64_t g = 0; g < int64_t(l.groups); g++) {
    const uint64_t start = uint64_t(g) * len;
    float v[kFusedMax];
    for (uint64_t i = 0; i < len; i++) v[i] = load(start + i);
    float a = 0.0f, lo = 0.0f, hi = 0.0f;
    uint32_t mag = 0;  // max bits of |x|: at or above 0x7f800000 means Inf or NaN
    for (uint64_t i = 0; i < len; i++) {
      const float x = v[i], ax = fabsf(x);
      const uint32_t mb = f32_bits(ax);
      mag = mb > mag ? mb : mag;
      a = ax > a ? ax : a;
      lo = x < lo ? x : lo;
      hi = x > hi ? x : hi;
    }
    if (mag >= 0x7f800000u) {
      finite = 0;
      continue;
    }
    const GroupScale gs = scale_for(q, a, lo, hi, 1.0f);
    store_scale(scales, uint64_t(g), gs.bits, q.scale_nbytes);
    if (zeros) zeros[g] = uint8_t(gs.z);
    uint32_t c[kFusedMax];
    if (fast) {
      const uint32_t b = f32_bits(gs.S), e = (b >> 23) & 0xffu;
      const bool pow2 = (b & 0x7fffffu) == 0 && e >= 1 && e <= 253;
      const float y = pow2 ? bits_f32((254u - e) << 23) : 0.0f;
      auto encode = [&](auto divide) {
        for (uint64_t i = 0; i < len; i++) {
          const uint32_t xb = f32_bits(v[i]);
          c[i] = e2m1_magnitude(divide(bits_f32(xb & 0x7fffffffu))) | ((xb >> 28) & 8u);
        }
      };
      if (gs.S == 0.0f) {
        for (uint64_t i = 0; i < len; i++) c[i] = 0;
      } else if (pow2) {
        encode([y](float m) { return m * y; });
      } else {
        encode([S = gs.S](float m) { return m / S; });
      }
    } else {
      for (uint64_t i = 0; i < len; i++) {
        c[i] = quantize_element(q, gs, v[i], start + i, q.stochastic);
      }
    }
    if (q.code_bits == 4) {
      for (uint64_t i = 0; i < len; i += 2) {
        codes[(start + i) >> 1] = uint8_t((c[i] & 0xfu) | ((c[i + 1] & 0xfu) << 4));
      }
    } else {
      for (uint64_t i = 0; i < len; i++) codes[start + i] = uint8_t(c[i]);
    }
  }
  return finite != 0;
}

template <class Load>
fp4_status quantize_impl(const char *fn, const fp4_quant_spec &s, const Load &load, uint64_t rows,
                         uint64_t cols, uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                         float *tensor_scale) {
  const Layout l = make_layout(s.group_size, rows, cols);
  QuantParams q = params_of(s);
  const bool fused = s.group_size > 0 && q.mse_k == 0 && l.len <= kFusedMax &&
                     (q.code_bits != 4 || l.len % 2 == 0);
  // Without a tensor amax the fused pass finds non-finite input itself; the scan then runs only
  // to name the first bad element.
  if (fused && !q.tensor_amax) {
    if (q.has_st) *tensor_scale = q.s_t;
    if (quantize_groups_fused(q, l, load, codes, scales, zeros)) return FP4_OK;
  }
  uint64_t bad;
  float amax_t;
  scan(load, l.n, bad, amax_t);
  if (bad < l.n) {
    char buf[32];
    return fail(FP4_ERR_NUMERIC, "non-finite value %s at (row %llu, col %llu)",
                js_number(load(bad), buf, sizeof buf), (unsigned long long)(bad / cols),
                (unsigned long long)(bad % cols));
  }
  if (q.tensor_amax) q.s_t = tensor_scale_of(q, amax_t);
  if (q.has_st) *tensor_scale = q.s_t;
  if (fused) {
    quantize_groups_fused(q, l, load, codes, scales, zeros);
    return FP4_OK;
  }

  std::vector<float> S(l.groups);
  std::vector<int32_t> Z(l.groups);
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t g = 0; g < int64_t(l.groups); g++) {
    Offset<Load> group{load, uint64_t(g) * l.len};
    GroupScale gs = choose_scale(q, group, l.len);
    store_scale(scales, uint64_t(g), gs.bits, q.scale_nbytes);
    if (zeros) zeros[g] = uint8_t(gs.z);
    S[g] = gs.S;
    Z[g] = gs.z;
  }

  const bool sr = q.stochastic;
  auto code_of = [&](uint64_t i) -> uint32_t {
    const uint64_t g = i / l.len;
    GroupScale gs{0, S[g], Z[g]};
    return quantize_element(q, gs, load(i), i, sr);
  };
  if (q.code_bits == 4) {
    const int64_t nb = int64_t(code_bytes(4, l.n));
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < nb; j++) {
      const uint64_t i = uint64_t(j) * 2;
      uint32_t lo = code_of(i) & 0xfu;
      uint32_t hi = i + 1 < l.n ? (code_of(i + 1) & 0xfu) : 0u;
      codes[j] = uint8_t(lo | (hi << 4));
    }
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < int64_t(l.n); i++) codes[i] = uint8_t(code_of(uint64_t(i)));
  }
  return FP4_OK;
}

template <class Store>
void dequantize_impl(const fp4_quant_spec &s, const uint8_t *codes, const uint8_t *scales,
                     const uint8_t *zeros, float s_t, uint64_t rows, uint64_t cols,
                     const Store &store) {
  const Layout l = make_layout(s.group_size, rows, cols);
  QuantParams q = params_of(s);
  if (q.has_st) q.s_t = s_t;
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < int64_t(l.groups); g++) {
    const float S = effective_scale(q, load_scale(scales, uint64_t(g), q.scale_nbytes));
    const int z = zeros ? zeros[g] : 0;
    const uint64_t start = uint64_t(g) * l.len;
    for (uint64_t i = start; i < start + l.len; i++) {
      uint32_t bits = q.code_bits == 4 ? (codes[i >> 1] >> ((i & 1) * 4)) & 0xfu : codes[i];
      store(i, dequantize_element(q, S, z, bits));
    }
  }
}

fp4_status check_outputs(const char *fn, const fp4_quant_spec &s, const void *codes,
                         const void *scales, const void *zeros, const void *tensor_scale) {
  FP4_REQUIRE(codes && scales, "%s: codes or scales is null", fn);
  const bool asym = s.element == FP4_CODEC_UINT4 || s.element == FP4_CODEC_UINT8;
  FP4_REQUIRE(!asym || zeros, "%s: zeros is null (element %d needs zero points)", fn, s.element);
  const bool has_st = s.tensor_scale != 0 || s.scale_rule == FP4_RULE_MR_GPTQ;
  FP4_REQUIRE(!has_st || tensor_scale, "%s: tensor_scale is null (the spec has a tensor scale)", fn);
  return FP4_OK;
}

fp4_status rotate_quantize_cpu(const fp4_quant_spec &s, int32_t dtype, const void *x,
                               uint64_t rows, uint64_t cols, int32_t block, bool has_seed,
                               uint64_t seed, uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                               float *tensor_scale) {
  std::vector<float> y(rows * cols);
  hadamard_rows(dtype, x, FP4_DTYPE_F32, y.data(), rows, cols, block, false, has_seed, seed);
  return quantize_impl("fp4_rotate_quantize", s, LoadF32{y.data()}, rows, cols, codes, scales,
                       zeros, tensor_scale);
}

void encode_cpu(int32_t codec, const float *x, uint64_t n, const uint32_t *random, uint8_t *codes) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(n); i++) {
    codes[i] = uint8_t(codec_encode(codec, x[i], random != nullptr, random ? random[i] : 0u));
  }
}

void decode_cpu(int32_t codec, const uint8_t *codes, uint64_t n, float *out) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(n); i++) out[i] = codec_decode(codec, codes[i]);
}

}  // namespace
}  // namespace fp4::cpu

using fp4::cpu::formats_check_device;

FP4_API fp4_status fp4_encode(int32_t device, int32_t codec, const float *x, uint64_t n,
                              const uint32_t *random, uint8_t *codes) {
  FP4_GUARD({
    FP4_REQUIRE(codec >= 0 && codec < fp4::fmt::CODEC_COUNT, "fp4_encode: unknown codec %d", codec);
    if (n == 0) return FP4_OK;
    FP4_REQUIRE(x && codes, "fp4_encode: null pointer");
    if (fp4_status s = formats_check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      fp4::cpu::encode_cpu(codec, x, n, random, codes);
      return FP4_OK;
    }
    FP4_CUDA_ONLY(return fp4::cuda::encode(codec, x, n, random, codes));
  })
}

FP4_API fp4_status fp4_decode(int32_t device, int32_t codec, const uint8_t *codes, uint64_t n,
                              float *out) {
  FP4_GUARD({
    FP4_REQUIRE(codec >= 0 && codec < fp4::fmt::CODEC_COUNT, "fp4_decode: unknown codec %d", codec);
    if (n == 0) return FP4_OK;
    FP4_REQUIRE(codes && out, "fp4_decode: null pointer");
    if (fp4_status s = formats_check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      fp4::cpu::decode_cpu(codec, codes, n, out);
      return FP4_OK;
    }
    FP4_CUDA_ONLY(return fp4::cuda::decode(codec, codes, n, out));
  })
}

FP4_API fp4_status fp4_quant_sizes(const fp4_quant_spec *spec, uint64_t rows, uint64_t cols,
                                   uint64_t *code_bytes, uint64_t *scale_bytes,
                                   uint64_t *zero_bytes) {
  FP4_GUARD({
    if (fp4_status s = fp4::cpu::validate("fp4_quant_sizes", spec, rows, cols)) return s;
    FP4_REQUIRE(code_bytes && scale_bytes && zero_bytes, "fp4_quant_sizes: null output pointer");
    const fp4::fmt::Layout l = fp4::fmt::make_layout(spec->group_size, rows, cols);
    const fp4::fmt::QuantParams q = fp4::cpu::params_of(*spec);
    *code_bytes = fp4::fmt::code_bytes(q.code_bits, l.n);
    *scale_bytes = l.groups * uint64_t(q.scale_nbytes);
    *zero_bytes = q.asym ? l.groups : 0;
    return FP4_OK;
  })
}

FP4_API fp4_status fp4_quantize(int32_t device, const fp4_quant_spec *spec, int32_t dtype,
                                const void *x, uint64_t rows, uint64_t cols, uint8_t *codes,
                                uint8_t *scales, uint8_t *zeros, float *tensor_scale) {
  FP4_GUARD({
    const char *fn = "fp4_quantize";
    if (fp4_status s = fp4::cpu::validate(fn, spec, rows, cols)) return s;
    FP4_REQUIRE(dtype == FP4_DTYPE_F32 || dtype == FP4_DTYPE_BF16,
                "%s: dtype %d is not f32 (0) or bf16 (2)", fn, dtype);
    FP4_REQUIRE(x, "%s: x is null", fn);
    if (fp4_status s = fp4::cpu::check_outputs(fn, *spec, codes, scales, zeros, tensor_scale)) return s;
    if (fp4_status s = formats_check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      if (dtype == FP4_DTYPE_BF16) {
        return fp4::cpu::quantize_impl(fn, *spec, fp4::fmt::LoadBf16{static_cast<const uint16_t *>(x)},
                                       rows, cols, codes, scales, zeros, tensor_scale);
      }
      return fp4::cpu::quantize_impl(fn, *spec, fp4::fmt::LoadF32{static_cast<const float *>(x)}, rows,
                                     cols, codes, scales, zeros, tensor_scale);
    }
    FP4_CUDA_ONLY(return fp4::cuda::quantize(*spec, dtype, x, rows, cols, codes, scales, zeros,
                                             tensor_scale));
  })
}

FP4_API fp4_status fp4_dequantize(int32_t device, const fp4_quant_spec *spec,
                                  const uint8_t *codes, const uint8_t *scales,
                                  const uint8_t *zeros, const float *tensor_scale, uint64_t rows,
                                  uint64_t cols, int32_t out_dtype, void *out) {
  FP4_GUARD({
    const char *fn = "fp4_dequantize";
    if (fp4_status s = fp4::cpu::validate(fn, spec, rows, cols)) return s;
    FP4_REQUIRE(out_dtype == FP4_DTYPE_F32 || out_dtype == FP4_DTYPE_BF16,
                "%s: out_dtype %d is not f32 (0) or bf16 (2)", fn, out_dtype);
    FP4_REQUIRE(out, "%s: out is null", fn);
    if (fp4_status s = fp4::cpu::check_outputs(fn, *spec, codes, scales, zeros, tensor_scale)) return s;
    if (fp4_status s = formats_check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      const bool has_st = spec->tensor_scale != 0 || spec->scale_rule == FP4_RULE_MR_GPTQ;
      const float s_t = has_st ? *tensor_scale : 1.0f;
      if (out_dtype == FP4_DTYPE_BF16) {
        uint16_t *o = static_cast<uint16_t *>(out);
        fp4::cpu::dequantize_impl(*spec, codes, scales, zeros, s_t, rows, cols,
                                  [o](uint64_t i, float v) { o[i] = fp4::fmt::f32_to_bf16(v); });
      } else {
        float *o = static_cast<float *>(out);
        fp4::cpu::dequantize_impl(*spec, codes, scales, zeros, s_t, rows, cols,
                                  [o](uint64_t i, float v) { o[i] = v; });
      }
      return FP4_OK;
    }
    FP4_CUDA_ONLY(return fp4::cuda::dequantize(*spec, codes, scales, zeros, tensor_scale, rows, cols,
                                               out_dtype, out));
  })
}

FP4_API fp4_status fp4_rotate_quantize(int32_t device, const fp4_quant_spec *spec, int32_t dtype,
                                       const void *x, uint64_t rows, uint64_t cols,
                                       int32_t block, int32_t has_seed, uint64_t seed,
                                       uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                                       float *tensor_scale) {
  FP4_GUARD({
    const char *fn = "fp4_rotate_quantize";
    if (fp4_status s = fp4::cpu::validate(fn, spec, rows, cols)) return s;
    if (fp4_status s = fp4::cpu::check_hadamard(fn, dtype, rows, cols, block)) return s;
    FP4_REQUIRE(has_seed == 0 || has_seed == 1, "%s: has_seed must be 0 or 1, got %d", fn, has_seed);
    FP4_REQUIRE(x, "%s: x is null", fn);
    if (fp4_status s = fp4::cpu::check_outputs(fn, *spec, codes, scales, zeros, tensor_scale)) return s;
    if (fp4_status s = formats_check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      return fp4::cpu::rotate_quantize_cpu(*spec, dtype, x, rows, cols, block, has_seed, seed, codes,
                                           scales, zeros, tensor_scale);
    }
    FP4_CUDA_ONLY(return fp4::cuda::rotate_quantize(*spec, dtype, x, rows, cols, block, has_seed,
                                                    seed, codes, scales, zeros, tensor_scale));
  })
}

FP4_API fp4_status fp4_fake_quantize(int32_t device, const fp4_quant_spec *spec, int32_t dtype,
                                     const void *x, uint64_t rows, uint64_t cols, int32_t block,
                                     int32_t has_seed, uint64_t seed, uint8_t *codes,
                                     uint8_t *scales, uint8_t *zeros, float *tensor_scale,
                                     int32_t out_dtype, void *out) {
  FP4_GUARD({
    const char *fn = "fp4_fake_quantize";
    if (fp4_status s = fp4::cpu::validate(fn, spec, rows, cols)) return s;
    FP4_REQUIRE(dtype == FP4_DTYPE_F32 || dtype == FP4_DTYPE_BF16,
                "%s: dtype %d is not f32 (0) or bf16 (2)", fn, dtype);
    if (block != 0) {
      if (fp4_status s = fp4::cpu::check_hadamard(fn, dtype, rows, cols, block)) return s;
    }
    FP4_REQUIRE(has_seed == 0 || has_seed == 1, "%s: has_seed must be 0 or 1, got %d", fn, has_seed);
    FP4_REQUIRE(out_dtype == FP4_DTYPE_F32 || out_dtype == FP4_DTYPE_BF16,
                "%s: out_dtype %d is not f32 (0) or bf16 (2)", fn, out_dtype);
    FP4_REQUIRE(x && out, "%s: null pointer", fn);
    if (fp4_status s = fp4::cpu::check_outputs(fn, *spec, codes, scales, zeros, tensor_scale)) return s;
    if (fp4_status s = formats_check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      fp4_status s = block ? fp4_rotate_quantize(device, spec, dtype, x, rows, cols, block, has_seed,
                                                 seed, codes, scales, zeros, tensor_scale)
                           : fp4_quantize(device, spec, dtype, x, rows, cols, codes, scales, zeros,
                                          tensor_scale);
      if (s) return s;
      return fp4_dequantize(device, spec, codes, scales, zeros, tensor_scale, rows, cols, out_dtype,
                            out);
    }
    FP4_CUDA_ONLY(return fp4::cuda::fake_quantize(*spec, dtype, x, rows, cols, block, has_seed, seed,
                                                  codes, scales, zeros, tensor_scale, out_dtype,
                                                  out));
  })
}

FP4_API fp4_status fp4_bench_formats(int32_t device, int32_t op, const fp4_quant_spec *spec,
                                     int32_t dtype, const void *x, uint64_t rows, uint64_t cols,
                                     int32_t block, void *out, uint8_t *codes, uint8_t *scales,
                                     uint8_t *zeros, float *tensor_scale, int32_t iters,
                                     double *seconds) {
  FP4_GUARD({
    const char *fn = "fp4_bench_formats";
    FP4_REQUIRE(op >= 0 && op <= 2, "%s: op must be 0 (copy), 1 (quantize) or 2 (rotate+quantize), got %d", fn, op);
    FP4_REQUIRE(iters > 0, "%s: iters must be > 0, got %d", fn, iters);
    FP4_REQUIRE(seconds, "%s: seconds is null", fn);
    FP4_REQUIRE(dtype == FP4_DTYPE_F32 || dtype == FP4_DTYPE_BF16,
                "%s: dtype %d is not f32 (0) or bf16 (2)", fn, dtype);
    FP4_REQUIRE(x, "%s: x is null", fn);
    if (op == 0) {
      FP4_REQUIRE(out, "%s: out is null", fn);
    } else {
      if (fp4_status s = fp4::cpu::validate(fn, spec, rows, cols)) return s;
      if (fp4_status s = fp4::cpu::check_outputs(fn, *spec, codes, scales, zeros, tensor_scale)) return s;
    }
    if (op == 2) {
      if (fp4_status s = fp4::cpu::check_hadamard(fn, dtype, rows, cols, block)) return s;
    }
    if (fp4_status s = formats_check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      const uint64_t bytes = rows * cols * (dtype == FP4_DTYPE_BF16 ? 2 : 4);
      auto run = [&]() -> fp4_status {
        if (op == 0) {
          std::memcpy(out, x, bytes);
          return FP4_OK;
        }
        if (op == 1) return fp4_quantize(device, spec, dtype, x, rows, cols, codes, scales, zeros, tensor_scale);
        return fp4_rotate_quantize(device, spec, dtype, x, rows, cols, block, 0, 0, codes, scales, zeros,
                                   tensor_scale);
      };
      if (fp4_status s = run()) return s;
      auto t0 = std::chrono::steady_clock::now();
      for (int32_t i = 0; i < iters; i++) {
        if (fp4_status s = run()) return s;
      }
      auto t1 = std::chrono::steady_clock::now();
      *seconds = std::chrono::duration<double>(t1 - t0).count() / iters;
      return FP4_OK;
    }
    FP4_CUDA_ONLY(return fp4::cuda::bench_formats(op, spec, dtype, x, rows, cols, block, out, codes,
                                                  scales, zeros, tensor_scale, iters, seconds));
  })
}
