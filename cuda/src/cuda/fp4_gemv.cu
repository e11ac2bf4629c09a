// W4A16 GEMV for small batches (1 .. kGemvMaxBatch): memory-bound, so the kernel streams every
// packed weight byte once with 16-byte loads (no L1 allocation, 256-byte L2 fetches), keeps the
// next stage of loads in flight per warp while it computes, and decodes E2M1 in registers.
//
// Layout: the plain one of fp4lab/gemm.h (codes [n, k/2], scales [n, k/group], row-major).
// Tensor-core roles: mma.sync.m16n8k16 (bf16 in, f32 accumulate) with A = 16 weight rows (a warp
// tile: lane (g, t) loads rows g and g + 8) and B = 8 columns of activations. k binding: lane t
// (= lane % 4) owns the 32 consecutive k [32 t, 32 t + 32) of every 128-wide chunk: one 16-byte
// code load per weight row, one MXFP4 group or two NVFP4 groups. Code word q (k 8q .. 8q + 7 of
// the lane's 32) yields the bf16x2 pairs (8q + j, 8q + j + 4), j = 0..3; MMA step 2q + s uses
// pairs j = 2s in k slots (2t, 2t+1) and j = 2s + 1 in (2t+8, 2t+9). The activations are permuted
// to the same pairs, so a lane's B registers are two consecutive words of its own k.
//
// Decode (3 integer ops per pair, one on the FMA pipe): for the pair (j, j + 4) the two nibbles
// are masked out at bits 0..3 and 16..19 (after a shift by 4 or 8), and one multiply by
// 2^6 + 2^12 copies each nibble to bits 6..9 and 12..15 (disjoint, so no carries); the mask
// 0x81C081C0 keeps the sign at bit 15 and the magnitude at bits 6..8: the bf16x2 of e2m1 * 2^-126
// (E2M1's exponent lands in the two low bits of the bf16 exponent, its subnormal 0.5 on a bf16
// subnormal).
//
// Two ways to apply the scales:
// - Batch 1 ("group slots"): the 8 columns of B are not batch rows but scale groups. Column s
//   holds the activations of one group (one lane's k of one chunk) and zeros elsewhere, so C[r][s]
//   is the unscaled partial sum of group s of weight row r; after a stage the lane multiplies its
//   C fragment by the f32 scales of those groups and adds it to its f32 sums. The decoded weights
//   go to the tensor cores as they are (no per-element multiply). The activations, times 2^64 so
//   that the products e2m1 * 2^-126 * x * 2^64 are normal f32, are permuted once per block into
//   shared memory; a lane whose column holds no group of a chunk reads a zero block instead.
//   Column of lane t's data: MXFP4 s = t + 4 (u % 2) with chunk u of the stage in C fragment
//   u / 2; NVFP4 s = 2t + h (h: first or second group of the lane's 32 k) in fragment u. Either
//   way column s of fragment f is the stage's scale group 8f + s. Exact for |x| < 2^64 and
//   outputs above 2^-64.
// - Batch 2..16: B columns are batch rows (two MMAs for batch rows 8..15), and each decoded pair
//   is multiplied (one bf16x2 multiply) by bf16(scale * 2^kScaleExp): e2m1 * scale *
//   2^(kScaleExp - 126), exact for scales in [2^-99, 2^31] (every E4M3 scale and every E8M0 scale
//   of real weights; E8M0 scales above 2^31 saturate); the sum is multiplied by 2^(126 -
//   kScaleExp). Activations come through L1 (every block reads all of them).
// Either way the f32 sum is multiplied by the NVFP4 tensor scale and rounded once to bf16. One
// launch may cover up to kMaxSegments weight matrices stacked by rows (q/k/v, gate/up of a decode
// step), each with its own tensor scale: a row's factor is its segment's, so every row gets the
// same arithmetic as in a launch of its own matrix.
//
// Work: a block has KW warps on the same 16 MT rows; warp kw owns the stages kw, kw + KW, ... of U
// chunks each and keeps the next P stages' loads in flight (a ring of P + 1 register stages); the
// KW partial sums meet in shared memory.
// Bytes moved: n*k/2 codes + n*k/group scales + batch*k*2 activations + batch*n*2 outputs.
// Recorded into a graph (the decode step, whose weights are constants of the recording) the
// kernel launches with programmatic dependent launch: it loads its first P stages of codes and
// scales, then waits for the kernel before it (which writes x), and lets the next one launch.
// Batch 1 with k % 256 == 0 and 16-byte aligned weights runs the ring kernel instead
// (gemv_ring_kernel below: the same arithmetic, the weights through a cp.async ring in shared
// memory, persistent blocks), and so do the decode step's fused products with their epilogues.
#include <cuda_bf16.h>
#include <cooperative_groups.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "../formats.hpp"
#include "../gemm_backend.hpp"
#include "../gemv_segments.hpp"
#include "check.cuh"
#include "decode_launch.cuh"
#include "fp4lab/gemm.h"
#include "stream.cuh"

namespace fp4::cuda {
namespace {

constexpr int kChunk = 128;          // k per chunk: 4 lanes x 32
constexpr int kScaleExp = 96;        // batch path: the decoded scale is bf16(scale * 2^kScaleExp)
constexpr float kUnscale = 0x1p30f;  // 2^(126 - kScaleExp)
constexpr uint32_t kX64 = 0x5f805f80u;  // bf16x2 (2^64, 2^64): the slot path's activation factor
constexpr float kSlotUnscale = 0x1p62f;  // 2^(126 - 64)
// The slot path keeps the permuted activations of the whole k (256 bytes per chunk) in shared
// memory.
constexpr int kSlotMaxSmem = 96 * 1024;
constexpr int kSlotMaxChunks = kSlotMaxSmem / 256 - 4;

// Output factors per row segment: rows [end[i - 1], end[i]) multiply their sum by post[i] (the
// unscale times the segment's NVFP4 tensor scale); unused segments end at INT32_MAX.
struct RowPosts {
  int end[kMaxGemvSegments];
  float post[kMaxGemvSegments];
};

__device__ __forceinline__ float post_of(const RowPosts &posts, int64_t row) {
  float post = posts.post[0];
#pragma unroll
  for (int i = 1; i < kMaxGemvSegments; i++)
    if (row >= posts.end[i - 1]) post = posts.post[i];
  return post;
}

// Epilogues of the batch-1 kernel. kEpiPlain writes y. The paired ones finish two rows of the
// product together, so a block's 16 MT tile rows are 8 MT row pairs instead of 16 MT consecutive
// rows: tile m, half h, lane row g of block b computes row pair_row(8 (MT b + m) + g, h).
// kEpiSwiglu (fp4_dec_gate_up_silu): pair i is (gate row i, up row half + i); y[i] =
// silu(gate) * up, y[half + i] = up. kEpiRope (fp4_dec_qkv_rope_kv_store): pair i is (j, j +
// half) of head i / half, j = i % half (half = head_dim / 2) over the stacked q, k, v heads; q and
// k pairs are rotated at *pos, k and v pairs stored into the caches. Either writes exactly what
// the plain kernel followed by fp4_dec_silu_mul or fp4_dec_rope_kv_store would (the same f32
// sums, the same bf16 roundings, the element math of decode_backend.hpp).
// kEpiAddNorm (fp4_dec_gemv_add_rmsnorm, ring kernel only): plain rows, then the grid's last
// block runs the residual add and RMSNorm of the whole output (add_rmsnorm_tail).
enum GemvEpi { kEpiPlain = 0, kEpiSwiglu = 1, kEpiRope = 2, kEpiAddNorm = 3 };
struct GemvEpilogue {
  int64_t half = 1;   // swiglu: gate rows; rope: head_dim / 2
  int64_t pairs = 0;  // row pairs of the product (n / 2)
  int64_t q_rows = 0, k_rows = 0;  // rope: heads * head_dim and kv_heads * head_dim
  const float *cos = nullptr, *sin = nullptr;
  const int32_t *pos = nullptr;
  int64_t ctx = 0;
  void *k_cache = nullptr, *v_cache = nullptr;
  int32_t cache_dtype = FP4_DTYPE_BF16;
  // add-norm: hidden += y, out = rmsnorm(hidden) * norm (bf16); counter counts finished blocks.
  float *hidden = nullptr;
  const void *norm = nullptr;
  int32_t norm_dtype = FP4_DTYPE_BF16;
  uint16_t *out = nullptr;
  float eps = 0;
  int *counter = nullptr;
};

// Row h (0, 1) of pair i; n (no row: zero codes) past the last pair.
template <int EPI>
__device__ __forceinline__ int64_t pair_row(const GemvEpilogue &e, int64_t i, int h, int64_t n) {
  if (i >= e.pairs) return n;
  if constexpr (EPI == kEpiSwiglu) return i + h * e.half;
  return (i / e.half) * 2 * e.half + h * e.half + i % e.half;
}

// Finishes pair i from its two rounded products a (row ra) and b (row rb = ra + half).
template <int EPI>
__device__ __forceinline__ void finish_pair(const GemvEpilogue &e, int64_t i, int64_t ra,
                                            int64_t rb, uint16_t a, uint16_t b, uint16_t *y) {
  using fp4::dec::store;
  const float fa = fmt::bf16_to_f32(a), fb = fmt::bf16_to_f32(b);
  if constexpr (EPI == kEpiSwiglu) {
    y[ra] = fmt::f32_to_bf16(fp4::dec::silu_mul(fa, fb));
    y[rb] = b;
  } else {
    const int64_t j = i % e.half, p = *e.pos, width = e.k_rows;
    if (ra >= e.q_rows + e.k_rows) {  // a value pair: stored as it is
      y[ra] = a;
      y[rb] = b;
      if (p >= 0 && p < e.ctx) {
        const int64_t at = p * width + (ra - e.q_rows - e.k_rows);
        store(e.v_cache, e.cache_dtype, at, fa);
        store(e.v_cache, e.cache_dtype, at + e.half, fb);
      }
      return;
    }
    if (p < 0 || p >= e.ctx) {
      store(y, FP4_DTYPE_BF16, ra, __int_as_float(0x7fc00000));
      store(y, FP4_DTYPE_BF16, rb, __int_as_float(0x7fc00000));
      return;
    }
    float qa, qb;
    fp4::dec::rope_pair(fa, fb, e.cos[p * e.half + j], e.sin[p * e.half + j], qa, qb);
    y[ra] = fmt::f32_to_bf16(qa);
    y[rb] = fmt::f32_to_bf16(qb);
    if (ra >= e.q_rows) {
      const int64_t at = p * width + (ra - e.q_rows);
      store(e.k_cache, e.cache_dtype, at, fmt::bf16_to_f32(y[ra]));
      store(e.k_cache, e.cache_dtype, at + e.half, fmt::bf16_to_f32(y[rb]));
    }
  }
}

// Compile-time variant: MT weight tiles of 16 rows per warp, KW warps per block splitting k, U
// chunks per stage, P stages in flight ahead of the one computed, NB: 1 = group slots (batch 1),
// 8 or 16 = batch rows; at least MINB resident blocks per SM (a register cap).
template <int MT_, int KW_, int U_, int P_, int NB_, int MINB_ = 1>
struct GemvCfg {
  static constexpr int MT = MT_, KW = KW_, U = U_, P = P_, NB = NB_, MINB = MINB_;
  static constexpr bool kSlot = NB == 1;
  static constexpr int kThreads = 32 * KW, kRows = 16 * MT;
};

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162 *>(&a),
                             *reinterpret_cast<__nv_bfloat162 *>(&b));
  return *reinterpret_cast<uint32_t *>(&r);
}

__device__ __forceinline__ uint32_t mul_lo(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("mul.lo.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// bf16x2 of e2m1 * 2^-126 for the nibble pairs (j, j + 4), j = 0..3, of code word w.
__device__ __forceinline__ void e2m1_pairs(uint32_t w, uint32_t b[4]) {
  const uint32_t h = w >> 8;
  b[0] = mul_lo(w & 0x000f000fu, 0x1040u) & 0x81c081c0u;
  b[1] = mul_lo(w & 0x00f000f0u, 0x0104u) & 0x81c081c0u;
  b[2] = mul_lo(h & 0x000f000fu, 0x1040u) & 0x81c081c0u;
  b[3] = mul_lo(h & 0x00f000f0u, 0x0104u) & 0x81c081c0u;
}

// Batch path: scale bits of one row and chunk (MXFP4: one E8M0 byte; NVFP4: two E4M3 bytes, low
// byte first) to the bf16x2 multipliers of the lane's low and high 16 k.
template <int FMT>
__device__ __forceinline__ void scale_pair(uint32_t bits, uint32_t &lo, uint32_t &hi) {
  if constexpr (FMT == FP4_WEIGHTS_MXFP4) {
    const uint32_t e = bits & 0xffu;
    const uint32_t b = e == 255u ? 0x7fc0u : min(e + kScaleExp, 254u) << 7;
    lo = hi = b * 0x10001u;
  } else {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(bits), __NV_E4M3);
    const float f0 = __half2float(__ushort_as_half(h.x)) * 0x1p96f;
    const float f1 = __half2float(__ushort_as_half(h.y)) * 0x1p96f;
    const uint32_t b0 = __bfloat16_as_ushort(__float2bfloat16_rn(f0));
    const uint32_t b1 = __bfloat16_as_ushort(__float2bfloat16_rn(f1));
    lo = b0 * 0x10001u;
    hi = b1 * 0x10001u;
  }
}

// Slot path: two scale bytes (low byte first) to f32. E8M0: 2^(e - 127), 0 -> 2^-127, 255 -> NaN.
template <int FMT>
__device__ __forceinline__ void scale_f32x2(uint32_t bits, float &s0, float &s1) {
  if constexpr (FMT == FP4_WEIGHTS_MXFP4) {
    auto one = [](uint32_t e) {
      return e == 0u ? 0x1p-127f : __uint_as_float(e == 255u ? 0x7fc00000u : e << 23);
    };
    s0 = one(bits & 0xffu);
    s1 = one((bits >> 8) & 0xffu);
  } else {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(bits), __NV_E4M3);
    s0 = __half2float(__ushort_as_half(h.x));
    s1 = __half2float(__ushort_as_half(h.y));
  }
}

__device__ __forceinline__ void mma_bf16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Streamed once: no L1 allocation, and L2 fetches 256-byte blocks (the rest of the row segment is
// read by the same block next).
__device__ __forceinline__ uint4 ld_stream16(const void *p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
__device__ __forceinline__ uint2 ld_stream8(const void *p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];"
               : "=r"(v.x), "=r"(v.y)
               : "l"(p));
  return v;
}

// Valid k among the lane's 32 of chunk c: 0, 16 or 32 (k is a multiple of 16).
__device__ __forceinline__ int lane_valid(int c, int t, int k) {
  const int k0 = c * kChunk + 32 * t;
  return k0 >= k ? 0 : min(k - k0, 32);
}

// One row's codes for the lane's 32 k of chunk c; zeros past n or k. AL16 (aligned_call): k is a
// multiple of 32 and codes 16-byte aligned, so rows are 16-byte aligned and a lane's 32 k are all
// valid or all past the end.
template <bool AL16>
__device__ __forceinline__ uint4 load_codes(const uint8_t *codes, int64_t row, int64_t n, int k,
                                            int c, int t) {
  const int valid = lane_valid(c, t, k), k0 = c * kChunk + 32 * t;
  if (row >= n || valid == 0) return make_uint4(0, 0, 0, 0);
  const uint8_t *src = codes + row * (k / 2) + k0 / 2;
  if (AL16) return ld_stream16(src);
  const uint2 lo = ld_stream8(src);
  const uint2 hi = valid == 32 ? ld_stream8(src + 8) : make_uint2(0, 0);
  return make_uint4(lo.x, lo.y, hi.x, hi.y);
}

// Batch path: one row's scale bits for the lane's 32 k of chunk c; zeros past n or k.
template <int FMT, bool AL16>
__device__ __forceinline__ uint32_t load_scale_bits(const uint8_t *scales, int64_t row, int64_t n,
                                                    int k, int c, int t) {
  const int valid = lane_valid(c, t, k), k0 = c * kChunk + 32 * t;
  if (row >= n || valid == 0) return 0;
  if constexpr (FMT == FP4_WEIGHTS_MXFP4) {
    return __ldg(scales + row * (k / 32) + k0 / 32);
  } else {
    const uint8_t *sp = scales + row * (k / 16) + k0 / 16;
    if (AL16) return __ldg(reinterpret_cast<const uint16_t *>(sp));
    return __ldg(sp) | (valid == 32 ? uint32_t(__ldg(sp + 1)) << 8 : 0u);
  }
}

// Slot path: scale bytes of groups gi, gi + 1 (gi even) of row, low byte first; zeros past n or
// past the row's groups. SA: the row's group count is even (16-bit aligned pairs).
template <bool SA>
__device__ __forceinline__ uint32_t load_scale_pair(const uint8_t *scales, int64_t row, int64_t n,
                                                    int groups, int gi) {
  if (row >= n || gi >= groups) return 0u;
  const uint8_t *sp = scales + row * groups + gi;
  if (SA) return __ldg(reinterpret_cast<const uint16_t *>(sp));
  return __ldg(sp) | (gi + 1 < groups ? uint32_t(__ldg(sp + 1)) << 8 : 0u);
}

// Batch path: activation pairs of batch row b for the lane's 32 k of chunk c:
// p[q][j] = (x[8q+j], x[8q+j+4]).
__device__ __forceinline__ void load_x(const uint16_t *x, int64_t b, int64_t batch, int k, int c,
                                       int t, uint32_t p[4][4]) {
  const int valid = lane_valid(c, t, k);
  const uint4 *src = reinterpret_cast<const uint4 *>(x + b * k + c * kChunk + 32 * t);
#pragma unroll
  for (int q = 0; q < 4; q++) {
    const uint4 v = b < batch && 8 * q < valid ? __ldg(src + q) : make_uint4(0, 0, 0, 0);
    p[q][0] = __byte_perm(v.x, v.z, 0x5410);
    p[q][1] = __byte_perm(v.x, v.z, 0x7632);
    p[q][2] = __byte_perm(v.y, v.w, 0x5410);
    p[q][3] = __byte_perm(v.y, v.w, 0x7632);
  }
}

// Slot path: x (batch row 0) permuted to the pairs, times 2^64, into shared uint4 blocks
// [chunk][t][q ^ (t >> 1 & 1)] (the XOR keeps the 4 lanes that read one q on distinct banks),
// zeros for the U chunks past the end; lanes that hold no slot of a chunk read the last block.
// Ends with a block barrier; gives lane (g, t) the block index base and chunk stride of its two
// column selections (a lane reads chunk c's q at xbase[sel] + c * xstride[sel] + (q ^ tsw)).
template <int FMT, int U, int kThreads>
__device__ __forceinline__ void stage_slot_x(const uint16_t *__restrict__ x, uint4 *xs, int k,
                                             int nchunks, int g, int t, int xbase[2],
                                             int xstride[2]) {
  for (int i = threadIdx.x; i < (nchunks + U) * 16; i += kThreads) {
    const int k0 = 8 * i;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (k0 < k) {
      v = __ldg(reinterpret_cast<const uint4 *>(x) + i);
      const uint32_t p0 = __byte_perm(v.x, v.z, 0x5410), p1 = __byte_perm(v.x, v.z, 0x7632);
      const uint32_t p2 = __byte_perm(v.y, v.w, 0x5410), p3 = __byte_perm(v.y, v.w, 0x7632);
      v = make_uint4(bf16x2_mul(p0, kX64), bf16x2_mul(p1, kX64), bf16x2_mul(p2, kX64),
                     bf16x2_mul(p3, kX64));
    }
    const int q = i & 3, tt = (i >> 2) & 3;
    xs[(i & ~3) | (q ^ ((tt >> 1) & 1))] = v;
  }
  __syncthreads();
#pragma unroll
  for (int sel = 0; sel < 2; sel++) {
    const bool mine = FMT == FP4_WEIGHTS_MXFP4 ? g == t + 4 * sel : g == 2 * t + sel;
    xbase[sel] = mine ? 4 * t : (nchunks + U - 1) * 16 + 4 * t;
    xstride[sel] = mine ? 16 : 0;
  }
}

// The slot path's arithmetic, shared by gemv_kernel and gemv_ring_kernel (so both give the same
// bits). slot_x: the lane's activation fragments of chunk c, the u-th of its stage, from the
// permuted copy stage_slot_x left in shared memory.
template <int FMT>
__device__ __forceinline__ void slot_x(const uint4 *xs, const int xbase[2], const int xstride[2],
                                       int tsw, int c, int u, uint4 xv[4]) {
#pragma unroll
  for (int q = 0; q < 4; q++) {
    const int sel = FMT == FP4_WEIGHTS_MXFP4 ? u & 1 : q >> 1;
    xv[q] = xs[xbase[sel] + c * xstride[sel] + (q ^ tsw)];
  }
}

// One chunk of a 16-row tile into the C fragment cf: codes w0 (row g), w1 (row g + 8).
__device__ __forceinline__ void slot_mma(const uint4 xv[4], uint4 w0, uint4 w1, float cf[4]) {
  const uint32_t wa[4] = {w0.x, w0.y, w0.z, w0.w}, wb[4] = {w1.x, w1.y, w1.z, w1.w};
#pragma unroll
  for (int q = 0; q < 4; q++) {
    uint32_t a[4], b[4];
    e2m1_pairs(wa[q], a);
    e2m1_pairs(wb[q], b);
    mma_bf16(cf, a[0], b[0], a[1], b[1], xv[q].x, xv[q].y);
    mma_bf16(cf, a[2], b[2], a[3], b[3], xv[q].z, xv[q].w);
  }
}

// acc plus half h of the C fragment cf (weight row 8h + g, slot columns 2t, 2t + 1) times their
// scales (`bits`: the two columns' scale codes).
template <int FMT>
__device__ __forceinline__ float slot_scaled(uint32_t bits, const float cf[4], int h, float acc) {
  float s0, s1;
  scale_f32x2<FMT>(bits, s0, s1);
  acc = fmaf(cf[2 * h], s0, acc);
  return fmaf(cf[2 * h + 1], s1, acc);
}

// Slot path: C fragments (8 slot columns each) per tile and stage: MXFP4 has 4 groups per chunk,
// NVFP4 8.
template <class C, int FMT>
constexpr int slot_frags() {
  return FMT == FP4_WEIGHTS_MXFP4 ? (C::U + 1) / 2 : C::U;
}

// One stage of one warp: codes of U chunks x MT tiles x rows (g, g + 8), and their scale bits
// (batch path: the lane's rows and k; slot path: rows g, g + 8 for the lane's slot columns 2t,
// 2t + 1 of each C fragment).
template <class C, int FMT>
struct Stage {
  uint4 q[C::U][C::MT][2];
  uint32_t s[C::kSlot ? 1 : C::U][C::MT][2];
  uint32_t ss[C::kSlot ? C::MT : 1][slot_frags<C, FMT>()][2];
};

template <class C, int FMT, bool AL16, int EPI>
__global__ void __launch_bounds__(C::kThreads, C::MINB)
    gemv_kernel(const uint16_t *__restrict__ x, const uint8_t *__restrict__ codes,
                const uint8_t *__restrict__ scales, RowPosts posts, GemvEpilogue epi,
                uint16_t *__restrict__ y, int batch, int n, int k) {
  static_assert(EPI == kEpiPlain || C::kSlot, "paired epilogues are batch-1 only");
  constexpr int MT = C::MT, KW = C::KW, U = C::U, P = C::P, NB = C::NB;
  constexpr int NF = slot_frags<C, FMT>();
  constexpr int kGroupsPerChunk = FMT == FP4_WEIGHTS_MXFP4 ? 4 : 8;
  extern __shared__ uint4 xs[];  // slot path: permuted activations, zero past k
  const int lane = threadIdx.x & 31, kw = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t row0 = int64_t(blockIdx.x) * C::kRows;
  const int nchunks = (k + kChunk - 1) / kChunk;
  const int groups = k / (FMT == FP4_WEIGHTS_MXFP4 ? 32 : 16);
  constexpr int step = KW * U;  // chunks between a warp's consecutive stages
  pdl_trigger();
  // Weight row of tile m, half h of this lane (the epilogue comment above).
  int prow[EPI == kEpiPlain ? 1 : MT][2];  // rows < n < 2^31: half the registers of int64
  if constexpr (EPI != kEpiPlain) {
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
      for (int h = 0; h < 2; h++)
        prow[m][h] = int(pair_row<EPI>(epi, 8 * (int64_t(MT) * blockIdx.x + m) + g, h, n));
  }
  auto row_of = [&](int m, int h) -> int64_t {
    if constexpr (EPI == kEpiPlain) return row0 + 16 * m + 8 * h + g;
    else return prow[m][h];
  };

  auto load_stage = [&](Stage<C, FMT> &st, int c0) {
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int m = 0; m < MT; m++)
#pragma unroll
        for (int h = 0; h < 2; h++)
          st.q[u][m][h] = load_codes<AL16>(codes, row_of(m, h), n, k, c0 + u, t);
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int64_t r = row_of(m, h);
        if constexpr (C::kSlot) {
#pragma unroll
          for (int f = 0; f < NF; f++)
            st.ss[m][f][h] =
                load_scale_pair<AL16>(scales, r, n, groups, kGroupsPerChunk * c0 + 8 * f + 2 * t);
        } else {
#pragma unroll
          for (int u = 0; u < U; u++)
            st.s[u][m][h] = load_scale_bits<FMT, AL16>(scales, r, n, k, c0 + u, t);
        }
      }
  };

  Stage<C, FMT> ring[P + 1];
  const int cfirst = kw * U;
#pragma unroll
  for (int s = 0; s < P; s++) load_stage(ring[s], cfirst + s * step);
  // Launched with PDL (recorded into a graph, header comment) the first weight stages are in
  // flight before the kernel waits for the one that writes x.
  pdl_wait();

  int xbase[2] = {0, 0}, xstride[2] = {0, 0};
  const int tsw = (t >> 1) & 1;
  if constexpr (C::kSlot) stage_slot_x<FMT, U, C::kThreads>(x, xs, k, nchunks, g, t, xbase, xstride);

  // Slot path: acc[m][h][0] sums weight row 16m + 8h + g over the lane's slot columns. Batch
  // path: acc[m][bh] is the C fragment of batch rows 8 bh .. 8 bh + 7: acc[m][bh][i] is weight
  // row 16m + 8 (i / 2) + g, batch row 8 bh + 2t + i % 2.
  float acc[MT][2][4];
#pragma unroll
  for (int m = 0; m < MT; m++)
#pragma unroll
    for (int h = 0; h < 2; h++) acc[m][h][0] = acc[m][h][1] = acc[m][h][2] = acc[m][h][3] = 0.0f;

  auto compute_slot = [&](const Stage<C, FMT> &st, int c0) {
    float cf[MT][NF][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
      for (int f = 0; f < NF; f++) cf[m][f][0] = cf[m][f][1] = cf[m][f][2] = cf[m][f][3] = 0.0f;
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int f = FMT == FP4_WEIGHTS_MXFP4 ? u / 2 : u;
      uint4 xv[4];
      slot_x<FMT>(xs, xbase, xstride, tsw, c0 + u, u, xv);
#pragma unroll
      for (int m = 0; m < MT; m++) slot_mma(xv, st.q[u][m][0], st.q[u][m][1], cf[m][f]);
    }
    // cf[m][f][2h + i]: weight row 16m + 8h + g, slot column 2t + i: scale group
    // kGroupsPerChunk * c0 + 8f + 2t + i.
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
      for (int f = 0; f < NF; f++)
#pragma unroll
        for (int h = 0; h < 2; h++)
          acc[m][h][0] = slot_scaled<FMT>(st.ss[m][f][h], cf[m][f], h, acc[m][h][0]);
  };

  auto compute_batch = [&](const Stage<C, FMT> &st, int c0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      uint32_t xa[4][4], xb[4][4];
      load_x(x, g, batch, k, c0 + u, t, xa);
      if constexpr (NB == 16) load_x(x, g + 8, batch, k, c0 + u, t, xb);
#pragma unroll
      for (int m = 0; m < MT; m++) {
        uint32_t slo[2], shi[2];
        scale_pair<FMT>(st.s[u][m][0], slo[0], shi[0]);
        scale_pair<FMT>(st.s[u][m][1], slo[1], shi[1]);
        const uint4 w0 = st.q[u][m][0], w1 = st.q[u][m][1];
        const uint32_t wa[4] = {w0.x, w0.y, w0.z, w0.w}, wb[4] = {w1.x, w1.y, w1.z, w1.w};
#pragma unroll
        for (int q = 0; q < 4; q++) {
          uint32_t a[4], b[4];
          e2m1_pairs(wa[q], a);
          e2m1_pairs(wb[q], b);
#pragma unroll
          for (int j = 0; j < 4; j++) {
            a[j] = bf16x2_mul(a[j], q < 2 ? slo[0] : shi[0]);
            b[j] = bf16x2_mul(b[j], q < 2 ? slo[1] : shi[1]);
          }
          mma_bf16(acc[m][0], a[0], b[0], a[1], b[1], xa[q][0], xa[q][1]);
          mma_bf16(acc[m][0], a[2], b[2], a[3], b[3], xa[q][2], xa[q][3]);
          if constexpr (NB == 16) {
            mma_bf16(acc[m][1], a[0], b[0], a[1], b[1], xb[q][0], xb[q][1]);
            mma_bf16(acc[m][1], a[2], b[2], a[3], b[3], xb[q][2], xb[q][3]);
          }
        }
      }
    }
  };

  // Ring: at sub-step s the warp refills the slot it computed last (P stages ahead), then
  // computes slot s.
  for (int c = cfirst; c < nchunks; c += (P + 1) * step) {
#pragma unroll
    for (int s = 0; s <= P; s++) {
      const int cs = c + s * step;
      if (cs >= nchunks) break;
      load_stage(ring[(s + P) % (P + 1)], cs + P * step);
      if constexpr (C::kSlot) {
        compute_slot(ring[s], cs);
      } else {
        compute_batch(ring[s], cs);
      }
    }
  }

  // Partial sums of the KW warps meet in shared memory.
  constexpr int kOut = C::kSlot ? 16 * MT : 16 * MT * NB;  // outputs per block
  __shared__ float red[KW][kOut];
  if constexpr (C::kSlot) {
    // Sum the slot columns (lanes t) of each weight row; lane t = 0 holds rows g, g + 8.
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        float v = acc[m][h][0];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (t == 0) red[kw][16 * m + 8 * h + g] = v;
      }
  } else {
    // C[row][batch]: c0, c1 = batch 2t, 2t + 1 of row g; c2, c3 the same of row g + 8.
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
      for (int bh = 0; bh < NB / 8; bh++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
          const int row = 16 * m + 8 * (i >> 1) + g, b = 8 * bh + 2 * t + (i & 1);
          red[kw][b * 16 * MT + row] = acc[m][bh][i];
        }
  }
  __syncthreads();
  if constexpr (EPI != kEpiPlain) {
    // Thread o finishes pair 8 (MT b + m) + r: tile rows 16 m + r (its row 0) and 16 m + 8 + r.
    for (int o = threadIdx.x; o < 8 * MT; o += C::kThreads) {
      const int m = o / 8, r = o % 8;
      const int64_t i = 8 * (int64_t(MT) * blockIdx.x + m) + r;
      if (i >= epi.pairs) continue;
      float sa = 0.0f, sb = 0.0f;
#pragma unroll
      for (int w = 0; w < KW; w++) sa += red[w][16 * m + r];
#pragma unroll
      for (int w = 0; w < KW; w++) sb += red[w][16 * m + 8 + r];
      const int64_t ra = pair_row<EPI>(epi, i, 0, n), rb = pair_row<EPI>(epi, i, 1, n);
      finish_pair<EPI>(epi, i, ra, rb, fmt::f32_to_bf16(sa * post_of(posts, ra)),
                       fmt::f32_to_bf16(sb * post_of(posts, rb)), y);
    }
  } else {
    for (int o = threadIdx.x; o < kOut; o += C::kThreads) {
      float s = 0.0f;
#pragma unroll
      for (int w = 0; w < KW; w++) s += red[w][o];
      const int64_t row = row0 + o % (16 * MT);
      const int b = o / (16 * MT);
      if (row < n && b < batch)
        y[int64_t(b) * n + row] = fmt::f32_to_bf16(s * post_of(posts, row));
    }
  }
}

// Batch 1 through a ring in shared memory ("ring" kernel): the slot path's arithmetic (the same
// lanes, MMAs, scale order and warp sums as gemv_kernel with Slot, so the same bits), but a
// warp's codes and scales arrive by cp.async into D shared-memory stages, D - 1 of them in
// flight while one is computed: the bytes in flight no longer cost registers. Persistent: grid =
// blocks resident at once, block b takes 16-row tiles b, b + gridDim.x, ...; x is staged once per
// block, and a warp's ring runs on across tile boundaries, so the next tile's loads are in
// flight during a tile's warp reduction and epilogue. Needs k % 256 == 0 and 16-byte aligned
// codes and scales (ring_fits). A stage of warp kw: chunks c0, c0 + 1 (c0 = kw U + j KW U) of
// the tile's 16 rows: codes [u][h][lane] (2 KB; lane (g, t) copies its own rows g, g + 8 and
// k), scales [16 rows][2 x groups per chunk bytes] (lanes 0..15 copy one row each).
// Bytes moved: as gemv_kernel's (codes, scales and x once, y once).
constexpr int kRingKW = 8, kRingU = 2, kRingThreads = 32 * kRingKW;
constexpr int kRingStage = kRingU * 2 * 32 + 16;  // uint4: codes, then 256 bytes of scales
constexpr int kRingMaxSmem = 200 * 1024;           // x blocks and stages of one block

__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool ok) {
  const unsigned d = unsigned(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
               "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_async8(void *dst, const void *src, bool ok) {
  const unsigned d = unsigned(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(d), "l"(src),
               "r"(ok ? 8 : 0));
}

// kEpiAddNorm's tail, run by the last block to finish: fp4_dec_add_rmsnorm of the output row y
// [n] (n % 4 == 0, n <= 8192, 16-byte aligned: add_norm_fits) in the sum order of
// decode_rmsnorm.cu's fast path, whose 512 threads each of these 256 plays two of: thread v
// sums its float4s 4 (v + 512 c), c < 4, in f64; warps reduce by an xor tree; the 16 warp sums
// add in order. So the bits equal the standalone kernel's.
__device__ __noinline__ void add_rmsnorm_tail(const GemvEpilogue &e, const uint16_t *y, int n) {
  constexpr int kV = 2 * kRingThreads, kC = 4;
  __shared__ double partial[kV / 32];
  float4 v[2][kC], w[2][kC];
  double ss[2] = {0, 0};
#pragma unroll
  for (int h = 0; h < 2; h++)
#pragma unroll
    for (int c = 0; c < kC; c++) {
      const int i = 4 * (int(threadIdx.x) + h * kRingThreads + c * kV);
      if (i >= n) break;
      const uint2 r = __ldcg(reinterpret_cast<const uint2 *>(y + i));  // other blocks' rows
      float4 a = *reinterpret_cast<const float4 *>(e.hidden + i);
      a.x += __uint_as_float(r.x << 16);
      a.y += __uint_as_float(r.x & 0xffff0000u);
      a.z += __uint_as_float(r.y << 16);
      a.w += __uint_as_float(r.y & 0xffff0000u);
      *reinterpret_cast<float4 *>(e.hidden + i) = a;
      v[h][c] = a;
      ss[h] += double(a.x) * a.x;
      ss[h] += double(a.y) * a.y;
      ss[h] += double(a.z) * a.z;
      ss[h] += double(a.w) * a.w;
      if (e.norm_dtype == FP4_DTYPE_BF16) {
        const uint2 b = *reinterpret_cast<const uint2 *>(static_cast<const uint16_t *>(e.norm) + i);
        w[h][c] = make_float4(__uint_as_float(b.x << 16), __uint_as_float(b.x & 0xffff0000u),
                              __uint_as_float(b.y << 16), __uint_as_float(b.y & 0xffff0000u));
      } else {
        w[h][c] = *reinterpret_cast<const float4 *>(static_cast<const float *>(e.norm) + i);
      }
    }
#pragma unroll
  for (int h = 0; h < 2; h++) {
    double t = ss[h];
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32 + h * (kRingThreads / 32)] = t;
  }
  __syncthreads();
  double total = 0;
  for (int i = 0; i < kV / 32; i++) total += partial[i];
  const float inv = float(1.0 / sqrt(double(float(total / double(n))) + double(e.eps)));
#pragma unroll
  for (int h = 0; h < 2; h++)
#pragma unroll
    for (int c = 0; c < kC; c++) {
      const int i = 4 * (int(threadIdx.x) + h * kRingThreads + c * kV);
      if (i >= n) break;
      const float4 a = v[h][c], g = w[h][c];
      const uint32_t lo = fmt::f32_to_bf16(g.x * (a.x * inv)) |
                          uint32_t(fmt::f32_to_bf16(g.y * (a.y * inv))) << 16;
      const uint32_t hi = fmt::f32_to_bf16(g.z * (a.z * inv)) |
                          uint32_t(fmt::f32_to_bf16(g.w * (a.w * inv))) << 16;
      *reinterpret_cast<uint2 *>(e.out + i) = make_uint2(lo, hi);
    }
}

template <int FMT, int D, int EPI>
__global__ void __launch_bounds__(kRingThreads, 3)
    gemv_ring_kernel(const uint16_t *__restrict__ x, const uint8_t *__restrict__ codes,
                     const uint8_t *__restrict__ scales, RowPosts posts, GemvEpilogue epi,
                     uint16_t *__restrict__ y, int n, int k) {
  constexpr int KW = kRingKW, U = kRingU;
  constexpr int NF = FMT == FP4_WEIGHTS_MXFP4 ? 1 : 2;        // C fragments per stage
  constexpr int kGroupsPerChunk = FMT == FP4_WEIGHTS_MXFP4 ? 4 : 8;
  constexpr int SB = U * kGroupsPerChunk;                       // scale bytes per row and stage
  extern __shared__ uint4 smem[];  // x blocks (nchunks + U) * 16, then the KW x D stages
  const int lane = threadIdx.x & 31, kw = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int nchunks = k / kChunk, groups = k / (FMT == FP4_WEIGHTS_MXFP4 ? 32 : 16);
  constexpr bool kPlainRows = EPI == kEpiPlain || EPI == kEpiAddNorm;
  const int ntiles = kPlainRows ? (n + 15) / 16 : (int(epi.pairs) + 7) / 8;
  const int mine = ntiles > int(blockIdx.x) ? (ntiles - 1 - int(blockIdx.x)) / gridDim.x + 1 : 0;
  constexpr int step = KW * U;
  const int S = nchunks > kw * U ? (nchunks - kw * U + step - 1) / step : 0;  // stages per tile
  uint4 *xs = smem, *ring = smem + (nchunks + U) * 16 + kw * D * kRingStage;
  pdl_trigger();

  // Weight row of tile row r (0..15) of the block's i-th tile.
  auto row_of = [&](int i, int r) -> int64_t {
    const int64_t tile = int64_t(blockIdx.x) + int64_t(i) * gridDim.x;
    if constexpr (kPlainRows) return tile * 16 + r;
    else return pair_row<EPI>(epi, tile * 8 + (r & 7), r >> 3, n);
  };
  // The next stage to copy (tile ii, stage jj of it), and that tile's rows: the lane's code rows
  // (h = 0, 1) and, for lanes 0..15, scale row `lane` (-1: past n, zeros).
  int ii = 0, jj = 0, rows_of = -1;
  int64_t crow[2] = {0, 0}, srow = 0;
  auto issue = [&]() {
    if (ii < mine) {
      if (rows_of != ii) {
        crow[0] = row_of(ii, g);
        crow[1] = row_of(ii, 8 + g);
        srow = row_of(ii, lane & 15);
        rows_of = ii;
      }
      const int c0 = kw * U + jj * step;
      uint4 *st = ring + ((ii * S + jj) % D) * kRingStage;
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int64_t r = crow[h], rr = r < n ? r : 0;  // rows past n: zeros
#pragma unroll
        for (int u = 0; u < U; u++)
          cp_async16(st + (u * 2 + h) * 32 + lane,
                     codes + rr * (k / 2) + (c0 + u) * (kChunk / 2) + 16 * t, r < n);
      }
      if (lane < 16) {
        const int64_t rr = srow < n ? srow : 0;
        const uint8_t *src = scales + rr * groups + c0 * kGroupsPerChunk;
        uint8_t *dst = reinterpret_cast<uint8_t *>(st + U * 2 * 32) + lane * SB;
        if constexpr (SB == 16) {
          cp_async16(dst, src, srow < n);
        } else {
          cp_async8(dst, src, srow < n);
        }
      }
      if (++jj == S) {
        jj = 0;
        ii++;
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };

  if (S == 0) ii = mine;  // a warp with no chunks copies nothing
#pragma unroll
  for (int s = 0; s < D - 1; s++) issue();
  // Launched with PDL (recorded into a graph) the first stages are in flight before the wait.
  pdl_wait();
  int xbase[2], xstride[2];
  const int tsw = (t >> 1) & 1;
  stage_slot_x<FMT, U, kRingThreads>(x, xs, k, nchunks, g, t, xbase, xstride);

  __shared__ float red[KW][16];
  int s = 0;
  for (int i = 0; i < mine; i++) {
    float acc[2] = {0.0f, 0.0f};
    for (int j = 0; j < S; j++, s++) {
      __syncwarp();  // every lane is done with the stage the next copy overwrites
      issue();
      asm volatile("cp.async.wait_group %0;\n" ::"n"(D - 1));
      __syncwarp();  // the scales copied by other lanes are visible
      const uint4 *st = ring + (s % D) * kRingStage;
      const int c0 = kw * U + j * step;
      float cf[NF][4];
#pragma unroll
      for (int f = 0; f < NF; f++) cf[f][0] = cf[f][1] = cf[f][2] = cf[f][3] = 0.0f;
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int f = FMT == FP4_WEIGHTS_MXFP4 ? u / 2 : u;
        uint4 xv[4];
        slot_x<FMT>(xs, xbase, xstride, tsw, c0 + u, u, xv);
        slot_mma(xv, st[(u * 2) * 32 + lane], st[(u * 2 + 1) * 32 + lane], cf[f]);
      }
      const uint8_t *sc = reinterpret_cast<const uint8_t *>(st + U * 2 * 32);
#pragma unroll
      for (int f = 0; f < NF; f++)
#pragma unroll
        for (int h = 0; h < 2; h++)
          acc[h] = slot_scaled<FMT>(
              *reinterpret_cast<const uint16_t *>(sc + (8 * h + g) * SB + 8 * f + 2 * t), cf[f], h,
              acc[h]);
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
      float v = acc[h];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      if (t == 0) red[kw][8 * h + g] = v;
    }
    __syncthreads();
    const int64_t tile = int64_t(blockIdx.x) + int64_t(i) * gridDim.x;
    if constexpr (EPI == kEpiPlain || EPI == kEpiAddNorm) {
      if (threadIdx.x < 16) {
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < KW; w++) v += red[w][threadIdx.x];
        const int64_t row = tile * 16 + threadIdx.x;
        if (row < n) y[row] = fmt::f32_to_bf16(v * post_of(posts, row));
      }
    } else {
      const int64_t pi = tile * 8 + threadIdx.x;
      if (threadIdx.x < 8 && pi < epi.pairs) {
        float sa = 0.0f, sb = 0.0f;
#pragma unroll
        for (int w = 0; w < KW; w++) sa += red[w][threadIdx.x];
#pragma unroll
        for (int w = 0; w < KW; w++) sb += red[w][8 + threadIdx.x];
        const int64_t ra = pair_row<EPI>(epi, pi, 0, n), rb = pair_row<EPI>(epi, pi, 1, n);
        finish_pair<EPI>(epi, pi, ra, rb, fmt::f32_to_bf16(sa * post_of(posts, ra)),
                         fmt::f32_to_bf16(sb * post_of(posts, rb)), y);
      }
    }
    __syncthreads();  // red is rewritten by the next tile
  }
  asm volatile("cp.async.wait_group 0;\n" ::);
  if constexpr (EPI == kEpiAddNorm) {
    // The last block to finish sees every block's rows (each fenced them before counting).
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(epi.counter, 1) == int(gridDim.x) - 1;
    __syncthreads();
    if (last) {
      __threadfence();
      add_rmsnorm_tail(epi, y, n);
      if (threadIdx.x == 0) *epi.counter = 0;  // ready for the next launch
    }
  }
}

// Batch 2..16 with the activations staged in shared memory ("staged" kernel). A block has RW row
// warps (16 MT rows each, 16 MT RW rows per block) times KW k warps; a step is KW x U chunks, of
// which warp kw computes chunks kw U .. kw U + U - 1. All RW row warps of one kw read the same
// chunks, so each step's activations (NB x 128 k per chunk) are read from global memory (L2) once
// per block, permuted to the decoded pairs and stored as uint4 [chunk][q][b][t] (lane (g, t) of a
// warp reads 512 contiguous bytes per load: no bank conflicts), and every row warp reads them from
// there. Compared with each warp reading them through L1 (the gemv_kernel batch path, 32 rows
// per block), activation bytes per weight byte from L2 drop from 64 / 32 rows to 64 / (16 MT RW)
// rows, and the L1 requests from 16 lines per load to 4. Double-buffered: the next step's
// activations are loaded into registers while the current step is computed, stored after it, one
// barrier per step; codes and scales come as in gemv_kernel (P stages in flight per warp).
// Split k: blockIdx.y = s owns chunks [s cps, (s + 1) cps); the S = gridDim.y splits of a row
// block form one thread-block cluster, and after the block's KW partials are summed (kw order)
// the splits' partials are summed in split order through distributed shared memory
// (deterministic; no workspace). Arithmetic per output: the batch path's (bf16 scale multiply,
// f32 MMA accumulation), so the same bound holds.
template <int MT_, int RW_, int KW_, int U_, int P_, int NB_, int MINB_>
struct StagedCfg {
  static constexpr int MT = MT_, RW = RW_, KW = KW_, U = U_, P = P_, NB = NB_, MINB = MINB_;
  static constexpr bool kSlot = false;
  static constexpr int kThreads = 32 * RW * KW, kRows = 16 * MT * RW;
  static constexpr int kStepChunks = KW * U;
  static constexpr int kChunkX = NB * 16;                // uint4 per staged chunk
  static constexpr int kStepX = kStepChunks * kChunkX;   // uint4 per buffer
  static constexpr int kOut = kRows * NB;                // outputs per block
  static constexpr size_t kSmem = std::max<size_t>(2 * kStepX * sizeof(uint4),
                                                   size_t(KW) * kOut * sizeof(float));
};

template <class C, int FMT, bool AL16>
__global__ void __launch_bounds__(C::kThreads, C::MINB)
    staged_kernel(const uint16_t *__restrict__ x, const uint8_t *__restrict__ codes,
                  const uint8_t *__restrict__ scales, RowPosts posts, uint16_t *__restrict__ y,
                  int batch, int n, int k, int cps) {
  constexpr int MT = C::MT, RW = C::RW, KW = C::KW, U = C::U, P = C::P, NB = C::NB;
  constexpr int kStep = C::kStepChunks;
  extern __shared__ uint4 smem[];  // two x buffers of kStepX; after the loop the KW partials
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rw = warp % RW, kw = warp / RW;
  const int g = lane >> 2, t = lane & 3;
  const int64_t brow0 = int64_t(blockIdx.x) * C::kRows;
  const int64_t row0 = brow0 + 16 * MT * rw;
  const int nchunks = (k + kChunk - 1) / kChunk;
  const int cbeg = blockIdx.y * cps, cend = min(cbeg + cps, nchunks);
  const int steps = cend > cbeg ? (cend - cbeg + kStep - 1) / kStep : 0;

  // Codes and scale bits of the warp's chunks of step s; zeros past the split's chunks.
  auto load_stage = [&](Stage<C, FMT> &st, int s) {
    const int c0 = cbeg + s * kStep + kw * U;
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int m = 0; m < MT; m++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
          const int64_t r = row0 + 16 * m + 8 * h + g;
          const bool in = c0 + u < cend;
          st.q[u][m][h] = in ? load_codes<AL16>(codes, r, n, k, c0 + u, t) : make_uint4(0, 0, 0, 0);
          st.s[u][m][h] = in ? load_scale_bits<FMT, AL16>(scales, r, n, k, c0 + u, t) : 0u;
        }
  };

  // Staging of step s: thread i of the block moves uint4 i, i + kThreads, ...; within a chunk
  // uint4 ii is (b = 2 (ii >> 5) + (ii >> 2 & 1), q = ii >> 3 & 3, t = ii & 3), so a warp's
  // global loads cover two whole 256-byte rows and each quarter warp stores 128 contiguous bytes.
  constexpr int kXPer = (C::kStepX + C::kThreads - 1) / C::kThreads;
  uint4 xr[kXPer];
  auto x_index = [&](int j, int &u, int &q, int &b, int &tt) {
    const int i = threadIdx.x + j * C::kThreads, ii = i % C::kChunkX;
    u = i / C::kChunkX;
    tt = ii & 3;
    q = (ii >> 3) & 3;
    b = 2 * (ii >> 5) + ((ii >> 2) & 1);
    return C::kStepX % C::kThreads == 0 || i < C::kStepX;
  };
  auto load_x_step = [&](int s) {
#pragma unroll
    for (int j = 0; j < kXPer; j++) {
      int u, q, b, tt;
      xr[j] = make_uint4(0, 0, 0, 0);
      if (x_index(j, u, q, b, tt)) {
        const int c = cbeg + s * kStep + u, k0 = c * kChunk + 32 * tt + 8 * q;
        if (c < cend && k0 < k && b < batch)
          xr[j] = __ldg(reinterpret_cast<const uint4 *>(x + int64_t(b) * k + k0));
      }
    }
  };
  auto store_x_step = [&](uint4 *buf) {
#pragma unroll
    for (int j = 0; j < kXPer; j++) {
      int u, q, b, tt;
      if (x_index(j, u, q, b, tt)) {
        const uint4 v = xr[j];
        buf[u * C::kChunkX + (q * NB + b) * 4 + tt] =
            make_uint4(__byte_perm(v.x, v.z, 0x5410), __byte_perm(v.x, v.z, 0x7632),
                       __byte_perm(v.y, v.w, 0x5410), __byte_perm(v.y, v.w, 0x7632));
      }
    }
  };

  // acc[m][bh][i]: weight row 16m + 8 (i / 2) + g of the warp, batch row 8 bh + 2t + i % 2.
  float acc[MT][2][4];
#pragma unroll
  for (int m = 0; m < MT; m++)
#pragma unroll
    for (int h = 0; h < 2; h++) acc[m][h][0] = acc[m][h][1] = acc[m][h][2] = acc[m][h][3] = 0.0f;

  auto compute = [&](const Stage<C, FMT> &st, const uint4 *xs) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const uint4 *xc = xs + (kw * U + u) * C::kChunkX;
      uint32_t slo[MT][2], shi[MT][2];
#pragma unroll
      for (int m = 0; m < MT; m++)
#pragma unroll
        for (int h = 0; h < 2; h++) scale_pair<FMT>(st.s[u][m][h], slo[m][h], shi[m][h]);
#pragma unroll
      for (int q = 0; q < 4; q++) {
        const uint4 va = xc[(q * NB + g) * 4 + t];
        const uint4 vb = NB == 16 ? xc[(q * NB + g + 8) * 4 + t] : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int m = 0; m < MT; m++) {
          const uint4 w0 = st.q[u][m][0], w1 = st.q[u][m][1];
          const uint32_t wa[4] = {w0.x, w0.y, w0.z, w0.w}, wb[4] = {w1.x, w1.y, w1.z, w1.w};
          uint32_t a[4], b[4];
          e2m1_pairs(wa[q], a);
          e2m1_pairs(wb[q], b);
#pragma unroll
          for (int j = 0; j < 4; j++) {
            a[j] = bf16x2_mul(a[j], q < 2 ? slo[m][0] : shi[m][0]);
            b[j] = bf16x2_mul(b[j], q < 2 ? slo[m][1] : shi[m][1]);
          }
          mma_bf16(acc[m][0], a[0], b[0], a[1], b[1], va.x, va.y);
          mma_bf16(acc[m][0], a[2], b[2], a[3], b[3], va.z, va.w);
          if constexpr (NB == 16) {
            mma_bf16(acc[m][1], a[0], b[0], a[1], b[1], vb.x, vb.y);
            mma_bf16(acc[m][1], a[2], b[2], a[3], b[3], vb.z, vb.w);
          }
        }
      }
    }
  };

  Stage<C, FMT> ring[P + 1];
#pragma unroll
  for (int s = 0; s < P; s++) load_stage(ring[s], s);
  if (steps > 0) {
    load_x_step(0);
    store_x_step(smem);
  }
  __syncthreads();
  for (int s0 = 0; s0 < steps; s0 += P + 1) {
#pragma unroll
    for (int r = 0; r <= P; r++) {
      const int s = s0 + r;
      if (s >= steps) break;
      const bool more = s + 1 < steps;
      if (more) load_x_step(s + 1);
      load_stage(ring[(r + P) % (P + 1)], s + P);
      compute(ring[r], smem + (s & 1) * C::kStepX);
      if (more) store_x_step(smem + ((s + 1) & 1) * C::kStepX);
      __syncthreads();
    }
  }

  // The x buffers are free (the loop ended on a barrier): partials red[kw][b * kRows + row].
  float *red = reinterpret_cast<float *>(smem);
#pragma unroll
  for (int m = 0; m < MT; m++)
#pragma unroll
    for (int bh = 0; bh < NB / 8; bh++)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int row = 16 * MT * rw + 16 * m + 8 * (i >> 1) + g, b = 8 * bh + 2 * t + (i & 1);
        red[kw * C::kOut + b * C::kRows + row] = acc[m][bh][i];
      }
  __syncthreads();
  auto write = [&](int o, float s) {
    const int64_t row = brow0 + o % C::kRows;
    const int b = o / C::kRows;
    if (row < n && b < batch) y[int64_t(b) * n + row] = fmt::f32_to_bf16(s * post_of(posts, row));
  };
  const int splits = gridDim.y;
  for (int o = threadIdx.x; o < C::kOut; o += C::kThreads) {
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < KW; w++) s += red[w * C::kOut + o];
    if (splits == 1) {
      write(o, s);
    } else {
      red[o] = s;  // only this thread reads or writes column o
    }
  }
  if (splits > 1) {
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    // The cluster is the row block's splits; rank r is split r. Each rank sums a share of the
    // outputs over all splits, in split order.
    const int rank = int(cluster.block_rank()), per = (C::kOut + splits - 1) / splits;
    const int o1 = min(C::kOut, (rank + 1) * per);
    for (int o = rank * per + threadIdx.x; o < o1; o += C::kThreads) {
      float s = 0.0f;
      for (int r = 0; r < splits; r++) s += *cluster.map_shared_rank(red + o, r);
      write(o, s);
    }
    cluster.sync();  // no block leaves while another still reads its shared memory
  }
}

// The variants kept from the H100 sweeps of 2026-11-23 (bench/notes/fp4_gemm.md, version 3).
using Slot = GemvCfg<1, 8, 2, 1, 1, 3>;        // batch 1
using SlotWide = GemvCfg<2, 8, 2, 1, 1, 2>;    // batch 1 where Slot leaves a short second round
using Batch8 = GemvCfg<1, 8, 2, 1, 8>;         // batch 2..8
using Batch16 = GemvCfg<2, 8, 1, 1, 16, 2>;    // batch 9..16
// Batch 9..16 with many row blocks: the staged kernel, 128 rows per block (8 warps of 16 rows,
// two chunks per step); swept on the H100 on 2026-12-06 (bench/notes/fp4_gemm.md, "Version 4:
// GEMV").
using Staged16 = StagedCfg<1, 8, 1, 2, 1, 16, 2>;

// The output factors of the row segments `ends` (the last = n): `unscale` times each segment's
// NVFP4 tensor scale.
RowPosts posts_for(int32_t format, const float *tensor_scales, const int64_t *ends, int segments,
                   float unscale) {
  RowPosts posts;
  for (int i = 0; i < kMaxGemvSegments; i++) {
    const int j = std::min(i, segments - 1);
    posts.end[i] = i < segments - 1 ? int(ends[i]) : INT32_MAX;
    posts.post[i] = unscale * (format == FP4_WEIGHTS_NVFP4 ? tensor_scales[j] : 1.0f);
  }
  return posts;
}

using KernelFn = void (*)(const uint16_t *, const uint8_t *, const uint8_t *, RowPosts,
                          GemvEpilogue, uint16_t *, int, int, int);

// Aligned: 16-byte code rows (k % 32 == 0 and codes 16-byte aligned) and 16-bit scale pairs (an
// even number of groups per row, scales 2-byte aligned).
bool aligned_call(int32_t format, const uint8_t *codes, const uint8_t *scales, int64_t k) {
  return k % (format == FP4_WEIGHTS_MXFP4 ? 64 : 32) == 0 && uintptr_t(codes) % 16 == 0 &&
         uintptr_t(scales) % 2 == 0;
}

// The kernel of variant C for a call's format and alignment, with the slot path's shared memory
// limit raised once per device; `smem` is the call's dynamic shared memory.
template <class C, int EPI = kEpiPlain>
fp4_status kernel_for(int32_t format, bool aligned, int64_t k, KernelFn *out, size_t *smem) {
  const int i = (format == FP4_WEIGHTS_NVFP4 ? 2 : 0) + (aligned ? 1 : 0);
  static const KernelFn kernels[4] = {
      gemv_kernel<C, FP4_WEIGHTS_MXFP4, false, EPI>, gemv_kernel<C, FP4_WEIGHTS_MXFP4, true, EPI>,
      gemv_kernel<C, FP4_WEIGHTS_NVFP4, false, EPI>, gemv_kernel<C, FP4_WEIGHTS_NVFP4, true, EPI>};
  *out = kernels[i];
  *smem = C::kSlot ? size_t((k + kChunk - 1) / kChunk + C::U) * 16 * sizeof(uint4) : 0;
  if constexpr (C::kSlot) {
    static int raised_on[4] = {-1, -1, -1, -1};
    int dev = 0;
    FP4_CU(cudaGetDevice(&dev));
    if (raised_on[i] != dev) {
      FP4_CU(cudaFuncSetAttribute(kernels[i], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kSlotMaxSmem));
      raised_on[i] = dev;
    }
  }
  return FP4_OK;
}

// Enqueues variant C (batch within its NB; the slot path needs k within kSlotMaxChunks chunks)
// for the row segments `ends` (ascending, the last = n) with their tensor scales, finished by
// epilogue EPI.
template <class C, int EPI = kEpiPlain>
fp4_status run(int32_t format, const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
               const float *tensor_scales, const int64_t *ends, int segments, uint16_t *y,
               int64_t batch, int64_t n, int64_t k, cudaStream_t stream,
               const GemvEpilogue &epi = GemvEpilogue()) {
  KernelFn kernel = nullptr;
  size_t smem = 0;
  if (fp4_status s = kernel_for<C, EPI>(format, aligned_call(format, codes, scales, k), k,
                                        &kernel, &smem))
    return s;
  const RowPosts posts =
      posts_for(format, tensor_scales, ends, segments, C::kSlot ? kSlotUnscale : kUnscale);
  const int64_t blocks = (n + C::kRows - 1) / C::kRows;
  if (stream != nullptr && stream == launch_stream()) {
    return launch_pdl(kernel, dim3(unsigned(blocks)), dim3(C::kThreads), smem, stream, 1, x, codes,
                      scales, posts, epi, y, int(batch), int(n), int(k));
  }
  kernel<<<unsigned(blocks), C::kThreads, smem, stream>>>(x, codes, scales, posts, epi, y,
                                                         int(batch), int(n), int(k));
  FP4_CU_LAUNCH();
  return FP4_OK;
}

using StagedFn = void (*)(const uint16_t *, const uint8_t *, const uint8_t *, RowPosts,
                          uint16_t *, int, int, int, int);

// Enqueues the staged variant C (batch within its NB) over `splits` k splits (0: the rule below)
// for the row segments `ends` with their tensor scales.
template <class C>
fp4_status run_staged(int32_t format, const uint16_t *x, const uint8_t *codes,
                      const uint8_t *scales, const float *tensor_scales, const int64_t *ends,
                      int segments, uint16_t *y, int64_t batch, int64_t n, int64_t k, int splits,
                      cudaStream_t stream) {
  const bool aligned = aligned_call(format, codes, scales, k);
  const int i = (format == FP4_WEIGHTS_NVFP4 ? 2 : 0) + (aligned ? 1 : 0);
  static const StagedFn kernels[4] = {
      staged_kernel<C, FP4_WEIGHTS_MXFP4, false>, staged_kernel<C, FP4_WEIGHTS_MXFP4, true>,
      staged_kernel<C, FP4_WEIGHTS_NVFP4, false>, staged_kernel<C, FP4_WEIGHTS_NVFP4, true>};
  static int ready_on[4] = {-1, -1, -1, -1}, sms_on[4] = {0, 0, 0, 0}, per_sm_on[4] = {0, 0, 0, 0};
  int dev = 0;
  FP4_CU(cudaGetDevice(&dev));
  if (ready_on[i] != dev) {
    if (C::kSmem > 48 * 1024)
      FP4_CU(cudaFuncSetAttribute(kernels[i], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(C::kSmem)));
    FP4_CU(cudaDeviceGetAttribute(&sms_on[i], cudaDevAttrMultiProcessorCount, dev));
    FP4_CU(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_on[i], kernels[i], C::kThreads,
                                                         C::kSmem));
    ready_on[i] = dev;
  }
  const int64_t blocks = (n + C::kRows - 1) / C::kRows;
  const int nchunks = int((k + kChunk - 1) / kChunk);
  if (splits <= 0) {
    // As many splits (a cluster holds at most 8) as fit one round of resident blocks, with at
    // least two steps per split. Depends on n: fp4_gemm_segments equals per-segment launches bit
    // for bit only where both pick the same split count.
    const int64_t slots = int64_t(std::max(1, per_sm_on[i])) * sms_on[i];
    splits = int(std::max<int64_t>(
        1, std::min<int64_t>({8, slots / blocks, nchunks / (2 * C::kStepChunks)})));
  }
  const int per = (nchunks + splits - 1) / splits;
  const int cps = (per + C::kStepChunks - 1) / C::kStepChunks * C::kStepChunks;
  splits = (nchunks + cps - 1) / cps;
  const RowPosts posts = posts_for(format, tensor_scales, ends, segments, kUnscale);
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = 1;
  attr.val.clusterDim.y = unsigned(splits);
  attr.val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(blocks), unsigned(splits));
  cfg.blockDim = dim3(C::kThreads);
  cfg.dynamicSmemBytes = C::kSmem;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = splits > 1 ? 1 : 0;
  FP4_CU(cudaLaunchKernelEx(&cfg, kernels[i], x, codes, scales, posts, y, int(batch), int(n),
                            int(k), cps));
  return FP4_OK;
}

// Rounds of resident Slot blocks the call needs (blocks / (blocks per SM x SMs)).
fp4_status slot_rounds(int32_t format, const uint8_t *codes, const uint8_t *scales, int64_t n,
                       int64_t k, double *rounds) {
  KernelFn kernel = nullptr;
  size_t smem = 0;
  if (fp4_status s = kernel_for<Slot>(format, aligned_call(format, codes, scales, k), k, &kernel,
                                      &smem))
    return s;
  int dev = 0, sms = 0, per_sm = 0;
  FP4_CU(cudaGetDevice(&dev));
  FP4_CU(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  FP4_CU(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Slot::kThreads, smem));
  *rounds = double((n + Slot::kRows - 1) / Slot::kRows) / double(std::max(1, per_sm * sms));
  return FP4_OK;
}

bool slot_fits(int64_t k) { return (k + kChunk - 1) / kChunk <= kSlotMaxChunks; }

// The ring kernel's depth and blocks per SM from $FP4LAB_GEMV_RING ("off", or "D" or "D,B"
// with D in 3, 4, 6): depth 0 when off.
struct RingChoice {
  int depth = 3, per_sm = 0;  // per_sm 0: as many as fit
  // $FP4LAB_GEMV_TAIL=on: fp4_dec_gemv_add_rmsnorm's norm in the ring kernel's last block. Off by
  // default: bit-exact, but the H100 decode step got slower with it (MXFP4 2.38 -> 2.96 ms/token,
  // bench/notes/decode.md), so the call runs the product and fp4_dec_add_rmsnorm's kernel.
  bool tail = false;
};
inline RingChoice ring_choice() {
  static const RingChoice c = [] {
    RingChoice r;
    if (const char *e = std::getenv("FP4LAB_GEMV_TAIL")) r.tail = std::strcmp(e, "on") == 0;
    if (const char *e = std::getenv("FP4LAB_GEMV_RING")) {
      if (std::strcmp(e, "off") == 0) {
        r.depth = 0;
      } else {
        int d = 0, b = 0;
        const int got = std::sscanf(e, "%d,%d", &d, &b);
        if (got >= 1 && (d == 3 || d == 4 || d == 6)) r.depth = d;
        if (got == 2 && b > 0) r.per_sm = b;
      }
    }
    return r;
  }();
  return c;
}

size_t ring_smem(int depth, int64_t k) {
  return size_t(k / kChunk + kRingU) * 16 * sizeof(uint4) +
         size_t(kRingKW) * depth * kRingStage * sizeof(uint4);
}

bool ring_fits(const uint8_t *codes, const uint8_t *scales, int64_t k, int depth) {
  return depth > 0 && k % 256 == 0 && uintptr_t(codes) % 16 == 0 && uintptr_t(scales) % 16 == 0 &&
         ring_smem(depth, k) <= kRingMaxSmem;
}

using RingFn = void (*)(const uint16_t *, const uint8_t *, const uint8_t *, RowPosts,
                        GemvEpilogue, uint16_t *, int, int);

template <int EPI>
RingFn ring_kernel(int32_t format, int depth) {
  const bool nv = format == FP4_WEIGHTS_NVFP4;
  switch (depth) {
    case 3:
      return nv ? gemv_ring_kernel<FP4_WEIGHTS_NVFP4, 3, EPI> : gemv_ring_kernel<FP4_WEIGHTS_MXFP4, 3, EPI>;
    case 6:
      return nv ? gemv_ring_kernel<FP4_WEIGHTS_NVFP4, 6, EPI> : gemv_ring_kernel<FP4_WEIGHTS_MXFP4, 6, EPI>;
    default:
      return nv ? gemv_ring_kernel<FP4_WEIGHTS_NVFP4, 4, EPI> : gemv_ring_kernel<FP4_WEIGHTS_MXFP4, 4, EPI>;
  }
}

// SMs and resident blocks per SM of a ring kernel with `smem` bytes of shared memory on the
// current device, asked of the runtime once per (kernel, device, smem): the queries would cost
// microseconds on every eagerly launched call.
fp4_status ring_residency(RingFn kernel, size_t smem, int *sms, int *per_sm) {
  struct Known {
    RingFn kernel;
    int dev;
    size_t smem;
    int sms, per_sm;
  };
  static Known known[64];
  static int count = 0;
  int dev = 0;
  FP4_CU(cudaGetDevice(&dev));
  for (int i = 0; i < count; i++)
    if (known[i].kernel == kernel && known[i].dev == dev && known[i].smem == smem) {
      *sms = known[i].sms;
      *per_sm = known[i].per_sm;
      return FP4_OK;
    }
  // The ring_fits limit: one setting serves every k of the kernel.
  FP4_CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kRingMaxSmem));
  FP4_CU(cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev));
  FP4_CU(cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, kernel, kRingThreads, smem));
  if (count < 64) known[count++] = {kernel, dev, smem, *sms, *per_sm};
  return FP4_OK;
}

// Enqueues the ring kernel (ring_fits) for the row segments `ends` with their tensor scales.
template <int EPI>
fp4_status run_ring(int32_t format, const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                    const float *ts, const int64_t *ends, int segments, uint16_t *y, int64_t n,
                    int64_t k, cudaStream_t stream, const GemvEpilogue &epi, RingChoice rc) {
  const RingFn kernel = ring_kernel<EPI>(format, rc.depth);
  const size_t smem = ring_smem(rc.depth, k);
  int sms = 0, per_sm = 0;
  if (fp4_status st = ring_residency(kernel, smem, &sms, &per_sm)) return st;
  FP4_REQUIRE(per_sm >= 1, "fp4_gemv: the ring kernel does not fit an SM (k = %lld)",
              (long long)k);
  if (rc.per_sm > 0) per_sm = std::min(per_sm, rc.per_sm);
  const RowPosts posts = posts_for(format, ts, ends, segments, kSlotUnscale);
  const int64_t tiles =
      EPI == kEpiPlain || EPI == kEpiAddNorm ? (n + 15) / 16 : (epi.pairs + 7) / 8;
  const unsigned grid = unsigned(std::min<int64_t>(tiles, int64_t(sms) * per_sm));
  if (stream != nullptr && stream == launch_stream())
    return launch_pdl(kernel, dim3(grid), dim3(kRingThreads), smem, stream, 1, x, codes, scales,
                      posts, epi, y, int(n), int(k));
  kernel<<<grid, kRingThreads, smem, stream>>>(x, codes, scales, posts, epi, y, int(n), int(k));
  FP4_CU_LAUNCH();
  return FP4_OK;
}

// Batch 1 on the slot path (slot_fits(k)) with epilogue EPI.
template <int EPI>
fp4_status run_slot(int32_t format, const uint16_t *x, const uint8_t *codes,
                    const uint8_t *scales, const float *ts, const int64_t *ends, int segments,
                    uint16_t *y, int64_t n, int64_t k, cudaStream_t s,
                    const GemvEpilogue &epi = GemvEpilogue()) {
  const RingChoice rc = ring_choice();
  if (ring_fits(codes, scales, k, rc.depth))
    return run_ring<EPI>(format, x, codes, scales, ts, ends, segments, y, n, k, s, epi, rc);
  // A second round of resident blocks that is mostly empty (n = 8192 on the H100: 1.3 rounds)
  // costs more than the wider tiles' lower occupancy.
  double rounds = 0;
  if (fp4_status st = slot_rounds(format, codes, scales, n, k, &rounds)) return st;
  return rounds > 1.0 && rounds < 1.5
             ? run<SlotWide, EPI>(format, x, codes, scales, ts, ends, segments, y, 1, n, k, s, epi)
             : run<Slot, EPI>(format, x, codes, scales, ts, ends, segments, y, 1, n, k, s, epi);
}

}  // namespace

// The launch of gemm_segments; fp4_gemv_launch is its one-segment case.
static fp4_status fp4_gemv_segments_launch(int32_t format, const uint16_t *x,
                                           const uint8_t *codes, const uint8_t *scales,
                                           const float *tensor_scales, const int64_t *ends,
                                           int32_t segments, uint16_t *y, int64_t batch,
                                           int64_t n, int64_t k, void *stream) {
  FP4_REQUIRE(batch <= kGemvMaxBatch, "fp4_gemv: batch %lld > %lld", (long long)batch,
              (long long)kGemvMaxBatch);
  FP4_REQUIRE(segments >= 1 && segments <= kMaxGemvSegments, "fp4_gemv: %d segments", segments);
  FP4_REQUIRE(uintptr_t(x) % 16 == 0 && uintptr_t(codes) % 8 == 0,
              "fp4_gemv: x must be 16-byte and codes 8-byte aligned");
  auto s = static_cast<cudaStream_t>(stream);
  const float *ts = tensor_scales;
  // Dispatch from the H100 sweeps (bench/notes/fp4_gemm.md, version 3).
  if (batch == 1 && slot_fits(k))
    return run_slot<kEpiPlain>(format, x, codes, scales, ts, ends, segments, y, n, k, s);
  if (batch <= 8)
    return run<Batch8>(format, x, codes, scales, ts, ends, segments, y, batch, n, k, s);
  // Where every SM gets at least 3 of the 32-row blocks, the staged kernel (activations read from
  // L2 once per 128 rows instead of once per 32) is faster; below that the 32-row blocks with k
  // split inside the block beat the staged kernel's cluster split-k.
  int dev = 0, sms = 0;
  FP4_CU(cudaGetDevice(&dev));
  FP4_CU(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return (n + Batch16::kRows - 1) / Batch16::kRows >= 3 * int64_t(sms)
             ? run_staged<Staged16>(format, x, codes, scales, ts, ends, segments, y, batch, n, k,
                                    0, s)
             : run<Batch16>(format, x, codes, scales, ts, ends, segments, y, batch, n, k, s);
}

fp4_status fp4_gemv_launch(int32_t format, const uint16_t *x, const uint8_t *codes,
                           const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                           int64_t n, int64_t k, void *stream) {
  return fp4_gemv_segments_launch(format, x, codes, scales, &tensor_scale, &n, 1, y, batch, n, k,
                                  stream);
}

fp4_status gemm_segments(int32_t format, const uint16_t *x, const uint8_t *codes,
                         const uint8_t *scales, const float *tensor_scales, const int64_t *ends,
                         int32_t segments, uint16_t *y, int64_t batch, int64_t n, int64_t k) {
  if (fp4_status s = ensure_device()) return s;
  return fp4_gemv_segments_launch(format, x, codes, scales, tensor_scales, ends, segments, y,
                                  batch, n, k, launch_stream());
}

fp4_status gemm_gate_up_silu(int32_t format, const uint16_t *x, const uint8_t *codes,
                             const uint8_t *scales, const float *tensor_scales, uint16_t *y,
                             int64_t half, int64_t k) {
  FP4_REQUIRE(uintptr_t(x) % 16 == 0 && uintptr_t(codes) % 8 == 0,
              "%s: x must be 16-byte and codes 8-byte aligned", "fp4_dec_gate_up_silu");
  if (fp4_status s = ensure_device()) return s;
  const int64_t ends[2] = {half, 2 * half};
  const cudaStream_t s = launch_stream();
  if (!slot_fits(k)) {
    if (fp4_status st = fp4_gemv_segments_launch(format, x, codes, scales, tensor_scales, ends, 2,
                                                 y, 1, 2 * half, k, s))
      return st;
    return dec_silu_mul(y, y + half, y, FP4_DTYPE_BF16, uint64_t(half));
  }
  GemvEpilogue e;
  e.half = half;
  e.pairs = half;
  return run_slot<kEpiSwiglu>(format, x, codes, scales, tensor_scales, ends, 2, y, 2 * half, k, s,
                              e);
}

fp4_status gemm_qkv_rope_kv_store(int32_t format, const uint16_t *x, const uint8_t *codes,
                                  const uint8_t *scales, const float *tensor_scales,
                                  uint16_t *qkv, const float *cos, const float *sin,
                                  const int32_t *pos, int64_t ctx, int64_t heads,
                                  int64_t kv_heads, int64_t head_dim, int64_t k, void *k_cache,
                                  void *v_cache, int32_t cache_dtype) {
  FP4_REQUIRE(uintptr_t(x) % 16 == 0 && uintptr_t(codes) % 8 == 0,
              "%s: x must be 16-byte and codes 8-byte aligned", "fp4_dec_qkv_rope_kv_store");
  if (fp4_status s = ensure_device()) return s;
  const int64_t qn = heads * head_dim, kn = kv_heads * head_dim;
  const int64_t ends[3] = {qn, qn + kn, qn + 2 * kn};
  const cudaStream_t s = launch_stream();
  if (!slot_fits(k)) {
    if (fp4_status st = fp4_gemv_segments_launch(format, x, codes, scales, tensor_scales, ends, 3,
                                                 qkv, 1, ends[2], k, s))
      return st;
    return dec_rope_kv_store(qkv, qkv + qn, qkv + qn + kn, FP4_DTYPE_BF16, cos, sin, pos, ctx, 1,
                             heads, kv_heads, head_dim, k_cache, v_cache, cache_dtype);
  }
  GemvEpilogue e;
  e.half = head_dim / 2;
  e.pairs = ends[2] / 2;
  e.q_rows = qn;
  e.k_rows = kn;
  e.cos = cos;
  e.sin = sin;
  e.pos = pos;
  e.ctx = ctx;
  e.k_cache = k_cache;
  e.v_cache = v_cache;
  e.cache_dtype = cache_dtype;
  return run_slot<kEpiRope>(format, x, codes, scales, tensor_scales, ends, 3, qkv, ends[2], k, s,
                            e);
}

fp4_status gemv_add_rmsnorm(int32_t format, const uint16_t *x, const uint8_t *codes,
                            const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t n,
                            int64_t k, float *hidden, const void *norm, int32_t norm_dtype,
                            uint16_t *out, float eps, int32_t *counter) {
  FP4_REQUIRE(uintptr_t(x) % 16 == 0 && uintptr_t(codes) % 8 == 0,
              "%s: x must be 16-byte and codes 8-byte aligned", "fp4_dec_gemv_add_rmsnorm");
  if (fp4_status s = ensure_device()) return s;
  const cudaStream_t s = launch_stream();
  const RingChoice rc = ring_choice();
  const auto a16 = [](const void *p) { return uintptr_t(p) % 16 == 0; };
  const bool tail = rc.tail && n % 4 == 0 && n <= 8192 && a16(y) && a16(hidden) && a16(out) &&
                    uintptr_t(norm) % (norm_dtype == FP4_DTYPE_BF16 ? 8 : 16) == 0;
  if (!tail || !ring_fits(codes, scales, k, rc.depth)) {
    if (fp4_status st = fp4_gemv_segments_launch(format, x, codes, scales, &tensor_scale, &n, 1, y,
                                                 1, n, k, s))
      return st;
    return dec_add_rmsnorm(hidden, y, FP4_DTYPE_BF16, norm, norm_dtype, out, FP4_DTYPE_BF16, 1, n,
                           eps);
  }
  GemvEpilogue e;
  e.hidden = hidden;
  e.norm = norm;
  e.norm_dtype = norm_dtype;
  e.out = out;
  e.eps = eps;
  e.counter = counter;
  return run_ring<kEpiAddNorm>(format, x, codes, scales, &tensor_scale, &n, 1, y, n, k, s, e, rc);
}

}  // namespace fp4::cuda
