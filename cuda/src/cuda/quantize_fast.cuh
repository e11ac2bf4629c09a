// Device fast paths of the group quantizers (quantize.cu, rotate_quantize.cu), equal bit for bit
// to the shared primitives of formats.hpp:
//  - e2m1_magnitude: mf_encode(fmt_e2m1(), v) for finite v >= 0, in integer and one-FMA steps
//    instead of the generic minifloat walk;
//  - GroupDivider: RN(m / S) for every element m >= 0 of a group with scale S, from one
//    reciprocal per group (IEEE division costs a MUFU and a range check per element);
//  - encode8 / encode_run: the packed codes of 8 elements (of a group's chunks), with the
//    divider's mode chosen once per chunk (group); divider_for: MXFP4's scale as its exact
//    reciprocal; encode8_min: the same codes for quotients below 2^13 as a minimum of three
//    magic-constant FMA roundings in 16-bit lanes (3 FMAs a code instead of ~9 integer ops;
//    the tiled kernels use it, kMin; measured in bench/notes/formats.md, version 4);
//  - fast_scale: scale_for of the two presets' rules (E8M0 OCP; E4M3 absmax) without the
//    generic rule switch and minifloat walk; NvTable / group_divider: NVFP4's scale code from
//    one multiply and its divider from a per-CTA table of the E4M3 scale codes;
//  - 8-element chunk loads of bf16/f32 rows as 16-byte vectors;
//  - programmatic dependent launch (Hopper): a kernel's loads of its input start while the
//    kernel before it (statistics, initialisation) finishes; griddepcontrol.wait precedes every
//    read or write of what that kernel produces or uses;
//  - the tile ring of the persistent kernels (TileWalk): each CTA walks its tiles of the input
//    (tile i of CTA b is b + i * grid, optionally counted from the end), the bulk copy engine
//    filling a ring of kStages shared-memory buffers that complete on mbarriers, so the loads
//    of the next tiles are in flight while the threads encode the current one. Layout: tiles
//    of 8192 elements (16 KB of bf16), thread t of the CTA owning elements 32t .. 32t + 31;
//  - the per-device workspace of those kernels (per-CTA partial results, kept for the
//    process: no allocation, initialisation or free per call).
#pragma once
#include <cuda_runtime.h>

#include <mutex>
#include <utility>

#include "../cuda_backend.hpp"
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
//  - S in [2^-64, 2^64] with amax / S below 2^60: y = RN(1/S) and ylo = RN(RN(1 - S y) y) once
//    (1 - S y is exact by FMA, so y + ylo is 1/S within 2^-47), then per element
//    q0 = RN(m y + RN(m ylo)), within half an ulp plus 2^-46 of m / S: faithful; one correction
//    q = RN(q0 + RN(m - S q0) y) (the residual is exact by FMA) is then RN(m / S) by Markstein's
//    theorem, for every m whose quotient is normal. Quotients that are not (m / S < 2^-60, far
//    below e2m1's first rounding boundary 1/4) encode to magnitude 0 from any approximation near
//    them, so the codes still agree.
//  - otherwise the IEEE division per element.
// base(S) is the part that depends on S alone (NvTable keeps it per scale code), finish(amax)
// the part that needs the group's max |v|.
struct GroupDivider {
  float S, y, ylo;
  int mode;  // 0: power of two (or an exact product, see multiplier), 1: reciprocal +
             // correction, 2: division
  bool small;  // every quotient of the group is below 2^13 (modes 0 and 1; encode8_min)

  // m -> RN(m * y) for an exact factor y: the quotient by a power of two, or a power of two
  // with an exact multiplier folded in (rotate_quantize.cu).
  __device__ __forceinline__ static GroupDivider multiplier(float y) {
    GroupDivider d;
    d.S = 1.0f;
    d.y = y;
    d.ylo = 0.0f;
    d.mode = 0;
    d.small = true;  // the callers' quotients are below 8
    return d;
  }
  // S = 0: the callers write +0 codes without dividing.
  __device__ __forceinline__ static GroupDivider zero() {
    GroupDivider d = base(0.0f);
    d.small = false;
    return d;
  }
  __device__ __forceinline__ static GroupDivider base(float s) {
    GroupDivider d;
    d.S = s;
    d.ylo = 0.0f;
    const uint32_t b = __float_as_uint(s);
    const uint32_t e = (b >> 23) & 0xffu;
    if ((b & 0x7fffffu) == 0 && e >= 1 && e <= 253) {
      d.mode = 0;
      d.y = __uint_as_float((254u - e) << 23);  // 2^-(e - 127)
    } else if (s >= 0x1p-64f && s <= 0x1p64f) {
      d.mode = 1;
      d.y = __frcp_rn(s);
      d.ylo = __fmaf_rn(-s, d.y, 1.0f) * d.y;
    } else {
      d.mode = 2;
      d.y = 0.0f;
    }
    return d;
  }
  __device__ __forceinline__ void finish(float amax) {
    const float t = amax * y;
    if (mode == 1 && !(t <= 0x1p60f)) mode = 2;
    small = mode != 2 && t <= 0x1p12f;  // a 2^-22 relative margin over RN(m / S)
  }
  GroupDivider() = default;
  __device__ __forceinline__ GroupDivider(float s, float amax) : GroupDivider(base(s)) {
    finish(amax);
  }
};

// RN(m / S) for m = |v| in GroupDivider's mode kMode.
template <int kMode>
__device__ __forceinline__ float quotient(const GroupDivider &div, float v) {
  const float m = fabsf(v);
  if (kMode == 0) return m * div.y;
  if (kMode == 2) return m / div.S;
  const float q0 = __fmaf_rn(m, div.y, m * div.ylo);
  return __fmaf_rn(__fmaf_rn(-div.S, q0, m), div.y, q0);
}

// Packed 4-bit codes (element i in bits 4i..4i+3) of 8 elements of a group with scale S > 0.
template <int kMode>
__device__ __forceinline__ uint32_t encode8_mode(const GroupDivider &div, const float *v) {
  uint32_t word = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const uint32_t b = __float_as_uint(v[i]);
    const float q = quotient<kMode>(div, v[i]);
    word |= (e2m1_magnitude(q) | ((b >> 28) & 8u)) << (4 * i);
  }
  return word;
}

// The same codes from quotients q < 2^13 with fewer instructions, most on the FMA pipe:
// mf_encode(e2m1, q) = min(rint(2q), rint(q) + 2, rint(q/2) + 4, 7) (checked exhaustively on
// the host for every float in [0, 2^13)); each rint(a q) + k is the low half of the bits of
// RN(a q + 2^23 + k), one FMA (a q is exact in it, the even offsets keep ties to even). Two
// elements share one register through the minima (16-bit lanes: elements i and i + 4, so
// that nibble i lands at bit 4i after the shifts), and the sign bits are gathered with byte
// permutes.
template <int kMode>
__device__ __forceinline__ uint32_t encode8_min(const GroupDivider &div, const float *v) {
  // Sign of element i (bit 31 of v[i]) to bit 4i + 3: the top bytes of the odd elements land
  // with their sign bits at 7, 15, 23, 31; the even ones the same, shifted down by 4.
  const uint32_t o = __byte_perm(__byte_perm(__float_as_uint(v[1]), __float_as_uint(v[3]), 0x0073),
                                 __byte_perm(__float_as_uint(v[5]), __float_as_uint(v[7]), 0x7300),
                                 0x7610);
  const uint32_t e = __byte_perm(__byte_perm(__float_as_uint(v[0]), __float_as_uint(v[2]), 0x0073),
                                 __byte_perm(__float_as_uint(v[4]), __float_as_uint(v[6]), 0x7300),
                                 0x7610);
  uint32_t word = (o & 0x80808080u) | ((e >> 4) & 0x08080808u);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const float q0 = quotient<kMode>(div, v[k]), q1 = quotient<kMode>(div, v[k + 4]);
    const uint32_t a = __byte_perm(__float_as_uint(__fmaf_rn(q0, 2.0f, 0x1p23f)),
                                   __float_as_uint(__fmaf_rn(q1, 2.0f, 0x1p23f)), 0x5410);
    const uint32_t b = __byte_perm(__float_as_uint(__fmaf_rn(q0, 1.0f, 0x1p23f + 2.0f)),
                                   __float_as_uint(__fmaf_rn(q1, 1.0f, 0x1p23f + 2.0f)), 0x5410);
    const uint32_t c = __byte_perm(__float_as_uint(__fmaf_rn(q0, 0.5f, 0x1p23f + 4.0f)),
                                   __float_as_uint(__fmaf_rn(q1, 0.5f, 0x1p23f + 4.0f)), 0x5410);
    word |= __vminu2(__vimin3_u16x2(a, b, c), 0x00070007u) << (4 * k);
  }
  return word;
}

// The packed codes of kC consecutive 8-element chunks of one group (out[c] for v[8c .. 8c+7]),
// the divider's mode chosen once for the group; kMin: encode8_min where the quotients allow.
template <int kC, bool kMin = false>
__device__ __forceinline__ void encode_run(const GroupDivider &div, const float *v, uint32_t *out) {
  if (kMin && div.small) {
    if (div.mode == 0) {
#pragma unroll
      for (int c = 0; c < kC; c++) out[c] = encode8_min<0>(div, v + 8 * c);
    } else {
#pragma unroll
      for (int c = 0; c < kC; c++) out[c] = encode8_min<1>(div, v + 8 * c);
    }
    return;
  }
  if (div.mode == 0) {
#pragma unroll
    for (int c = 0; c < kC; c++) out[c] = encode8_mode<0>(div, v + 8 * c);
  } else if (div.mode == 1) {
#pragma unroll
    for (int c = 0; c < kC; c++) out[c] = encode8_mode<1>(div, v + 8 * c);
  } else {
#pragma unroll
    for (int c = 0; c < kC; c++) out[c] = encode8_mode<2>(div, v + 8 * c);
  }
}

// The same for a group with scale S >= 0 and max |v| = amax (S = 0: every code is +0).
template <int kC, bool kMin = false>
__device__ __forceinline__ void encode_group(float S, float amax, const float *v, uint32_t *out) {
  if (S == 0.0f) {
#pragma unroll
    for (int c = 0; c < kC; c++) out[c] = 0;
    return;
  }
  encode_run<kC, kMin>(GroupDivider(S, amax), v, out);
}

__device__ __forceinline__ uint32_t encode8(float S, float amax, const float (&v)[8]) {
  uint32_t w;
  encode_group<1>(S, amax, v, &w);
  return w;
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
    if (q.st_relative) raw = raw / q.s_t;
    if (raw < 448.0f) {
      const uint32_t bits = ue4m3_encode(raw);
      const float d = ue4m3_decode(bits);
      return fmt::GroupScale{bits, q.has_st ? d * q.s_t : d, 0};
    }
  }
  return fmt::scale_for(q, amax, 0.0f, 0.0f, 1.0f);
}

// The divider of a group with scale gs (from fast_scale<kScale>) and max |v| = amax: MXFP4's
// normal power-of-two scales 2^(bits - 127) as the exact reciprocal directly.
template <int kScale>
__device__ __forceinline__ GroupDivider divider_for(const fmt::GroupScale &gs, float amax) {
  if constexpr (kScale == kScaleMx) {
    if (gs.bits != 0) return GroupDivider::multiplier(__uint_as_float((254u - gs.bits) << 23));
  }
  return GroupDivider(gs.S, amax);
}

// NVFP4's group scales from a per-CTA table (kScaleNv), instead of the rule's two IEEE
// divisions, the E4M3 decode and the reciprocal per group:
//  - the E4M3 code of raw = RN(RN(amax / M) / s_t) (st_relative; RN(amax / M) otherwise) is
//    that of r = RN(amax c), c = RN(1 / (M s_t)), wherever r is a normal E4M3 value below 447
//    at least 16 ulps from an E4M3 rounding boundary (low 20 bits 0x80000): r and raw are each
//    within 2^-23 of amax / (M s_t), so within 4 ulps of each other, and they round alike.
//    Other groups (the one in about 2^15 that lies that near a boundary, and the subnormal,
//    saturating and zero ones) take fast_scale. c = 0 (s_t outside [2^-100, 2^100]) sends every
//    group there.
//  - e[code] = {S, y, ylo, mode} of GroupDivider::base(S) for S = decode(code) (times s_t
//    when has_st): what GroupDivider(S, amax) computes before it looks at amax.
// nv_table_init runs on every thread of the CTA once s_t is known; a __syncthreads follows.
struct NvTable {
  float4 e[128];
  float c;
};

__device__ __forceinline__ void nv_table_init(const fmt::QuantParams &q, NvTable &t) {
  for (uint32_t code = threadIdx.x; code < 128; code += blockDim.x) {
    const float d = ue4m3_decode(code);
    const GroupDivider g = GroupDivider::base(q.has_st ? d * q.s_t : d);
    t.e[code] = make_float4(g.S, g.y, g.ylo, __int_as_float(g.mode));
  }
  if (threadIdx.x == 0) {
    const double st = q.st_relative ? double(q.s_t) : 1.0;
    t.c = st >= 0x1p-100 && st <= 0x1p100 ? float(1.0 / (double(q.M) * st)) : 0.0f;
  }
}

// The scale bits of a group with max |v| = amax (finite) and its divider (S = 0: every code
// +0); nv: the CTA's NvTable for kScaleNv, unused otherwise.
template <int kScale>
__device__ __forceinline__ GroupDivider group_divider(const fmt::QuantParams &q, const NvTable *nv,
                                                      float amax, uint32_t *bits) {
  if constexpr (kScale == kScaleNv) {
    const float r = amax * nv->c;
    const uint32_t u = __float_as_uint(r);
    if (u >= 0x3c800000u && r < 447.0f && ((u + 16u - 0x80000u) & 0xfffffu) >= 32u) {
      *bits = ue4m3_encode(r);
      const float4 e = nv->e[*bits];
      GroupDivider d;
      d.S = e.x;
      d.y = e.y;
      d.ylo = e.z;
      d.mode = __float_as_int(e.w);
      d.finish(amax);
      return d;
    }
  }
  const fmt::GroupScale gs = fast_scale<kScale>(q, amax);
  *bits = gs.bits;
  return gs.S == 0.0f ? GroupDivider::zero() : divider_for<kScale>(gs, amax);
}

// Programmatic dependent launch: let the next kernel of the stream start, and wait for the
// previous one (its writes become visible).
__device__ __forceinline__ void pdl_launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

// kernel<<<grid, block, smem>>>(args...); with `pdl` it may start before the previous kernel of
// the stream ends (which must then not write anything it reads before griddepcontrol.wait).
template <class... P, class... A>
cudaError_t launch_ex(void (*kernel)(P...), unsigned grid, unsigned block, size_t smem, bool pdl,
                      A &&...args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(block);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

template <class... P, class... A>
cudaError_t launch_pdl(void (*kernel)(P...), unsigned grid, unsigned block, A &&...args) {
  return launch_ex(kernel, grid, block, 0, true, std::forward<A>(args)...);
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

// Per-half unsigned max of two pairs of 16-bit lanes (one instruction on sm_90).
__device__ __forceinline__ uint32_t max_u16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("max.u16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// max(a, |b|) that keeps a NaN of b (fmaxf would drop it).
__device__ __forceinline__ float max_abs_nan(float a, float b) {
  float d;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(fabsf(b)));
  return d;
}

// ---- The tile ring of the persistent kernels ----

constexpr int kTileThreads = 256;                 // threads per CTA
constexpr int kSeg = 32;                          // consecutive elements per thread and tile
constexpr int kTileElems = kTileThreads * kSeg;   // 8192 elements: 16 KB of bf16

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

// The 32 elements of one thread's segment at p (shared memory, 16-byte aligned) as float32,
// and, when kLen > 0, in mag[g] the bits of max |x| over each run g of kLen of them (bf16: on
// the packed pairs, two 16-bit lanes per instruction; a value >= 0x7f800000 flags a non-finite
// run).
template <bool kBf16, int kLen>
__device__ __forceinline__ void load_seg(const uint8_t *p, float (&v)[kSeg], uint32_t *mag) {
  if constexpr (kBf16) {
    uint32_t w[kSeg / 2];
#pragma unroll
    for (int c = 0; c < kSeg / 8; c++) {
      const uint4 q = reinterpret_cast<const uint4 *>(p)[c];
      w[4 * c] = q.x, w[4 * c + 1] = q.y, w[4 * c + 2] = q.z, w[4 * c + 3] = q.w;
    }
    if constexpr (kLen > 0) {
#pragma unroll
      for (int g = 0; g < kSeg / kLen; g++) {
        uint32_t m = 0;
#pragma unroll
        for (int i = 0; i < kLen / 2; i++) m = max_u16x2(m, w[g * kLen / 2 + i] & 0x7fff7fffu);
        mag[g] = max(m >> 16, m & 0xffffu) << 16;
      }
    }
#pragma unroll
    for (int i = 0; i < kSeg / 2; i++) {
      v[2 * i] = __uint_as_float(w[i] << 16);
      v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  } else {
#pragma unroll
    for (int c = 0; c < kSeg / 4; c++) {
      const float4 q = reinterpret_cast<const float4 *>(p)[c];
      v[4 * c] = q.x, v[4 * c + 1] = q.y, v[4 * c + 2] = q.z, v[4 * c + 3] = q.w;
    }
    if constexpr (kLen > 0) {
#pragma unroll
      for (int g = 0; g < kSeg / kLen; g++) {
        uint32_t m = 0;
#pragma unroll
        for (int i = 0; i < kLen; i++) m = max(m, __float_as_uint(v[g * kLen + i]) & 0x7fffffffu);
        mag[g] = m;
      }
    }
  }
}

// One CTA's walk over its tiles of a byte range (header comment): tile i of CTA b is
// b + i * grid (counted from the end with `reverse`); of the kThreads threads of the CTA, thread
// t's kTileElems / kThreads elements start at that count times t. Thread
// 0 calls start() before the CTA first synchronizes; then per tile: wait(i), read the
// segment into registers, release(i) (the CTA synchronizes and thread 0 refills the buffer
// with tile i + kStages). Tile indices are 32-bit: tensors below 2^45 elements.
constexpr int kStages = 2;     // tiles in flight per CTA
constexpr int kCtasPerSm = 4;  // 32 warps per SM; __launch_bounds__ caps registers at 64

template <int kThreads = kTileThreads>
struct TileWalk {
  const uint8_t *src;
  uint64_t total;
  uint32_t tiles, count, tile_bytes;
  bool reverse;
  uint8_t *buf;
  uint64_t *full;

  __device__ __forceinline__ TileWalk(const void *x, uint64_t total_bytes, uint32_t elem_bytes,
                                      bool rev, uint8_t *ring, uint64_t *bars)
      : src(static_cast<const uint8_t *>(x)), total(total_bytes),
        tile_bytes(uint32_t(kTileElems) * elem_bytes), reverse(rev), buf(ring), full(bars) {
    tiles = uint32_t((total + tile_bytes - 1) / tile_bytes);
    count = tiles > blockIdx.x ? (tiles - 1 - blockIdx.x) / gridDim.x + 1 : 0;
  }

  __device__ __forceinline__ uint32_t tile(uint32_t i) const {
    const uint32_t j = blockIdx.x + i * gridDim.x;
    return reverse ? tiles - 1 - j : j;
  }

  // First element of this thread's segment of tile i.
  __device__ __forceinline__ uint64_t first(uint32_t i) const {
    return uint64_t(tile(i)) * kTileElems + threadIdx.x * uint32_t(kTileElems / kThreads);
  }

  __device__ __forceinline__ void start() {
#pragma unroll
    for (int s = 0; s < kStages; s++) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&full[s])) : "memory");
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#pragma unroll
    for (int i = 0; i < kStages; i++) issue(uint32_t(i));
  }

  __device__ __forceinline__ void issue(uint32_t i) {
    if (i >= count) return;
    const uint32_t s = i % kStages;
    const uint64_t off = uint64_t(tile(i)) * tile_bytes;
    const uint32_t bytes = uint32_t(min(uint64_t(tile_bytes), total - off));
    const uint32_t bar = smem_addr(&full[s]);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
            "r"(smem_addr(buf + s * tile_bytes)),
        "l"(src + off), "r"(bytes), "r"(bar)
        : "memory");
  }

  // This thread's segment of tile i, once the tile has landed.
  __device__ __forceinline__ const uint8_t *wait(uint32_t i) const {
    const uint32_t s = i % kStages, parity = (i / kStages) & 1u;
    const uint32_t bar = smem_addr(&full[s]);
    uint32_t done;
    do {
      asm volatile(
          "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; "
          "selp.u32 %0, 1, 0, p; }"
          : "=r"(done)
          : "r"(bar), "r"(parity)
          : "memory");
    } while (!done);
    return buf + s * tile_bytes + threadIdx.x * (tile_bytes / kThreads);
  }

  // Every thread has read tile i: its buffer takes tile i + kStages.
  __device__ __forceinline__ void release(uint32_t i) {
    __syncthreads();
    if (threadIdx.x == 0) issue(i + kStages);
  }
};

// Max of v over the CTA of kThreads threads (every thread gets it); red holds kThreads / 32
// words.
template <int kThreads = kTileThreads>
__device__ __forceinline__ uint32_t block_max(uint32_t v, uint32_t *red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // red may still be read from an earlier call
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kThreads / 32; w++) v = max(v, red[w]);
  return v;
}

// The tensor scale of an amax rule from the per-CTA partial max |x| bits of the kernel before
// (after griddepcontrol.wait).
__device__ __forceinline__ float tensor_scale_from(const fmt::QuantParams &q, const uint32_t *part,
                                                   int parts, uint32_t *red) {
  uint32_t a = 0;
  for (int i = threadIdx.x; i < parts; i += kTileThreads) a = max(a, part[i]);
  return fmt::tensor_scale_of(q, __uint_as_float(block_max(a, red)));
}

// ---- Host side ----

// The workspace of the persistent kernels on one device: a Stats record for the generic paths
// and per-CTA partials (max |x| bits; first non-finite index, ~0 when none). Every kernel writes
// its own CTA's entry unconditionally, so nothing is initialised per call. A call holds `lock`
// from its first launch to its last read-back: launches go to the legacy default stream, so
// stream order then keeps one call's use of the entries before the next call's.
struct Workspace {
  std::recursive_mutex lock;
  Stats *st = nullptr;
  uint32_t *amax = nullptr;
  unsigned long long *bad = nullptr;
  int slots = 0;  // entries of amax and bad: sms * kCtasPerSm
  int sms = 0;
};

// The current device's workspace (allocated on its first use, kept for the process).
fp4_status workspace(Workspace **out);
// The first non-finite index over the first `parts` partials (~0 when none); synchronizes.
fp4_status first_bad(const Workspace &ws, int parts, unsigned long long *bad);

// Grid and ring bytes of a persistent kernel: kCtasPerSm CTAs per multiprocessor (fewer for a
// small tensor), kStages tiles each.
struct TilePlan {
  unsigned grid;
  size_t smem;
};

inline TilePlan tile_plan(const Workspace &ws, uint64_t n, bool bf16) {
  const uint64_t tiles = (n + kTileElems - 1) / kTileElems;
  const uint64_t want = uint64_t(ws.sms) * kCtasPerSm;
  return TilePlan{unsigned(tiles < want ? (tiles ? tiles : 1) : want),
                  size_t(kStages) * kTileElems * (bf16 ? 2u : 4u)};
}

// Raises the kernel's dynamic shared-memory limit once per process.
template <auto kKernel>
cudaError_t allow_tile_smem() {
  static const cudaError_t e =
      cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
  return e;
}

}  // namespace fp4::cuda
