// Device pieces shared by the W4A16 kernels (fp4_gemv.cu, fp4_gemm.cu): the dequantisation
// tables, the per-lane fragment loads and the BF16 tensor-core MMA.
//
// Both kernels feed mma.sync.m16n8k16 (bf16 in, f32 accumulate) with A = 16 weight rows and
// B = 8 activation rows (batch). The MMA sums over its 16 k slots in any order, so each lane may
// bind its k slots to any k as long as A and B agree: lane t (= lane % 4) owns the 32 consecutive
// k of [32 t, 32 t + 32) in every 128-wide chunk, i.e. one 16-byte load of packed codes per weight
// row and 64 contiguous bytes of each activation row. In MMA step s (0..7) of a chunk, the slots
// 2t, 2t+1 hold k = 32 t + 4 s + {0, 1} (code byte 2 s) and the slots 2t+8, 2t+9 hold
// k = 32 t + 4 s + {2, 3} (code byte 2 s + 1).
//
// Dequantisation is exact: e2m1 values times an E8M0 scale, or times an E4M3 scale, fit BF16
// (at most 6 significant bits), so the MMA sees the exact products and the NVFP4 tensor scale
// multiplies the f32 sum at the end. (The CPU twin rounds e4m3 * tensor_scale to f32 first, as
// docs/FORMATS.md defines the weight; the difference is below 2^-24 relative per weight.)
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../formats.hpp"
#include "fp4lab/gemm.h"

namespace fp4::cuda::w4 {

constexpr int kChunk = 128;  // k per chunk: 4 lanes x 32

// Shared-memory tables. pair[v * 32 + lane] is the bf16x2 of the two codes of byte v (low nibble
// in the low half); each lane reads its own copy, so lookups never conflict on a bank.
struct Tables {
  uint32_t pair[256 * 32];
  uint16_t scale[256];  // bf16 bits of each scale byte (E8M0 or E4M3)
  uint16_t code[16];    // bf16 bits of each E2M1 code
};

// Fills the tables; the caller synchronises the block before the first lookup.
__device__ __forceinline__ void build_tables(Tables &tb, int32_t format) {
  const int tid = threadIdx.x, nt = blockDim.x;
  if (tid < 16) tb.code[tid] = fmt::f32_to_bf16(fmt::mf_decode(fmt::fmt_e2m1(), uint32_t(tid)));
  for (int i = tid; i < 256; i += nt) {
    float s = format == FP4_WEIGHTS_MXFP4 ? fmt::e8m0_decode(uint32_t(i))
                                          : fmt::mf_decode(fmt::fmt_e4m3(), uint32_t(i));
    tb.scale[i] = fmt::f32_to_bf16(s);
  }
  __syncthreads();
  for (int i = tid; i < 256 * 32; i += nt) {
    uint32_t v = uint32_t(i) >> 5;
    tb.pair[i] = uint32_t(tb.code[v & 15u]) | (uint32_t(tb.code[v >> 4]) << 16);
  }
}

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162 *>(&a),
                             *reinterpret_cast<__nv_bfloat162 *>(&b));
  return *reinterpret_cast<uint32_t *>(&r);
}

// bf16x2 of code byte `byte_index` (0..15) of a lane's 16 code bytes, times the scale pair.
__device__ __forceinline__ uint32_t dequant_pair(const Tables &tb, const uint4 &codes,
                                                 int byte_index, uint32_t scale2, int lane) {
  const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
  uint32_t byte = (words[byte_index >> 2] >> (8 * (byte_index & 3))) & 0xffu;
  return bf16x2_mul(tb.pair[(byte << 5) | uint32_t(lane)], scale2);
}

// One weight row's part of a chunk for this lane: 16 code bytes and the bf16x2-replicated scales
// of its one (MXFP4) or two (NVFP4) groups. Missing elements (k tail, rows past n) are zero codes.
struct RowFrag {
  uint4 codes;
  uint32_t scale_lo;  // scale of code bytes 0..7
  uint32_t scale_hi;  // scale of code bytes 8..15
};

// `valid` = number of valid k in the lane's 32 (0, 16 or 32). ALIGNED16: rows are 16-byte
// aligned (k % 32 == 0), else the codes are read as two 8-byte halves.
template <bool ALIGNED16>
__device__ __forceinline__ RowFrag load_row(const Tables &tb, int32_t format,
                                            const uint8_t *codes, const uint8_t *scales,
                                            int64_t row, int64_t n, int64_t k, int64_t k0,
                                            int valid) {
  RowFrag f;
  f.codes = make_uint4(0, 0, 0, 0);
  f.scale_lo = f.scale_hi = 0;
  if (row >= n || valid <= 0) return f;
  const uint8_t *src = codes + row * (k / 2) + k0 / 2;
  if (ALIGNED16 && valid == 32) {
    f.codes = __ldg(reinterpret_cast<const uint4 *>(src));
  } else {
    uint2 lo = __ldg(reinterpret_cast<const uint2 *>(src));
    uint2 hi = valid == 32 ? __ldg(reinterpret_cast<const uint2 *>(src + 8)) : make_uint2(0, 0);
    f.codes = make_uint4(lo.x, lo.y, hi.x, hi.y);
  }
  uint32_t s0, s1;
  if (format == FP4_WEIGHTS_MXFP4) {
    s0 = s1 = tb.scale[__ldg(scales + row * (k / 32) + k0 / 32)];
  } else {
    const uint8_t *sp = scales + row * (k / 16) + k0 / 16;
    s0 = tb.scale[__ldg(sp)];
    s1 = valid == 32 ? tb.scale[__ldg(sp + 1)] : 0u;
  }
  f.scale_lo = s0 | (s0 << 16);
  f.scale_hi = s1 | (s1 << 16);
  return f;
}

// A fragment of MMA step s (0..7) from the lane's two rows (g and g + 8).
__device__ __forceinline__ void a_frag(const Tables &tb, const RowFrag &r0, const RowFrag &r1,
                                       int s, int lane, uint32_t a[4]) {
  uint32_t sc0 = s < 4 ? r0.scale_lo : r0.scale_hi;
  uint32_t sc1 = s < 4 ? r1.scale_lo : r1.scale_hi;
  a[0] = dequant_pair(tb, r0.codes, 2 * s, sc0, lane);
  a[1] = dequant_pair(tb, r1.codes, 2 * s, sc1, lane);
  a[2] = dequant_pair(tb, r0.codes, 2 * s + 1, sc0, lane);
  a[3] = dequant_pair(tb, r1.codes, 2 * s + 1, sc1, lane);
}

__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Writes the lane's accumulators of one 16 x 8 tile: rows g, g + 8 and batch columns 2t, 2t + 1.
__device__ __forceinline__ void store_tile(uint16_t *y, const float c[4], int64_t row0,
                                           int64_t col0, int64_t batch, int64_t n, float post,
                                           int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int64_t row = row0 + g + (i >> 1) * 8, b = col0 + 2 * t + (i & 1);
    if (row < n && b < batch) y[b * n + row] = fmt::f32_to_bf16(c[i] * post);
  }
}

}  // namespace fp4::cuda::w4
