// W4A16 GEMV for small batches (1 .. kGemvMaxBatch): memory-bound, so the kernel streams every
// packed weight byte once with 16-byte loads, keeps the next loads in flight while it computes,
// and decodes E2M1 in registers (no table, no shared memory but the k-split reduction).
//
// Layout: the plain one of fp4lab/gemm.h (codes [n, k/2], scales [n, k/group], row-major).
// MMA roles: mma.sync.m16n8k16 (bf16 in, f32 accumulate) with A = activations (rows g and g + 8
// of A are batch rows g and g + 8; zeros past the batch) and B = 8 weight rows, so a warp tile is
// 8 weight rows (fine-grained enough to give 132 SMs work at n = 4096) times 16 batch columns.
// k binding: lane t (= lane % 4) owns the 32 consecutive k [32 t, 32 t + 32) of every 128-wide
// chunk: one 16-byte code load per weight row, one MXFP4 group or two NVFP4 groups. Code word q
// (k 8q .. 8q + 7 of the lane's 32) yields the bf16x2 pairs (8q + j, 8q + j + 4), j = 0..3; MMA
// step s uses word s / 2, pairs j = 2 (s % 2) in slots (2t, 2t+1) and j + 1 in (2t+8, 2t+9).
// The activations are permuted to the same pairs with one prmt per pair.
//
// Decode: a shift puts nibbles j and j + 4 of a code word at bits 12..15 and 28..31; then
// (w & 0x80008000) | ((w & 0x70007000) >> 6) is the bf16x2 of e2m1 * 2^-126 (E2M1's exponent
// lands in the two low bits of the bf16 exponent, its subnormal 0.5 on a bf16 subnormal). One
// bf16x2 multiply by bf16(scale * 2^kScaleExp) gives e2m1 * scale * 2^(kScaleExp - 126), exact
// (at most 6 significant bits) for scales in [2^-99, 2^31]: every E4M3 scale and every E8M0
// scale of real weights; E8M0 scales above 2^31 saturate. The f32 sum is multiplied by
// 2^(126 - kScaleExp) (and the NVFP4 tensor scale), then rounded once to bf16.
//
// Work: a block has RW x KW warps; warp (rw, kw) owns weight rows [8 MT rw, 8 MT (rw + 1)) of
// the block's 8 MT RW and the chunk groups kw, kw + KW, ... of U chunks each; the KW partial
// sums meet in shared memory. Activations come through L1 (every block reads all of them; the
// RW warps and MT tiles of a block share them).
// Bytes moved: n*k/2 codes + n*k/group scales + batch*k*2 activations + batch*n*2 outputs.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "../formats.hpp"
#include "../gemm_backend.hpp"
#include "check.cuh"
#include "fp4lab/gemm.h"

namespace fp4::cuda {
namespace {

constexpr int kChunk = 128;     // k per chunk: 4 lanes x 32
constexpr int kScaleExp = 96;   // the decoded scale is bf16(scale * 2^kScaleExp)
constexpr float kUnscale = 0x1p30f;  // 2^(126 - kScaleExp)

// Compile-time variant: MT weight tiles of 8 rows per warp, RW x KW warps per block, U chunks per
// pipeline stage, B16: batch rows 8..15 present.
template <int MT_, int RW_, int KW_, int U_, bool B16_>
struct GemvCfg {
  static constexpr int MT = MT_, RW = RW_, KW = KW_, U = U_;
  static constexpr bool B16 = B16_;
  static constexpr int kThreads = 32 * RW * KW, kRows = 8 * MT * RW;
};

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162 *>(&a),
                             *reinterpret_cast<__nv_bfloat162 *>(&b));
  return *reinterpret_cast<uint32_t *>(&r);
}

// bf16x2 of e2m1 * 2^-126 for nibbles j and j + 4 of w.
template <int J>
__device__ __forceinline__ uint32_t e2m1_pair(uint32_t w) {
  const uint32_t v = w << (12 - 4 * J);
  return (v & 0x80008000u) | ((v & 0x70007000u) >> 6);
}

// Scale bits of one row and chunk (MXFP4: one E8M0 byte; NVFP4: two E4M3 bytes, low byte first)
// to the bf16x2 multipliers of the lane's low and high 16 k.
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

__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Valid k among the lane's 32 of chunk c: 0, 16 or 32 (k is a multiple of 16).
__device__ __forceinline__ int lane_valid(int c, int t, int k) {
  const int k0 = c * kChunk + 32 * t;
  return k0 >= k ? 0 : min(k - k0, 32);
}

// One row's codes and scale bits for the lane's 32 k of chunk c; zeros past n or k.
template <int FMT, bool AL16>
__device__ __forceinline__ void load_row(const uint8_t *codes, const uint8_t *scales, int64_t row,
                                         int64_t n, int k, int c, int t, uint4 &q,
                                         uint32_t &sbits) {
  q = make_uint4(0, 0, 0, 0);
  sbits = 0;
  const int valid = lane_valid(c, t, k), k0 = c * kChunk + 32 * t;
  if (row >= n || valid == 0) return;
  const uint8_t *src = codes + row * (k / 2) + k0 / 2;
  if (AL16 && valid == 32) {
    q = __ldg(reinterpret_cast<const uint4 *>(src));
  } else {
    uint2 lo = __ldg(reinterpret_cast<const uint2 *>(src));
    uint2 hi = valid == 32 ? __ldg(reinterpret_cast<const uint2 *>(src + 8)) : make_uint2(0, 0);
    q = make_uint4(lo.x, lo.y, hi.x, hi.y);
  }
  if constexpr (FMT == FP4_WEIGHTS_MXFP4) {
    sbits = __ldg(scales + row * (k / 32) + k0 / 32);
  } else {
    const uint8_t *sp = scales + row * (k / 16) + k0 / 16;
    if (AL16 && valid == 32) {
      sbits = __ldg(reinterpret_cast<const uint16_t *>(sp));
    } else {
      sbits = __ldg(sp) | (valid == 32 ? uint32_t(__ldg(sp + 1)) << 8 : 0u);
    }
  }
}

// Activation pairs of batch row b for the lane's 32 k of chunk c: p[q][j] = (x[8q+j], x[8q+j+4]).
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

template <class C>
struct Stage {
  uint4 q[C::U][C::MT];
  uint32_t s[C::U][C::MT];
};

template <class C, int FMT, bool AL16>
__global__ void __launch_bounds__(C::kThreads)
    gemv_kernel(const uint16_t *__restrict__ x, const uint8_t *__restrict__ codes,
                const uint8_t *__restrict__ scales, float post, uint16_t *__restrict__ y,
                int batch, int n, int k) {
  constexpr int MT = C::MT, RW = C::RW, KW = C::KW, U = C::U, NI = C::B16 ? 4 : 2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rw = warp % RW, kw = warp / RW;
  const int g = lane >> 2, t = lane & 3;
  const int64_t row0 = int64_t(blockIdx.x) * C::kRows + 8 * MT * rw;
  const int nchunks = (k + kChunk - 1) / kChunk;

  float acc[MT][4];
#pragma unroll
  for (int m = 0; m < MT; m++) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.0f;

  auto load_stage = [&](Stage<C> &st, int c0) {
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int m = 0; m < MT; m++)
        load_row<FMT, AL16>(codes, scales, row0 + 8 * m + g, n, k, c0 + u, t, st.q[u][m],
                            st.s[u][m]);
  };

  Stage<C> cur;
  load_stage(cur, kw * U);
  for (int c0 = kw * U; c0 < nchunks; c0 += KW * U) {
    Stage<C> nxt;
    load_stage(nxt, c0 + KW * U);
#pragma unroll
    for (int u = 0; u < U; u++) {
      uint32_t xa[4][4], xb[4][4];
      load_x(x, g, batch, k, c0 + u, t, xa);
      if constexpr (C::B16) load_x(x, g + 8, batch, k, c0 + u, t, xb);
#pragma unroll
      for (int m = 0; m < MT; m++) {
        uint32_t slo, shi;
        scale_pair<FMT>(cur.s[u][m], slo, shi);
        const uint32_t w[4] = {cur.q[u][m].x, cur.q[u][m].y, cur.q[u][m].z, cur.q[u][m].w};
#pragma unroll
        for (int q = 0; q < 4; q++) {
          const uint32_t sc = q < 2 ? slo : shi;
          const uint32_t b0 = bf16x2_mul(e2m1_pair<0>(w[q]), sc);
          const uint32_t b1 = bf16x2_mul(e2m1_pair<1>(w[q]), sc);
          const uint32_t b2 = bf16x2_mul(e2m1_pair<2>(w[q]), sc);
          const uint32_t b3 = bf16x2_mul(e2m1_pair<3>(w[q]), sc);
          const uint32_t a01[4] = {xa[q][0], C::B16 ? xb[q][0] : 0u, xa[q][1],
                                   C::B16 ? xb[q][1] : 0u};
          const uint32_t a23[4] = {xa[q][2], C::B16 ? xb[q][2] : 0u, xa[q][3],
                                   C::B16 ? xb[q][3] : 0u};
          mma_bf16(acc[m], a01, b0, b1);
          mma_bf16(acc[m], a23, b2, b3);
        }
      }
    }
    cur = nxt;
  }

  // acc[m][i]: batch row g + 8 (i / 2), weight row row0 + 8 m + 2 t + i % 2.
  auto store = [&](int64_t r0, int m, int i, float v) {
    const int64_t row = r0 + 8 * m + 2 * t + (i & 1);
    const int b = g + 8 * (i >> 1);
    if (row < n && b < batch) y[int64_t(b) * n + row] = fmt::f32_to_bf16(v * post);
  };
  if constexpr (KW == 1) {
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
      for (int i = 0; i < NI; i++) store(row0, m, i, acc[m][i]);
  } else {
    __shared__ float red[KW][RW * MT * NI * 32];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
      for (int i = 0; i < NI; i++) red[kw][((rw * MT + m) * NI + i) * 32 + lane] = acc[m][i];
    __syncthreads();
    // o % 32 == lane (the stride is a multiple of 32), so store() maps it with this lane's g, t.
    for (int o = threadIdx.x; o < RW * MT * NI * 32; o += C::kThreads) {
      float s = 0.0f;
#pragma unroll
      for (int w = 0; w < KW; w++) s += red[w][o];
      const int oi = (o >> 5) % NI, om = (o >> 5) / NI % MT, orw = (o >> 5) / NI / MT;
      store(int64_t(blockIdx.x) * C::kRows + 8 * MT * orw, om, oi, s);
    }
  }
}

template <class C, int FMT, bool AL16>
void launch_kernel(const uint16_t *x, const uint8_t *codes, const uint8_t *scales, float post,
                   uint16_t *y, int64_t batch, int64_t n, int64_t k, cudaStream_t stream) {
  const int64_t blocks = (n + C::kRows - 1) / C::kRows;
  gemv_kernel<C, FMT, AL16><<<unsigned(blocks), C::kThreads, 0, stream>>>(
      x, codes, scales, post, y, int(batch), int(n), int(k));
}

// Runs variant C (C::B16 must hold when batch > 8).
template <class C>
fp4_status gemv_variant(int32_t format, const uint16_t *x, const uint8_t *codes,
                        const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                        int64_t n, int64_t k, cudaStream_t stream) {
  FP4_REQUIRE(batch <= (C::B16 ? 16 : 8), "fp4_gemv: batch %lld too large for the variant",
              (long long)batch);
  if (format == FP4_WEIGHTS_MXFP4) {
    launch_kernel<C, FP4_WEIGHTS_MXFP4, true>(x, codes, scales, kUnscale, y, batch, n, k, stream);
  } else if (k % 32 == 0) {
    launch_kernel<C, FP4_WEIGHTS_NVFP4, true>(x, codes, scales, kUnscale * tensor_scale, y, batch,
                                              n, k, stream);
  } else {
    launch_kernel<C, FP4_WEIGHTS_NVFP4, false>(x, codes, scales, kUnscale * tensor_scale, y,
                                               batch, n, k, stream);
  }
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace

fp4_status fp4_gemv_launch(int32_t format, const uint16_t *x, const uint8_t *codes,
                           const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                           int64_t n, int64_t k, void *stream) {
  FP4_REQUIRE(batch <= kGemvMaxBatch, "fp4_gemv: batch %lld > %lld", (long long)batch,
              (long long)kGemvMaxBatch);
  auto s = static_cast<cudaStream_t>(stream);
  // From the H100 sweep of 2026-11-23 (bench/notes/fp4_gemm.md): within 4% of the best variant
  // on every Llama-3 shape and batch measured.
  if (batch == 1) {
    return gemv_variant<GemvCfg<1, 1, 8, 2, false>>(format, x, codes, scales, tensor_scale, y,
                                                    batch, n, k, s);
  }
  if (batch <= 8 && n * k < (int64_t(1) << 27)) {
    return gemv_variant<GemvCfg<2, 1, 8, 2, false>>(format, x, codes, scales, tensor_scale, y,
                                                    batch, n, k, s);
  }
  return gemv_variant<GemvCfg<4, 1, 8, 1, true>>(format, x, codes, scales, tensor_scale, y, batch,
                                                 n, k, s);
}

}  // namespace fp4::cuda
