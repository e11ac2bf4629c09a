// Device fast paths of the group quantizers (quantize.cu, rotate_quantize.cu), equal bit for bit
// to the shared primitives of formats.hpp:
//  - e2m1_magnitude: mf_encode(fmt_e2m1(), v) for finite v >= 0, in integer and one-FMA steps
//    instead of the generic minifloat walk;
//  - GroupDivider: RN(m / S) for every element m >= 0 of a group with scale S, from one
//    reciprocal per group (IEEE division costs a MUFU and a range check per element);
//  - encode8: the packed codes of 8 elements, with the divider's mode chosen once per chunk;
//  - fast_scale: scale_for of the two presets' rules (E8M0 OCP; E4M3 absmax) without the
//    generic rule switch and minifloat walk;
//  - 8-element chunk loads of bf16/f32 rows as 16-byte vectors;
//  - programmatic dependent launch (Hopper): a kernel's loads of its input start while the
//    kernel before it (statistics, initialisation) finishes; griddepcontrol.wait precedes every
//    read or write of what that kernel produces or uses.
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "../formats.hpp"

namespace fp4::cuda {

// Magnitude code (0..7) of mf_encode(e2m1, v) for finite v >= 0. At v >= 1 the code is
// (biased exponent, top mantissa bit) rounded to nearest even at bit 22 — the carry of the
// addition moves into the exponent exactly as the grid does — less 252, capped at 7 (v >= 6
// saturates; (5, 6) rounds to 6 anyway). Below 1 the grid is the subnormal one, step 1/2:
// RN(2v + 2^23) - 2^23 is rint(2v), ties to even (2v is exact, so the FMA rounds once).
__device__ __forceinline__ uint32_t e2m1_magnitude(float v) {
  const uint32_t u = __float_as_uint(v);
  const uint32_t hi = min((u + 0x1fffffu + ((u >> 22) & 1u)) >> 22, 259u) - 252u;
  const uint32_t lo = __float_as_uint(__fmaf_rn(v, 2.0f, 8388608.0f)) - 0x4b000000u;
  return u >= 0x3f800000u ? hi : lo;
}

// RN(m / S) for one group's elements m >= 0 (magnitudes: the sign is the input's, since S > 0).
//  - S a normal power of two: 1/S is exact, so m * (1/S) is the same rounding of the same real.
//  - S in [2^-64, 2^64] with amax / S below 2^60: y = RN(1/S) once, then per element
//    q0 = RN(m y) and two corrections q <- RN(q + RN(m - S q) y) (the residual is exact by FMA).
//    After the first, q is faithful; with y correctly rounded the second gives RN(m / S)
//    (Markstein's theorem), for every m whose quotient is normal. Quotients that are not
//    (m / S < 2^-60, far below e2m1's first rounding boundary 1/4) encode to magnitude 0 from
//    any approximation near them, so the codes still agree.
//  - otherwise the IEEE division per element.
struct GroupDivider {
  float S, y;
  int mode;  // 0: power of two, 1: reciprocal + corrections, 2: division

  __device__ __forceinline__ GroupDivider(float s, float amax) : S(s) {
    const uint32_t b = __float_as_uint(s);
    const uint32_t e = (b >> 23) & 0xffu;
    if ((b & 0x7fffffu) == 0 && e >= 1 && e <= 253) {
      mode = 0;
      y = __uint_as_float((254u - e) << 23);  // 2^-(e - 127)
    } else if (s >= 0x1p-64f && s <= 0x1p64f) {
      y = __frcp_rn(s);
      mode = amax * y <= 0x1p60f ? 1 : 2;
    } else {
      y = 0.0f;
      mode = 2;
    }
  }

  __device__ __forceinline__ float operator()(float m) const {
    if (mode == 0) return m * y;
    if (mode == 1) {
      float q = m * y;
      q = __fmaf_rn(__fmaf_rn(-S, q, m), y, q);
      return __fmaf_rn(__fmaf_rn(-S, q, m), y, q);
    }
    return m / S;
  }
};

// Packed 4-bit codes (element i in bits 4i..4i+3) of 8 elements of a group with scale S > 0.
template <int kMode>
__device__ __forceinline__ uint32_t encode8_mode(const GroupDivider &div, const float (&v)[8]) {
  uint32_t word = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const uint32_t b = __float_as_uint(v[i]);
    const float m = __uint_as_float(b & 0x7fffffffu);
    float q;
    if (kMode == 0) {
      q = m * div.y;
    } else if (kMode == 1) {
      q = m * div.y;
      q = __fmaf_rn(__fmaf_rn(-div.S, q, m), div.y, q);
      q = __fmaf_rn(__fmaf_rn(-div.S, q, m), div.y, q);
    } else {
      q = m / div.S;
    }
    word |= (e2m1_magnitude(q) | ((b >> 28) & 8u)) << (4 * i);
  }
  return word;
}

__device__ __forceinline__ uint32_t encode8(float S, float amax, const float (&v)[8]) {
  if (S == 0.0f) return 0;
  const GroupDivider div(S, amax);
  if (div.mode == 0) return encode8_mode<0>(div, v);
  if (div.mode == 1) return encode8_mode<1>(div, v);
  return encode8_mode<2>(div, v);
}

// Which scale_for a fast kernel inlines: the generic one, E8M0 with rule OCP and no tensor
// scale (MXFP4), or E4M3 with rule absmax (NVFP4, with or without the tensor amax).
enum FastScale { kScaleGeneric = 0, kScaleMx = 1, kScaleNv = 2 };

// mf_encode(ue4m3, r) for finite 0 <= r < 448, the E2M1 encoder's steps with 3 mantissa bits:
// normal r rounds at bit 20 (the carry moves into the exponent), subnormal r is rint(512 r).
__device__ __forceinline__ uint32_t ue4m3_encode(float r) {
  const uint32_t u = __float_as_uint(r);
  const uint32_t hi = ((u + 0x7ffffu + ((u >> 20) & 1u)) >> 20) - (120u << 3);
  const uint32_t lo = __float_as_uint(__fmaf_rn(r, 512.0f, 8388608.0f)) - 0x4b000000u;
  return u >= 0x3c800000u ? hi : lo;  // 2^-6, the smallest normal
}

// mf_decode(ue4m3, c) for codes 0..0x7e: normal codes are the f32 bits shifted into place.
__device__ __forceinline__ float ue4m3_decode(uint32_t c) {
  return c >= 8u ? __uint_as_float((c << 20) + (120u << 23)) : float(c) * 0x1p-9f;
}

// scale_for(q, amax, -, -, 1) for E2M1 elements (any rule but minmax) and finite amax >= 0.
//  - kScaleMx: floor_log2_full(amax) - 2 clamped to E8M0 is max(exponent field, 2) - 2, also
//    for zero and subnormal amax (both clamp to code 0, the value 2^-127).
//  - kScaleNv: the same two IEEE divisions as the rule; encode and decode of in-range E4M3
//    without the generic walk; out of range (saturation, s_t = 0 or Inf) takes the rule.
template <int kScale>
__device__ __forceinline__ fmt::GroupScale fast_scale(const fmt::QuantParams &q, float amax) {
  if constexpr (kScale == kScaleMx) {
    const uint32_t bits = max(__float_as_uint(amax) >> 23, 2u) - 2u;
    return fmt::GroupScale{bits, bits ? __uint_as_float(bits << 23) : 0x1p-127f, 0};
  } else if constexpr (kScale == kScaleNv) {
    float raw = amax / q.M;
    if (q.tensor_amax) raw = raw / q.s_t;
    if (raw < 448.0f) {
      const uint32_t bits = ue4m3_encode(raw);
      const float d = ue4m3_decode(bits);
      return fmt::GroupScale{bits, q.has_st ? d * q.s_t : d, 0};
    }
  }
  return fmt::scale_for(q, amax, 0.0f, 0.0f, 1.0f);
}

// Programmatic dependent launch: let the next kernel of the stream start, and wait for the
// previous one (its writes become visible).
__device__ __forceinline__ void pdl_launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

// kernel<<<grid, block>>>(args...) that may start before the previous kernel of the stream ends.
template <class... P, class... A>
cudaError_t launch_pdl(void (*kernel)(P...), unsigned grid, unsigned block, A &&...args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(block);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

// The 8 consecutive elements of chunk c (elements 8c .. 8c+7) as float32; x 16-byte aligned.
template <bool kBf16>
__device__ __forceinline__ void load_chunk8(const void *x, uint64_t c, float (&v)[8]) {
  if constexpr (kBf16) {
    const uint4 w = __ldg(reinterpret_cast<const uint4 *>(x) + c);
    const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      v[2 * i] = __uint_as_float(ws[i] << 16);
      v[2 * i + 1] = __uint_as_float(ws[i] & 0xffff0000u);
    }
  } else {
    const float4 a = __ldg(reinterpret_cast<const float4 *>(x) + 2 * c);
    const float4 b = __ldg(reinterpret_cast<const float4 *>(x) + 2 * c + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
}

// max over the chunk of the bits of |v|: as floats these order like their values, and any
// bit pattern at or above 0x7f800000 is an infinity or NaN.
__device__ __forceinline__ uint32_t magnitude_bits8(const float (&v)[8]) {
  uint32_t m = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) m = max(m, __float_as_uint(v[i]) & 0x7fffffffu);
  return m;
}

}  // namespace fp4::cuda
