// Number-format primitives shared by the CPU backend (g++) and the CUDA backend (nvcc): one
// definition of every rounding, scale rule and random stream, compiled for both. The TypeScript
// reference (lib/formats/*.ts, spec in docs/FORMATS.md) is the executable specification; every
// function here reproduces its float32 operations in the same order, so that results agree bit
// for bit. Both compilers must keep float contractions off (-ffp-contract=off, -fmad=false).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FP4_HD __host__ __device__ __forceinline__
#else
#define FP4_HD inline
#endif

namespace fp4::fmt {

// ---------------------------------------------------------------------------------------------
// Bit casts and 16-bit float loads.

FP4_HD uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

FP4_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

FP4_HD float bf16_to_f32(uint16_t b) { return bits_f32(uint32_t(b) << 16); }

// Round to nearest even; NaN stays a quiet NaN (as lib/dtype.ts f32ToBf16).
FP4_HD uint16_t f32_to_bf16(float x) {
  uint32_t u = f32_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t(((u >> 16) | 0x40u) & 0xffffu);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

FP4_HD bool is_finite(float x) { return (f32_bits(x) & 0x7f800000u) != 0x7f800000u; }

// Round half to even of a float whose magnitude is below 2^23 (all callers' range); written with
// an explicit add/subtract of 2^23 so host and device agree without relying on the rounding mode
// of a library call. Exact: the sum rounds once, to the nearest integer, ties to even.
FP4_HD float rint_small(float v) {
  const float big = 8388608.0f;  // 2^23
  float a = fabsf(v);
  float r = (a + big) - big;
  return v < 0 ? -r : r;
}

// 2^e as a float for e in [-126, 127] (exact, from the bits).
FP4_HD float exp2i(int e) { return bits_f32(uint32_t(e + 127) << 23); }

// floor(log2(|x|)) from the exponent field; f32 subnormals report -127 and below as -127 (every
// caller clamps to a format's minimum exponent, which is higher).
FP4_HD int floor_log2(float x) {
  int e = int((f32_bits(x) >> 23) & 0xffu) - 127;
  return e;
}

// ---------------------------------------------------------------------------------------------
// Generic minifloat ExMy (lib/formats/minifloat.ts): sign-magnitude, IEEE-style subnormals,
// round to nearest even, saturating to the largest finite value.

enum Specials { SPECIALS_NONE = 0, SPECIALS_FN = 1, SPECIALS_IEEE = 2 };

struct Minifloat {
  int ebits;
  int mbits;
  int bias;
  int is_signed;
  int specials;
  int bits;           // total width
  int emin;           // 1 - bias
  uint32_t max_code;  // magnitude code of the largest finite value
  uint32_t nan_code;  // code produced for NaN input
  float max_finite;
};

FP4_HD float mf_value_of_mag(int ebits, int mbits, int bias, uint32_t mag) {
  uint32_t e = mag >> mbits;
  uint32_t m = mag & ((1u << mbits) - 1u);
  // An integer below 2^(mbits+1) times a power of two: exact in float32 for every format here.
  float sig = float(e ? (1u << mbits) + m : m);
  int ex = (e ? int(e) - bias : 1 - bias) - mbits;
  return ex >= -126 ? sig * exp2i(ex) : (sig * exp2i(ex + 64)) * exp2i(-64);
}

FP4_HD Minifloat make_minifloat(int ebits, int mbits, int bias, int is_signed, int specials) {
  Minifloat f;
  f.ebits = ebits;
  f.mbits = mbits;
  f.bias = bias;
  f.is_signed = is_signed;
  f.specials = specials;
  f.bits = ebits + mbits + (is_signed ? 1 : 0);
  f.emin = 1 - bias;
  uint32_t top = (1u << ebits) - 1u, all = (1u << mbits) - 1u;
  if (specials == SPECIALS_NONE) f.max_code = (top << mbits) | all;
  else if (specials == SPECIALS_FN) f.max_code = ((top << mbits) | all) - 1u;
  else f.max_code = ((top - 1u) << mbits) | all;
  f.nan_code = f.max_code;
  if (specials == SPECIALS_FN) f.nan_code = (top << mbits) | all;
  if (specials == SPECIALS_IEEE) f.nan_code = (top << mbits) | (1u << (mbits > 0 ? mbits - 1 : 0));
  f.max_finite = mf_value_of_mag(ebits, mbits, bias, f.max_code);
  return f;
}

// The formats of lib/formats/minifloat.ts.
FP4_HD Minifloat fmt_e2m1() { return make_minifloat(2, 1, 1, 1, SPECIALS_NONE); }
FP4_HD Minifloat fmt_e2m3() { return make_minifloat(2, 3, 1, 1, SPECIALS_NONE); }
FP4_HD Minifloat fmt_e3m2() { return make_minifloat(3, 2, 3, 1, SPECIALS_NONE); }
FP4_HD Minifloat fmt_e4m3() { return make_minifloat(4, 3, 7, 1, SPECIALS_FN); }
FP4_HD Minifloat fmt_e5m2() { return make_minifloat(5, 2, 15, 1, SPECIALS_IEEE); }
FP4_HD Minifloat fmt_ue4m3() { return make_minifloat(4, 3, 7, 0, SPECIALS_FN); }
FP4_HD Minifloat fmt_ue5m3() { return make_minifloat(5, 3, 15, 0, SPECIALS_FN); }

FP4_HD float mf_decode(const Minifloat &f, uint32_t code) {
  int magbits = f.ebits + f.mbits;
  uint32_t mag = code & ((1u << magbits) - 1u);
  bool neg = f.is_signed && ((code >> magbits) & 1u);
  uint32_t e = mag >> f.mbits;
  uint32_t top = (1u << f.ebits) - 1u;
  float v;
  if (f.specials == SPECIALS_FN && mag == (1u << magbits) - 1u) return bits_f32(0x7fc00000u);
  if (f.specials == SPECIALS_IEEE && e == top) {
    if (mag & ((1u << f.mbits) - 1u)) return bits_f32(0x7fc00000u);
    v = bits_f32(0x7f800000u);
  } else {
    v = mf_value_of_mag(f.ebits, f.mbits, f.bias, mag);
  }
  return neg ? -v : v;
}

// Grid position of a finite magnitude 0 <= a < max_finite: a = t * 2^qexp with t exact, qexp the
// quantum exponent of a's binade (clamped to the subnormal binade).
FP4_HD int mf_quantum_exp(const Minifloat &f, float a) {
  int e = a == 0.0f ? f.emin : floor_log2(a);
  return (e > f.emin ? e : f.emin) - f.mbits;
}

// Magnitude code of the grid value n * 2^qexp (n <= 2^(mbits+1)): a carry out of the mantissa
// lands in the next exponent through the addition.
FP4_HD uint32_t mf_mag_code(const Minifloat &f, uint32_t n, int qexp) {
  return (uint32_t(qexp + f.mbits - f.emin) << f.mbits) + n;
}

// Shared front of both encoders: NaN, unsigned negatives, saturation. Returns true when `code`
// is final; else `a` holds |x| below max_finite and `sign` the sign bit to OR in.
FP4_HD bool mf_encode_front(const Minifloat &f, float x, uint32_t &code, uint32_t &sign, float &a) {
  if (x != x) {
    code = f.nan_code;
    return true;
  }
  bool neg = (f32_bits(x) >> 31) != 0;
  if (neg && !f.is_signed) {
    code = 0;
    return true;
  }
  sign = neg ? 1u << (f.bits - 1) : 0u;
  a = fabsf(x);
  if (a >= f.max_finite) {
    code = sign | f.max_code;
    return true;
  }
  return false;
}

// Round to nearest, ties to even mantissa (lib/formats/minifloat.ts encodeMinifloat).
FP4_HD uint32_t mf_encode(const Minifloat &f, float x) {
  uint32_t code, sign;
  float a;
  if (mf_encode_front(f, x, code, sign, a)) return code;
  int qexp = mf_quantum_exp(f, a);
  float t = a * exp2i(-qexp);  // exact power-of-two scaling
  uint32_t n = uint32_t(rint_small(t));
  return sign | mf_mag_code(f, n, qexp);
}

// Stochastic rounding with the uniform word r: up iff r < frac(t) * 2^32 (encodeMinifloatStochastic).
FP4_HD bool stochastic_up(float frac, uint32_t r) {
  return double(r) < double(frac) * 4294967296.0;  // exact: frac is a float32
}

FP4_HD uint32_t mf_encode_stochastic(const Minifloat &f, float x, uint32_t r) {
  uint32_t code, sign;
  float a;
  if (mf_encode_front(f, x, code, sign, a)) return code;
  int qexp = mf_quantum_exp(f, a);
  float t = a * exp2i(-qexp);
  float n = floorf(t);
  uint32_t k = uint32_t(n) + (stochastic_up(t - n, r) ? 1u : 0u);
  return sign | mf_mag_code(f, k, qexp);
}

// ---------------------------------------------------------------------------------------------
// Integer elements (lib/formats/integer.ts): value = code * step, code in [qmin, qmax].

struct IntFmt {
  int bits;
  int qmin;
  int qmax;
  int step_exp;  // step = 2^step_exp (0, or -6 for the MX INT8 element)
  int asymmetric;
};

FP4_HD IntFmt fmt_int4() { return IntFmt{4, -7, 7, 0, 0}; }
FP4_HD IntFmt fmt_int8() { return IntFmt{8, -127, 127, 0, 0}; }
FP4_HD IntFmt fmt_uint4() { return IntFmt{4, 0, 15, 0, 1}; }
FP4_HD IntFmt fmt_uint8() { return IntFmt{8, 0, 255, 0, 1}; }
FP4_HD IntFmt fmt_mxint8() { return IntFmt{8, -127, 127, -6, 0}; }

FP4_HD int clamp_int(float n, int lo, int hi) {
  return n < float(lo) ? lo : n > float(hi) ? hi : int(n);
}

// clamp(roundHalfEven(x / step) + zero, qmin, qmax); NaN gives `zero`.
FP4_HD int int_encode(const IntFmt &f, float x, int zero) {
  if (x != x) return zero;
  float t = x * exp2i(-f.step_exp);
  // Large |t| saturates anyway; rint_small needs |t| < 2^23.
  if (fabsf(t) >= 8388608.0f) return t < 0 ? f.qmin : f.qmax;
  return clamp_int(rint_small(t) + float(zero), f.qmin, f.qmax);
}

FP4_HD int int_encode_stochastic(const IntFmt &f, float x, uint32_t r, int zero) {
  if (x != x) return zero;
  float t = x * exp2i(-f.step_exp);
  if (fabsf(t) >= 8388608.0f) return t < 0 ? f.qmin : f.qmax;
  float n = floorf(t);
  if (stochastic_up(t - n, r)) n += 1.0f;
  return clamp_int(n + float(zero), f.qmin, f.qmax);
}

FP4_HD uint32_t int_code_bits(const IntFmt &f, int code) { return uint32_t(code) & ((1u << f.bits) - 1u); }

FP4_HD int int_from_bits(const IntFmt &f, uint32_t bits) {
  int b = int(bits & ((1u << f.bits) - 1u));
  if (f.asymmetric) return b;
  return b >= (1 << (f.bits - 1)) ? b - (1 << f.bits) : b;
}

// ---------------------------------------------------------------------------------------------
// E8M0 (lib/formats/scales.ts): 2^(bits - 127), 0xFF = NaN.

enum E8M0Rounding { E8M0_FLOOR = 0, E8M0_CEIL = 1, E8M0_RNE = 2 };

FP4_HD uint32_t e8m0_from_exponent(int e) { return uint32_t((e < -127 ? -127 : e > 127 ? 127 : e) + 127); }

FP4_HD float e8m0_decode(uint32_t bits) {
  if (bits == 0xffu) return bits_f32(0x7fc00000u);
  if (bits == 0) return exp2i(-126) * 0.5f;  // 2^-127: an f32 subnormal
  return exp2i(int(bits) - 127);
}

// floor(log2 a) for finite a > 0, also for f32 subnormals.
FP4_HD int floor_log2_full(float a) {
  uint32_t u = f32_bits(a);
  int e = int((u >> 23) & 0xffu);
  if (e) return e - 127;
  uint32_t m = u & 0x7fffffu;  // subnormal: value = m * 2^-149
  int hb = 31;
  while (!((m >> hb) & 1u)) hb--;
  return hb - 149;
}

FP4_HD uint32_t e8m0_encode(float x, int rounding) {
  if (x != x) return 0xffu;
  if (x <= 0.0f) return 0;
  if (f32_bits(x) == 0x7f800000u) return 0xfeu;
  int k = floor_log2_full(x);
  // Mantissa m = x / 2^k in [1, 2): for an f32 it has the same significand bits.
  uint32_t u = f32_bits(x);
  uint32_t mant;  // 23 fraction bits of m
  if ((u >> 23) & 0xffu) {
    mant = u & 0x7fffffu;
  } else {
    uint32_t m = u & 0x7fffffu;
    int shift = 0;
    while (!((m << shift) & 0x800000u)) shift++;
    mant = (m << shift) & 0x7fffffu;
  }
  int e = k;
  if (rounding == E8M0_CEIL) {
    if (mant) e = k + 1;
  } else if (rounding == E8M0_RNE) {
    if (mant > 0x400000u || (mant == 0x400000u && ((k + 127) & 1))) e = k + 1;
  }
  return e8m0_from_exponent(e);
}

// ---------------------------------------------------------------------------------------------
// Codecs: every element and scale encoding behind one code (FP4_CODEC_* in fp4lab/formats.h),
// for the array conversion entry points and the quantizer.

enum Codec {
  CODEC_E2M1 = 0,
  CODEC_E2M3 = 1,
  CODEC_E3M2 = 2,
  CODEC_E4M3 = 3,
  CODEC_E5M2 = 4,
  CODEC_UE4M3 = 5,
  CODEC_UE5M3 = 6,
  CODEC_INT4 = 7,
  CODEC_INT8 = 8,
  CODEC_UINT4 = 9,
  CODEC_UINT8 = 10,
  CODEC_MXINT8 = 11,
  CODEC_E8M0_FLOOR = 12,
  CODEC_E8M0_CEIL = 13,
  CODEC_E8M0_RNE = 14,
  CODEC_COUNT = 15
};

FP4_HD bool codec_is_minifloat(int c) { return c >= CODEC_E2M1 && c <= CODEC_UE5M3; }
FP4_HD bool codec_is_int(int c) { return c >= CODEC_INT4 && c <= CODEC_MXINT8; }

FP4_HD Minifloat codec_minifloat(int c) {
  switch (c) {
    case CODEC_E2M1: return fmt_e2m1();
    case CODEC_E2M3: return fmt_e2m3();
    case CODEC_E3M2: return fmt_e3m2();
    case CODEC_E4M3: return fmt_e4m3();
    case CODEC_E5M2: return fmt_e5m2();
    case CODEC_UE4M3: return fmt_ue4m3();
    default: return fmt_ue5m3();
  }
}

FP4_HD IntFmt codec_int(int c) {
  switch (c) {
    case CODEC_INT4: return fmt_int4();
    case CODEC_INT8: return fmt_int8();
    case CODEC_UINT4: return fmt_uint4();
    case CODEC_UINT8: return fmt_uint8();
    default: return fmt_mxint8();
  }
}

// Storage bits of x; stochastic when `stochastic` (r is then the uniform word). Integer codecs
// use zero point 0.
FP4_HD uint32_t codec_encode(int c, float x, bool stochastic, uint32_t r) {
  if (codec_is_minifloat(c)) {
    Minifloat f = codec_minifloat(c);
    return stochastic ? mf_encode_stochastic(f, x, r) : mf_encode(f, x);
  }
  if (codec_is_int(c)) {
    IntFmt f = codec_int(c);
    return int_code_bits(f, stochastic ? int_encode_stochastic(f, x, r, 0) : int_encode(f, x, 0));
  }
  return e8m0_encode(x, c - CODEC_E8M0_FLOOR);
}

FP4_HD float codec_decode(int c, uint32_t bits) {
  if (codec_is_minifloat(c)) return mf_decode(codec_minifloat(c), bits);
  if (codec_is_int(c)) {
    IntFmt f = codec_int(c);
    return float(int_from_bits(f, bits)) * exp2i(f.step_exp);
  }
  return e8m0_decode(bits);
}

// ---------------------------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al. 2011), the counter-based generator behind stochastic rounding and
// random Hadamard signs.

struct U32x4 {
  uint32_t v[4];
};

FP4_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t &hi, uint32_t &lo) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

FP4_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; r++) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c.v[0], hi0, lo0);
    mulhilo32(0xCD9E8D57u, c.v[2], hi1, lo1);
    U32x4 n;
    n.v[0] = hi1 ^ c.v[1] ^ k0;
    n.v[1] = lo1;
    n.v[2] = hi0 ^ c.v[3] ^ k1;
    n.v[3] = lo0;
    c = n;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

FP4_HD uint32_t philox_word0(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1) {
  U32x4 c;
  c.v[0] = c0;
  c.v[1] = c1;
  c.v[2] = 0;
  c.v[3] = 0;
  return philox4x32_10(c, k0, k1).v[0];
}

// ---------------------------------------------------------------------------------------------
// 16-bit IEEE half from float32 (lib/dtype.ts f32ToF16: round to nearest even, overflow to Inf).

FP4_HD uint32_t f32_to_f16(float x) {
  uint32_t bits = f32_bits(x);
  uint32_t sign = (bits >> 16) & 0x8000u;
  int exp = int((bits >> 23) & 0xffu);
  uint32_t man = bits & 0x7fffffu;
  if (exp == 0xff) return sign | 0x7c00u | (man ? 0x200u : 0u);
  int e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00u;
  if (e <= 0) {
    if (e < -10) return sign;
    uint32_t full = man | 0x800000u;
    int shift = 14 - e;
    uint32_t half = 1u << (shift - 1);
    uint32_t rest = full & ((1u << shift) - 1u);
    uint32_t out = full >> shift;
    if (rest > half || (rest == half && (out & 1u))) out++;
    return sign | out;
  }
  uint32_t out = (uint32_t(e) << 10) | (man >> 13);
  uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (out & 1u))) out++;
  return sign | out;
}

FP4_HD float f16_to_f32(uint32_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    float v = float(man) * exp2i(-24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
  return bits_f32(sign | ((exp - 15 + 127) << 23) | (man << 13));
}

// ---------------------------------------------------------------------------------------------
// Scale formats (docs/FORMATS.md §4; lib/formats/scales.ts encodeScale / decodeScale).

enum ScaleFormat { SCALE_E8M0 = 0, SCALE_E4M3 = 1, SCALE_UE5M3 = 2, SCALE_F32 = 3, SCALE_BF16 = 4, SCALE_F16 = 5 };

FP4_HD int scale_bytes(int fmt) { return fmt == SCALE_F32 ? 4 : (fmt == SCALE_BF16 || fmt == SCALE_F16) ? 2 : 1; }

FP4_HD float scale_max(int fmt) {
  switch (fmt) {
    case SCALE_E8M0: return exp2i(127);
    case SCALE_E4M3: return 448.0f;
    case SCALE_UE5M3: return 114688.0f;
    case SCALE_F32: return bits_f32(0x7f7fffffu);
    case SCALE_BF16: return bits_f32(0x7f7f0000u);
    default: return 65504.0f;
  }
}

// Not E8M0 (whose rounding is a scale rule): saturating round to nearest even.
FP4_HD uint32_t scale_encode(int fmt, float v) {
  switch (fmt) {
    case SCALE_E4M3: return mf_encode(fmt_ue4m3(), v);
    case SCALE_UE5M3: return mf_encode(fmt_ue5m3(), v);
    case SCALE_F32: return f32_bits(v);
    case SCALE_BF16: {
      uint32_t b = f32_to_bf16(v);
      return ((b & 0x7fffu) == 0x7f80u && v == v) ? ((b & 0x8000u) | 0x7f7fu) : b;
    }
    default: {
      uint32_t b = f32_to_f16(v);
      return ((b & 0x7fffu) == 0x7c00u && v == v) ? ((b & 0x8000u) | 0x7bffu) : b;
    }
  }
}

FP4_HD float scale_decode(int fmt, uint32_t b) {
  switch (fmt) {
    case SCALE_E8M0: return e8m0_decode(b);
    case SCALE_E4M3: return mf_decode(fmt_ue4m3(), b);
    case SCALE_UE5M3: return mf_decode(fmt_ue5m3(), b);
    case SCALE_F32: return bits_f32(b);
    case SCALE_BF16: return bf16_to_f32(uint16_t(b));
    default: return f16_to_f32(b);
  }
}

FP4_HD void store_scale(uint8_t *buf, uint64_t i, uint32_t bits, int nbytes) {
  for (int k = 0; k < nbytes; k++) buf[i * uint64_t(nbytes) + uint64_t(k)] = uint8_t(bits >> (8 * k));
}

FP4_HD uint32_t load_scale(const uint8_t *buf, uint64_t i, int nbytes) {
  uint32_t b = 0;
  for (int k = nbytes - 1; k >= 0; k--) b = (b << 8) | buf[i * uint64_t(nbytes) + uint64_t(k)];
  return b;
}

// ---------------------------------------------------------------------------------------------
// Group quantization (docs/FORMATS.md §5).

enum Rule { RULE_OCP = 0, RULE_CEIL = 1, RULE_ROUND = 2, RULE_MR_GPTQ = 3, RULE_ABSMAX = 4, RULE_MINMAX = 5 };

// Everything one group's quantization needs, resolved once per call.
struct QuantParams {
  int elem;  // codec of the element
  int is_int;
  Minifloat mf;
  IntFmt itf;
  float M;        // largest finite element value
  int emax_elem;  // floorLog2(M)
  int code_bits;  // storage width: 4, 6 or 8 (6-bit codes take one byte)
  int scale_fmt;
  int scale_nbytes;
  int rule;
  int asym;
  int tensor_amax;  // tensorScale "amax": s_t comes from a pass over the tensor
  int st_relative;  // group scales are chosen relative to s_t (tensorScale amax or given)
  int has_st;       // a tensor scale multiplies every group scale (amax, given or mr-gptq)
  float s_t;
  int mse_k;  // 0: no search
  double mse_min_shrink;
  double mse_norm;
  int stochastic;
  uint32_t key0, key1;
};

// tensor_mode: 0 none, 1 amax, 2 given (s_t = st_value), as fp4_quant_spec.tensor_scale.
FP4_HD QuantParams make_params(int elem, int scale_fmt, int rule, int tensor_mode, float st_value,
                               int rounding, int mse_k, double min_shrink, double norm,
                               uint64_t seed) {
  QuantParams q;
  q.elem = elem;
  q.is_int = codec_is_int(elem);
  q.mf = codec_minifloat(codec_is_minifloat(elem) ? elem : CODEC_E2M1);
  q.itf = codec_int(q.is_int ? elem : CODEC_INT4);
  if (q.is_int) {
    q.M = float(q.itf.qmax) * exp2i(q.itf.step_exp);
    q.code_bits = q.itf.bits;
    q.asym = q.itf.asymmetric;
  } else {
    q.M = q.mf.max_finite;
    q.code_bits = q.mf.bits;
    q.asym = 0;
  }
  q.emax_elem = floor_log2_full(q.M);
  q.scale_fmt = scale_fmt;
  q.scale_nbytes = scale_bytes(scale_fmt);
  q.rule = rule;
  q.tensor_amax = tensor_mode == 1;
  q.st_relative = tensor_mode != 0;
  q.has_st = tensor_mode != 0 || rule == RULE_MR_GPTQ;
  // mr-gptq: the constant 2^(emaxElem+1) / M; amax: set per tensor by tensor_scale_of().
  q.s_t = rule == RULE_MR_GPTQ ? exp2i(q.emax_elem + 1) / q.M
          : tensor_mode == 2   ? st_value
                               : 1.0f;
  q.mse_k = mse_k;
  q.mse_min_shrink = min_shrink;
  q.mse_norm = norm;
  q.stochastic = rounding == 1;
  q.key0 = uint32_t(seed);
  q.key1 = uint32_t(seed >> 32);
  return q;
}

// s_t of tensorScale "amax" from the tensor's max |x| (§5.4).
FP4_HD float tensor_scale_of(const QuantParams &q, float amax_t) {
  if (amax_t == 0.0f) return 1.0f;
  return amax_t / (q.M * scale_max(q.scale_fmt));
}

struct GroupScale {
  uint32_t bits;
  float S;
  int z;
};

FP4_HD float effective_scale(const QuantParams &q, uint32_t bits) {
  float d = scale_decode(q.scale_fmt, bits);
  return q.has_st ? d * q.s_t : d;
}

FP4_HD float rne_float(float v) { return fabsf(v) >= 8388608.0f ? v : rint_small(v); }

FP4_HD GroupScale scale_for(const QuantParams &q, float amax, float lo, float hi, float p) {
  GroupScale g;
  float A = amax * p;
  float lo2 = lo * p, hi2 = hi * p;
  switch (q.rule) {
    case RULE_OCP:
    case RULE_MR_GPTQ:
      g.bits = A == 0.0f ? 0u : e8m0_from_exponent(floor_log2_full(A) - q.emax_elem);
      break;
    case RULE_CEIL: {
      if (A == 0.0f) {
        g.bits = 0;
        break;
      }
      // A / M lies in [2^(fa - fm - 1), 2^(fa - fm + 1)): the answer is one of three exponents.
      int e = floor_log2_full(A) - q.emax_elem - 1;
      while (!(double(A) <= ldexp(double(q.M), e))) e++;
      g.bits = e8m0_from_exponent(e);
      break;
    }
    case RULE_ROUND: {
      if (A == 0.0f) {
        g.bits = 0;
        break;
      }
      double t = double(A) / double(q.M);
      int k;
      double m = frexp(t, &k);  // t = m * 2^k, m in [0.5, 1): floorLog2(t) = k - 1
      m *= 2.0;
      k -= 1;
      const double sqrt2 = 1.4142135623730951;  // 0x3FF6A09E667F3BCD
      g.bits = e8m0_from_exponent(k + (m > sqrt2 ? 1 : 0));
      break;
    }
    case RULE_ABSMAX: {
      float raw = A / q.M;
      if (q.st_relative) raw = raw / q.s_t;
      g.bits = scale_encode(q.scale_fmt, raw);
      break;
    }
    default: {  // minmax
      float raw = (hi2 - lo2) / float(q.itf.qmax);
      g.bits = scale_encode(q.scale_fmt, raw);
      break;
    }
  }
  g.S = effective_scale(q, g.bits);
  g.z = 0;
  if (q.asym && g.S != 0.0f) {
    float t = rne_float(-lo2 / g.S);
    g.z = t < 0.0f ? 0 : t > float(q.itf.qmax) ? q.itf.qmax : int(t);
  }
  return g;
}

// Storage bits of element x of a group with scale g; `index` is its linear index in the tensor
// (the Philox counter of stochastic rounding).
FP4_HD uint32_t quantize_element(const QuantParams &q, const GroupScale &g, float x, uint64_t index,
                                 bool stochastic) {
  if (g.S == 0.0f) return q.asym ? uint32_t(g.z) : 0u;
  float v = x / g.S;
  uint32_t r = stochastic ? philox_word0(uint32_t(index), uint32_t(index >> 32), q.key0, q.key1) : 0u;
  if (q.is_int) {
    int c = stochastic ? int_encode_stochastic(q.itf, v, r, g.z) : int_encode(q.itf, v, g.z);
    return int_code_bits(q.itf, c);
  }
  return stochastic ? mf_encode_stochastic(q.mf, v, r) : mf_encode(q.mf, v);
}

FP4_HD float dequantize_element(const QuantParams &q, float S, int z, uint32_t bits) {
  if (!q.is_int) return mf_decode(q.mf, bits) * S;
  int c = int_from_bits(q.itf, bits);
  if (q.asym) return float(c - z) * S;
  return (float(c) * exp2i(q.itf.step_exp)) * S;
}

// Group statistics: amax = max |x|, lo = min(min x, 0), hi = max(max x, 0). Exact in any order.
template <class Load>
FP4_HD void group_stats(const Load &load, uint64_t n, float &amax, float &lo, float &hi) {
  float a = 0.0f, l = 0.0f, h = 0.0f;
  for (uint64_t i = 0; i < n; i++) {
    float x = load(i);
    float ax = fabsf(x);
    a = ax > a ? ax : a;
    l = x < l ? x : l;
    h = x > h ? x : h;
  }
  amax = a;
  lo = l;
  hi = h;
}

FP4_HD double error_term(double d, double norm) {
  double ad = fabs(d);
  if (norm == 2.0) return ad * ad;
  if (norm == 1.0) return ad;
  return pow(ad, norm);
}

// Sum over the group of |x - dq|^norm in float64, element order, round to nearest even (§5.7).
template <class Load>
FP4_HD double group_error(const QuantParams &q, const Load &load, uint64_t n, const GroupScale &g) {
  double err = 0;
  for (uint64_t i = 0; i < n; i++) {
    float x = load(i);
    float dq = dequantize_element(q, g.S, g.z, quantize_element(q, g, x, 0, false));
    err += error_term(double(x) - double(dq), q.mse_norm);
  }
  return err;
}

// The group's scale: the plain rule, or the MSE search of §5.7 over shrink candidates. As in
// lib/formats/quantize.ts, a candidate repeating the previous (bits, zero) pair is skipped (it
// reconstructs identically, so it could not win the strict comparison anyway).
template <class Load>
FP4_HD GroupScale choose_scale(const QuantParams &q, const Load &load, uint64_t n) {
  float amax, lo, hi;
  group_stats(load, n, amax, lo, hi);
  if (q.mse_k <= 0) return scale_for(q, amax, lo, hi, 1.0f);
  GroupScale best;
  best.bits = 0;
  best.z = 0;
  double best_err = HUGE_VAL;
  int64_t last_bits = -1, last_z = -1;
  for (int k = 0; k < q.mse_k; k++) {
    float p = float(1.0 - (double(k) * (1.0 - q.mse_min_shrink)) / double(q.mse_k));
    GroupScale g = scale_for(q, amax, lo, hi, p);
    if (int64_t(g.bits) == last_bits && int64_t(g.z) == last_z) continue;
    last_bits = g.bits;
    last_z = g.z;
    double err = group_error(q, load, n, g);
    if (err < best_err) {
      best_err = err;
      best = g;
    }
  }
  best.S = effective_scale(q, best.bits);
  return best;
}

// ---------------------------------------------------------------------------------------------
// Block Hadamard rotation (docs/FORMATS.md §8).

// The float32 nearest to 1/sqrt(b), b = 2^k.
FP4_HD float hadamard_norm(int k) {
  if ((k & 1) == 0) return exp2i(-k / 2);
  return bits_f32(0x3F3504F3u) * exp2i(-(k - 1) / 2);
}

// Random sign of column c: true = negate.
FP4_HD bool hadamard_sign(uint64_t c, uint32_t k0, uint32_t k1) {
  return philox_word0(uint32_t(c), uint32_t(c >> 32), k0, k1) >= 0x80000000u;
}

// Unnormalised Walsh-Hadamard butterflies of n = 2^k floats in place: stages h = 1, 2, 4, ...,
// pairs (v[j], v[j+h]) with (j & h) == 0 become (v[j] + v[j+h], v[j] - v[j+h]).
FP4_HD void fwht_inplace(float *x, int n) {
  for (int h = 1; h < n; h <<= 1) {
    for (int i = 0; i < n; i += h << 1) {
      for (int j = i; j < i + h; j++) {
        float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}

}  // namespace fp4::fmt

namespace fp4::fmt {

// ---------------------------------------------------------------------------------------------
// Loaders of one input element as float32 (f32 or bf16 storage), for the group templates.

struct LoadF32 {
  const float *p;
  FP4_HD float operator()(uint64_t i) const { return p[i]; }
};

struct LoadBf16 {
  const uint16_t *p;
  FP4_HD float operator()(uint64_t i) const { return bf16_to_f32(p[i]); }
};

// Groups of a [rows, cols] tensor (§5.3): `len` consecutive elements in linear order each.
struct Layout {
  uint64_t rows, cols, n;
  uint64_t len;     // elements per group
  uint64_t groups;  // n / len
};

FP4_HD Layout make_layout(int group_size, uint64_t rows, uint64_t cols) {
  Layout l;
  l.rows = rows;
  l.cols = cols;
  l.n = rows * cols;
  l.len = group_size == -2 ? l.n : group_size == -1 ? cols : uint64_t(group_size);
  l.groups = l.n / l.len;
  return l;
}

FP4_HD uint64_t code_bytes(int code_bits, uint64_t n) { return code_bits == 4 ? (n + 1) / 2 : n; }

}  // namespace fp4::fmt
