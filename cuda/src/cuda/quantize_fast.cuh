// Device fast paths of the group quantizers (quantize.cu, rotate_quantize.cu), equal bit for bit
// to the shared primitives of formats.hpp:
//  - e2m1_magnitude: mf_encode(fmt_e2m1(), v) for finite v >= 0, in integer and one-FMA steps
//    instead of the generic minifloat walk;
//  - GroupDivider: RN(m / S) for every element m >= 0 of a group with scale S, from one
//    reciprocal per group (IEEE division costs a MUFU and a range check per element);
//  - 8-element chunk loads of bf16/f32 rows as 16-byte vectors.
#pragma once
#include <cuda_runtime.h>

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
