// Tiled W4A16 GEMM on the tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate), the kernel
// behind fp4_gemm.cu, templated on its tile shape so that a sweep can pick the variants.
//
// Layout: the plain one of fp4lab/gemm.h. A block owns BM weight rows x BN batch columns and
// walks k in stages of 64 through a STAGES-deep cp.async ring in shared memory; each stage holds
//   codes  BM x 32 bytes  (two 16-byte halves per row, swapped on rows 4..7 mod 8: ldmatrix reads
//                          8 rows at a 32-byte stride without bank conflicts),
//   scales BM x 8 bytes   (the two aligned 4-byte words around the row's 2 or 4 scale bytes,
//                          since cp.async cannot copy single bytes),
//   x      BN x 128 bytes (eight 16-byte chunks, chunk c of row r stored at c ^ 4 (r & 1)).
// Warps split the tile WM x WN; each warp owns MT 16-row x NT 8-column MMA tiles.
//
// k binding: the MMA sums over its 16 k slots in any order, so A and B need only agree. ldmatrix
// on the code rows gives lane (g, t) the 4 code bytes 4t..4t+3 of a 16-byte half h, i.e. the
// k = 32 h + 8 t + 0..7; MMA step `sub` (0, 1) of the half puts k = 32 h + 8 t + 4 sub + {0, 1}
// in slots 2t, 2t+1 and + {2, 3} in slots 2t+8, 2t+9. The same lane reads those 8 k of its
// activation row with one 16-byte load, so B needs no permutation.
//
// Decode (exact): a prmt puts the low nibble of a code byte at bits 12..15 and the high one at
// 28..31; (v & 0x80008000) | ((v >> 6) & 0x01c001c0) is then the bf16x2 of e2m1 * 2^-126 for
// every code (code 1 lands on a bf16 subnormal, which mul.bf16x2 keeps). NVFP4 multiplies once
// by bf16(e4m3 * 2^100) (a 4-bit significand, exact; product e2m1 * e4m3 * 2^-26, always a normal
// bf16) and the epilogue multiplies the f32 sum by 2^26 * tensor_scale. MXFP4 multiplies by 2^126
// (the exact e2m1) and by bf16(2^(E - 127)), so any E8M0 scale stays exact.
//
// Split-k (gridDim.y > 1): each split writes its f32 tile to a workspace; the last split to
// arrive at the tile's counter adds the partial tiles in split order (deterministic), rounds once
// to bf16 and resets the counter. No split ever waits on another, so no launch can hang.
//
// Bytes moved per launch: codes n*k/2 + scales n*k/group once per batch tile, x batch*k*2 once per
// row tile (from L2), y batch*n*2, and with split-k 2 * split * batch*n*4 of workspace (L2).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../formats.hpp"
#include "check.cuh"
#include "fp4lab/gemm.h"

namespace fp4::cuda::tile {

constexpr int kBK = 64;  // k per pipeline stage

template <int BM_, int BN_, int WM_, int WN_, int STAGES_, int MINB_>
struct Cfg {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, STAGES = STAGES_, MINB = MINB_;
  static constexpr int kThreads = 32 * WM * WN;
  static constexpr int MT = BM / (16 * WM), NT = BN / (8 * WN);
  static constexpr int kCodeBytes = BM * 32, kScaleBytes = BM * 8, kXBytes = BN * 128;
  static constexpr int kStageBytes = kCodeBytes + kScaleBytes + kXBytes;
  static constexpr int kTableBytes = 512;
  static constexpr int kSmem = kTableBytes + STAGES * kStageBytes;
  static_assert(MT >= 1 && NT >= 1 && MT * 16 * WM == BM && NT * 8 * WN == BN, "tile shape");
  static_assert(STAGES >= 2, "stages");
};

// Per-device split-k workspace: per-tile arrival counters (zero between launches) and partials.
// Grown on demand outside stream capture; a capturing launch that finds it too small runs
// without split-k instead (see splits_for).
struct Workspace {
  int *count = nullptr;
  float *part = nullptr;
  size_t count_cap = 0, part_cap = 0;
};

inline Workspace &workspace_of(int device) {
  static Workspace ws[64];
  return ws[device & 63];
}

__device__ __forceinline__ void cp_async(void *dst, const void *src, int bytes, bool ok) {
  const unsigned d = unsigned(__cvta_generic_to_shared(dst));
  const int n = ok ? bytes : 0;  // 0: zero-fill the destination
  if (bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n));
  } else if (bytes == 8) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(d), "l"(src), "r"(n));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(n));
  }
}

__device__ __forceinline__ void ldmatrix_x4(const void *p, uint32_t r[4]) {
  const unsigned a = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.bf16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

__device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// bf16x2 of code byte b of w (low nibble in the low half), times the bf16x2 scale s.
template <int FMT>
__device__ __forceinline__ uint32_t dequant(uint32_t w, uint32_t w4, int b, uint32_t s) {
  const uint32_t v = __byte_perm(w, w4, ((4 + b) << 4) | (b << 12));
  uint32_t e = (v & 0x80008000u) | ((v >> 6) & 0x01c001c0u);
  if (FMT == FP4_WEIGHTS_MXFP4) e = mul_bf16x2(e, 0x7e807e80u);  // 2^126
  return mul_bf16x2(e, s);
}

// Copies stage `st` (k from 64 st) of the tile into `buf`.
template <class C, int FMT, bool ALIGNED>
__device__ __forceinline__ void load_stage(unsigned char *buf, const uint16_t *x,
                                           const uint8_t *codes, const uint8_t *scales,
                                           int64_t row0, int64_t col0, int64_t batch, int64_t n,
                                           int64_t k, int64_t st) {
  constexpr int G = FMT == FP4_WEIGHTS_MXFP4 ? 32 : 16;
  const int tid = threadIdx.x;
  const int64_t kst = st * kBK;
  unsigned char *cs = buf, *ss = buf + C::kCodeBytes, *xs = ss + C::kScaleBytes;
  if (ALIGNED) {
    for (int p = tid; p < C::BM * 2; p += C::kThreads) {
      const int r = p >> 1, h = p & 1;
      const int64_t row = row0 + r, kk = kst + 32 * h;
      const bool ok = row < n && kk < k;
      cp_async(cs + r * 32 + 16 * (h ^ ((r >> 2) & 1)), ok ? codes + row * (k / 2) + kk / 2 : codes,
               16, ok);
    }
  } else {
    for (int p = tid; p < C::BM * 4; p += C::kThreads) {
      const int r = p >> 2, q = p & 3, h = q >> 1;
      const int64_t row = row0 + r, kk = kst + 16 * q;
      const bool ok = row < n && kk < k;
      cp_async(cs + r * 32 + 16 * (h ^ ((r >> 2) & 1)) + 8 * (q & 1),
               ok ? codes + row * (k / 2) + kk / 2 : codes, 8, ok);
    }
  }
  const int need = int((k - kst < kBK ? k - kst : kBK) / G);  // scale bytes of this stage
  for (int p = tid; p < C::BM * 2; p += C::kThreads) {
    const int r = p >> 1, wi = p & 1;
    const int64_t row = row0 + r;
    const uintptr_t a = uintptr_t(scales + row * (k / G) + kst / G);
    const bool ok = row < n && (wi == 0 || int(a & 3) + need > 4);
    const void *src = ok ? reinterpret_cast<const void *>((a & ~uintptr_t(3)) + 4 * wi) : scales;
    cp_async(ss + r * 8 + 4 * wi, src, 4, ok);
  }
  for (int p = tid; p < C::BN * 8; p += C::kThreads) {
    const int r = p >> 3, c = p & 7;
    const int64_t b = col0 + r, kk = kst + 8 * c;
    const bool ok = b < batch && kk < k;
    cp_async(xs + r * 128 + 16 * (c ^ ((r & 1) << 2)), ok ? x + b * k + kk : x, 16, ok);
  }
}

template <class C, int FMT, bool ALIGNED>
__global__ void __launch_bounds__(C::kThreads, C::MINB)
    gemm_tile_kernel(const uint16_t *__restrict__ x, const uint8_t *__restrict__ codes,
                     const uint8_t *__restrict__ scales, float tensor_scale, uint16_t *__restrict__ y,
                     int64_t batch, int64_t n, int64_t k, int *__restrict__ count,
                     float *__restrict__ part) {
  constexpr int MT = C::MT, NT = C::NT, G = FMT == FP4_WEIGHTS_MXFP4 ? 32 : 16;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int is_last;
  uint16_t *table = reinterpret_cast<uint16_t *>(smem);
  unsigned char *stages = smem + C::kTableBytes;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wr0 = (warp % C::WM) * (16 * MT), wc0 = (warp / C::WM) * (8 * NT);
  const int64_t col_tiles = (batch + C::BN - 1) / C::BN;
  const int64_t row0 = int64_t(blockIdx.x / col_tiles) * C::BM;
  const int64_t col0 = int64_t(blockIdx.x % col_tiles) * C::BN;
  const int split = blockIdx.y, nsplit = gridDim.y;
  const int64_t nst = (k + kBK - 1) / kBK;
  const int64_t st0 = nst * split / nsplit, nloc = nst * (split + 1) / nsplit - st0;

#pragma unroll 1
  for (int s = 0; s < C::STAGES - 1; s++) {
    if (s < nloc) {
      load_stage<C, FMT, ALIGNED>(stages + s * C::kStageBytes, x, codes, scales, row0, col0,
                                  batch, n, k, st0 + s);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  }
  for (int i = tid; i < 256; i += C::kThreads) {
    const float s = FMT == FP4_WEIGHTS_MXFP4
                        ? fmt::e8m0_decode(uint32_t(i))
                        : fmt::mf_decode(fmt::fmt_e4m3(), uint32_t(i)) * 0x1p100f;
    table[i] = fmt::f32_to_bf16(s);
  }

  // Byte offset of each lane row's scales within their aligned word, at stage 0.
  int soff[2 * MT];
#pragma unroll
  for (int rg = 0; rg < 2 * MT; rg++) {
    soff[rg] = int(uintptr_t(scales + (row0 + wr0 + 8 * rg + g) * (k / G)) & 3);
  }

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int j = 0; j < NT; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

#pragma unroll 1
  for (int64_t it = 0; it < nloc; it++) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(C::STAGES - 2));
    __syncthreads();
    const int64_t nxt = it + C::STAGES - 1;
    if (nxt < nloc) {
      load_stage<C, FMT, ALIGNED>(stages + (nxt % C::STAGES) * C::kStageBytes, x, codes, scales,
                                  row0, col0, batch, n, k, st0 + nxt);
    }
    asm volatile("cp.async.commit_group;\n" ::);

    const unsigned char *cs = stages + (it % C::STAGES) * C::kStageBytes;
    const unsigned char *ss = cs + C::kCodeBytes, *xs = ss + C::kScaleBytes;
    const int64_t kst = (st0 + it) * kBK;

    uint32_t cw[2][2 * MT];  // [half][row group]
#pragma unroll
    for (int q = 0; q < MT; q++) {
      const int j = 4 * q + (lane >> 3), rg = j % (2 * MT), h = j / (2 * MT);
      const int r = wr0 + 8 * rg + (lane & 7);
      uint32_t v[4];
      ldmatrix_x4(cs + r * 32 + 16 * (h ^ ((r >> 2) & 1)), v);
#pragma unroll
      for (int i = 0; i < 4; i++) cw[(4 * q + i) / (2 * MT)][(4 * q + i) % (2 * MT)] = v[i];
    }
    uint32_t sc[2][2 * MT];
#pragma unroll
    for (int rg = 0; rg < 2 * MT; rg++) {
      const uint2 sw = *reinterpret_cast<const uint2 *>(ss + (wr0 + 8 * rg + g) * 8);
      const int o = (soff[rg] + int(kst / G)) & 3;
      const uint32_t v = __funnelshift_r(sw.x, sw.y, 8 * o);
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int idx = G == 32 ? h : 2 * h + (t >> 1);
        const uint32_t s = table[(v >> (8 * idx)) & 0xffu];
        sc[h][rg] = kst + G * idx < k ? s * 0x10001u : 0u;
      }
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
      uint4 bx[NT];
#pragma unroll
      for (int j = 0; j < NT; j++) {
        const int r = wc0 + 8 * j + g;
        bx[j] = *reinterpret_cast<const uint4 *>(xs + r * 128 + 16 * ((4 * h + t) ^ ((r & 1) << 2)));
      }
      uint32_t w4[2 * MT];
#pragma unroll
      for (int rg = 0; rg < 2 * MT; rg++) w4[rg] = cw[h][rg] << 4;
#pragma unroll
      for (int sub = 0; sub < 2; sub++) {
#pragma unroll
        for (int i = 0; i < MT; i++) {
          uint32_t a[4];
          a[0] = dequant<FMT>(cw[h][2 * i], w4[2 * i], 2 * sub, sc[h][2 * i]);
          a[1] = dequant<FMT>(cw[h][2 * i + 1], w4[2 * i + 1], 2 * sub, sc[h][2 * i + 1]);
          a[2] = dequant<FMT>(cw[h][2 * i], w4[2 * i], 2 * sub + 1, sc[h][2 * i]);
          a[3] = dequant<FMT>(cw[h][2 * i + 1], w4[2 * i + 1], 2 * sub + 1, sc[h][2 * i + 1]);
#pragma unroll
          for (int j = 0; j < NT; j++) {
            mma(acc[i][j], a, sub ? bx[j].z : bx[j].x, sub ? bx[j].w : bx[j].y);
          }
        }
      }
    }
  }

  if (nsplit > 1) {
    constexpr int kTile = C::BM * C::BN;
    float *mine = part + (size_t(blockIdx.x) * nsplit + split) * kTile;
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
      for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) __stcg(mine + ((i * NT + j) * 4 + e) * C::kThreads + tid, acc[i][j][e]);
    __threadfence();
    __syncthreads();
    if (tid == 0) {
      is_last = atomicAdd(count + blockIdx.x, 1) == nsplit - 1;
      if (is_last) count[blockIdx.x] = 0;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const float *base = part + size_t(blockIdx.x) * nsplit * kTile;
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
      for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int off = ((i * NT + j) * 4 + e) * C::kThreads + tid;
          float s = 0.f;
          for (int z = 0; z < nsplit; z++) s += z == split ? acc[i][j][e] : __ldcg(base + z * kTile + off);
          acc[i][j][e] = s;
        }
  }

#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int64_t row = row0 + wr0 + 16 * i + g + 8 * (e >> 1);
        const int64_t b = col0 + wc0 + 8 * j + 2 * t + (e & 1);
        const float v = FMT == FP4_WEIGHTS_NVFP4 ? acc[i][j][e] * 0x1p26f * tensor_scale : acc[i][j][e];
        if (row < n && b < batch) y[b * n + row] = fmt::f32_to_bf16(v);
      }
}

struct DeviceInfo {
  int device = -1, sms = 0;
};

// Number of k splits: `want` > 0 as asked, else enough to give every SM a block; at least 4
// stages per split, at most 8 splits, and 1 when the workspace cannot be grown (capture).
template <class C>
fp4_status splits_for(int want, int64_t tiles, int64_t k, int sms, cudaStream_t stream,
                      int *out, int **count, float **part) {
  const int64_t nst = (k + kBK - 1) / kBK;
  int64_t s = want > 0 ? want : (sms + tiles - 1) / tiles;
  if (want <= 0) s = s > 8 ? 8 : s;
  if (s > nst / 4 && want <= 0) s = nst / 4;
  if (s > nst) s = nst;
  if (s < 1) s = 1;
  *out = 1;
  if (s == 1) return FP4_OK;
  int dev = 0;
  FP4_CU(cudaGetDevice(&dev));
  Workspace &ws = workspace_of(dev);
  const size_t ncount = size_t(tiles), npart = size_t(tiles) * size_t(s) * C::BM * C::BN;
  if (ws.count_cap < ncount || ws.part_cap < npart) {
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    FP4_CU(cudaStreamIsCapturing(stream, &cap));
    if (cap != cudaStreamCaptureStatusNone) return FP4_OK;
    if (ws.count_cap < ncount) {
      if (ws.count) FP4_CU(cudaFree(ws.count));
      ws.count = nullptr;
      ws.count_cap = 0;
      FP4_CU(cudaMalloc(&ws.count, ncount * sizeof(int)));
      FP4_CU(cudaMemset(ws.count, 0, ncount * sizeof(int)));
      ws.count_cap = ncount;
    }
    if (ws.part_cap < npart) {
      if (ws.part) FP4_CU(cudaFree(ws.part));
      ws.part = nullptr;
      ws.part_cap = 0;
      FP4_CU(cudaMalloc(&ws.part, npart * sizeof(float)));
      ws.part_cap = npart;
    }
  }
  *out = int(s);
  *count = ws.count;
  *part = ws.part;
  return FP4_OK;
}

// Enqueues the tiled GEMM with tile configuration C; split 0 = automatic.
template <class C, int FMT>
fp4_status launch(const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                  float tensor_scale, uint16_t *y, int64_t batch, int64_t n, int64_t k, int split,
                  cudaStream_t stream) {
  static DeviceInfo info;
  int dev = 0;
  FP4_CU(cudaGetDevice(&dev));
  if (info.device != dev) {
    FP4_CU(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, dev));
    FP4_CU(cudaFuncSetAttribute(gemm_tile_kernel<C, FMT, true>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem));
    FP4_CU(cudaFuncSetAttribute(gemm_tile_kernel<C, FMT, false>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem));
    info.device = dev;
  }
  const int64_t tiles = ((n + C::BM - 1) / C::BM) * ((batch + C::BN - 1) / C::BN);
  FP4_REQUIRE(tiles <= 0x7fffffff, "fp4_gemm: n = %lld x batch = %lld is too large", (long long)n,
              (long long)batch);
  int s = 1, *count = nullptr;
  float *part = nullptr;
  if (fp4_status st = splits_for<C>(split, tiles, k, info.sms, stream, &s, &count, &part)) return st;
  const dim3 grid{unsigned(tiles), unsigned(s)};
  const bool aligned = k % 32 == 0 && uintptr_t(codes) % 16 == 0;
  if (aligned) {
    gemm_tile_kernel<C, FMT, true><<<grid, C::kThreads, C::kSmem, stream>>>(
        x, codes, scales, tensor_scale, y, batch, n, k, count, part);
  } else {
    gemm_tile_kernel<C, FMT, false><<<grid, C::kThreads, C::kSmem, stream>>>(
        x, codes, scales, tensor_scale, y, batch, n, k, count, part);
  }
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace fp4::cuda::tile
