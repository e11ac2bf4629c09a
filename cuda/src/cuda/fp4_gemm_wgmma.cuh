// W4A16 GEMM for batches > 16 on Hopper (sm_90a): warpgroup MMAs (wgmma, bf16 in, f32
// accumulate) whose A operand is the FP4 weights decoded in registers and whose B operand is the
// activations in shared memory. fp4_gemm.cu picks it (or fp4_gemm_tile.cuh) by batch and shape.
//
// Roles: y^T [n, batch] = W [n, k] x^T: the MMA's M is weight rows (64 per wgmma), N batch columns
// (BN = 32, 64 or 128 per block), K the reduction. Each warp decodes its own 16 rows of every
// 64-row tile straight into wgmma's A fragment, so a block decodes each weight once (its tile
// spans all batch columns up to BN), and the tensor cores read the activations from shared memory
// themselves: per 16 k a warp issues ~25 decode instructions per m64nBNk16 MMA, not the ~300 per
// 32-64 mma.sync of fp4_gemm_tile.cuh.
//
// Layout: the plain one of fp4lab/gemm.h (no reordering). A block owns BM = 64 WGS MW weight rows
// (WGS warpgroups, MW 64-row tiles each) x BN batch columns and walks k in stages of 64 through a
// STAGES-deep ring (codes and scales by cp.async, x by TMA or cp.async: kXTma below); a stage
// holds
//   x      BN x 128 bytes in wgmma's canonical K-major 128-byte-swizzle layout: batch row r at
//          1024 (r / 8) + 128 (r % 8), its 16-byte chunk c (k 8c..8c+7) at 16 (c ^ r % 8);
//          the k16 step s is the descriptor of the stage's base + 32 s;
//   codes  BM x 32 bytes (16-byte halves swapped on rows 4..7 mod 8, so that the 16-byte loads of
//          8 rows at a 32-byte stride are free of bank conflicts);
//   scales BM x 8 bytes (the two aligned 4-byte words around the row's 2 or 4 scale bytes, since
//          cp.async cannot copy single bytes).
//
// Fragment: wgmma's A fragment gives lane (g, t) of warp j of a warpgroup rows 16 j + g and
// 16 j + g + 8, k = 2t, 2t+1 (registers 0, 1) and k = 2t+8, 2t+9 (registers 2, 3): for the k16
// step s of a stage, code bytes 8s + t and 8s + t + 4 of each row. The lane reads its two rows'
// 32 stage bytes with four 16-byte loads and decodes byte t of each word (tile::dequant: exact
// E2M1 -> bf16, times the group's scale as bf16; NVFP4 carries 2^100 in the scale and 2^26 times
// the tensor scale into the f32 epilogue, MXFP4 multiplies by 2^126 first).
//
// Work split (stream-k): the k stages of all tiles form one sequence of tiles x nst iterations,
// cut into gridDim.x contiguous ranges of equal length, one per block, so every SM works to the
// end of the single wave whatever the tile count. A tile covered by one block is stored directly;
// a tile shared by several gets an f32 partial from each (a block has at most two partial tiles:
// its first and its last), and the last to arrive at the tile's counter adds them in k order
// (deterministic), rounds once to bf16 and resets the counter. No block ever waits on another.
//
// Bytes per launch: codes n k / 2 + scales n k / group once per batch tile (HBM), x batch k 2 once
// per row tile (L2), y batch n 2, and 2 x BM BN 4 of workspace (L2) per partial tile.
#pragma once
#include <cuda.h>  // CUtensorMap and its enums (the encoder comes through the runtime)
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "fp4_gemm_tile.cuh"

namespace fp4::cuda::wg {

constexpr int kBK = 64;  // k per pipeline stage: one 128-byte swizzle row of bf16 activations

// How a stage's activations reach shared memory. kXCopy: per-thread cp.async (generic-proxy
// writes), then fence.proxy.async before wgmma (an async-proxy reader) may read them. kXTma: one
// thread's cp.async.bulk.tensor (the tensor map swizzles; async-proxy writes) completing on the
// stage's mbarrier, which wgmma may read after the wait with no proxy fence; needs k % 8 == 0 and
// 16-byte aligned x. kXTma is 16-31% faster on the Llama shapes (bench/notes/fp4_gemm.md,
// "Version 4"); codes and scales stay on cp.async (read by ordinary loads: no fence needed).
constexpr int kXCopy = 0, kXTma = 1, kXAuto = -1;

// LEAN: the candidate with fewer instructions per stage (bench/notes/fp4_gemm.md, "Version 8":
// Version 6's profile found the kernel bound by instruction issue): a u32 scale table holding
// the bf16 scale in both halves (no multiply per lookup), scale byte offsets in 32-bit
// arithmetic, copy loops with compile-time trip counts, and no finish code in the first half of
// the unrolled main loop (a stage that ends a segment is always the second of a pair).
template <int WGS_, int MW_, int BN_, int STAGES_, bool LEAN_ = false>
struct Cfg {
  static constexpr int WGS = WGS_, MW = MW_, BN = BN_, STAGES = STAGES_;
  static constexpr bool LEAN = LEAN_;
  static constexpr int kThreads = 128 * WGS, BM = 64 * WGS * MW;
  static constexpr int kXBytes = BN * 128, kCodeBytes = BM * 32, kScaleBytes = BM * 8;
  static constexpr int kStageBytes = (kXBytes + kCodeBytes + kScaleBytes + 1023) / 1024 * 1024;
  static constexpr int kTableBytes = LEAN ? 1024 : 512;
  // 1024 bytes of slack to align the stages to the swizzle pattern's 1024-byte period.
  static constexpr int kSmem = 1024 + STAGES * kStageBytes + kTableBytes;
  static constexpr int kTileElems = BM * BN;
  static_assert(BN == 32 || BN == 64 || BN == 128, "BN: a wgmma N this file instantiates");
  static_assert(STAGES >= 3, "the pipeline waits with STAGES - 3 groups in flight");
};

// Byte offset of activation chunk c (k 8c..8c+7) of batch row r in a stage (128-byte swizzle).
__host__ __device__ constexpr int x_offset(int r, int c) {
  return (r >> 3) * 1024 + (r & 7) * 128 + ((c ^ (r & 7)) << 4);
}

// Byte offset of the 16-byte half h (k 32h..32h+31) of weight row r's codes in a stage.
__host__ __device__ constexpr int code_offset(int r, int h) {
  return r * 32 + 16 * (h ^ ((r >> 2) & 1));
}

// k stages per tile: ceil(k / 64) rounded up to even (a padding stage past k reads zeros), so
// that every range below is a whole number of stage pairs and the main loop, unrolled by two
// for its two A register buffers, needs no exit in between (which would make ptxas serialize
// the MMAs).
__host__ __device__ inline int64_t stages_per_tile(int64_t k) {
  return ((k + kBK - 1) / kBK + 1) / 2 * 2;
}
// Stream-k ranges over the P = tiles * nst / 2 stage pairs: block b of G covers stages
// [range_start(b), range_start(b + 1)).
__host__ __device__ inline int64_t range_start(int64_t b, int64_t P, int64_t G) {
  return 2 * (b * P / G);
}
// The block whose range holds stage i.
__host__ __device__ inline int64_t block_of(int64_t i, int64_t P, int64_t G) {
  return ((i / 2 + 1) * G - 1) / P;
}

// Shared-memory matrix descriptor of a K-major, 128-byte-swizzled operand at shared address a
// (1024-byte aligned): stride 1024 bytes between 8-row groups; the leading offset is unused.
__device__ __forceinline__ uint64_t x_desc(unsigned a) {
  return uint64_t((a & 0x3ffffu) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

template <int N>
struct Wgmma;

template <>
struct Wgmma<32> {
  static __device__ __forceinline__ void run(float (&d)[16], const uint32_t (&a)[4],
                                             uint64_t desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %20, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
        "{%16, %17, %18, %19}, %21, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(accumulate), "l"(desc));
  }
};

template <>
struct Wgmma<64> {
  static __device__ __forceinline__ void run(float (&d)[32], const uint32_t (&a)[4],
                                             uint64_t desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %36, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %37, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
          "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(accumulate), "l"(desc));
  }
};

template <>
struct Wgmma<128> {
  static __device__ __forceinline__ void run(float (&d)[64], const uint32_t (&a)[4],
                                             uint64_t desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %68, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %69, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
          "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
          "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
          "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
          "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
          "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(accumulate), "l"(desc));
  }
};

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of r across the wgmma fences.
__device__ __forceinline__ void pin(uint32_t &r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void pin(float &r) { asm volatile("" : "+f"(r)::"memory"); }

__device__ __forceinline__ void mbar_init(uint64_t *bar) {
  const unsigned a = unsigned(__cvta_generic_to_shared(bar));
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(a) : "memory");
}
// Blocks until the mbarrier's phase of parity `phase` has completed.
__device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t phase) {
  const unsigned a = unsigned(__cvta_generic_to_shared(bar));
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(a), "r"(phase)
        : "memory");
  } while (!done);
}

// The copy loops below run p = tid, tid + kThreads, ... below TOTAL. LEAN counts a compile-time
// number of trips j (skipping p >= TOTAL on the last where kThreads does not divide TOTAL), so
// that they unroll; otherwise the trip count depends on tid at run time, which costs branches and
// convergence barriers per stage.
template <class C, int TOTAL>
__device__ __forceinline__ bool more_trips(int j, int p) {
  return C::LEAN ? j < (TOTAL + C::kThreads - 1) / C::kThreads : p < TOTAL;
}
template <class C, int TOTAL>
__device__ __forceinline__ bool past_end(int p) {
  return C::LEAN && TOTAL % C::kThreads != 0 && p >= TOTAL;
}

// Copies the stage of k from kst of the tile at (row0, col0) into `buf`; with kXTma the
// activations come by one TMA copy (issued by thread 0) that completes on `bar`.
template <class C, int FMT, bool ALIGNED, int XL>
__device__ __forceinline__ void load_stage(unsigned char *buf, const uint16_t *x,
                                           const CUtensorMap *tmap, uint64_t *bar,
                                           const uint8_t *codes, const uint8_t *scales,
                                           int64_t row0, int64_t col0, int64_t batch, int64_t n,
                                           int64_t k, int64_t kst) {
  constexpr int G = FMT == FP4_WEIGHTS_MXFP4 ? 32 : 16;
  const int tid = threadIdx.x;
  unsigned char *xs = buf, *cs = buf + C::kXBytes, *ss = cs + C::kCodeBytes;
  if constexpr (XL == kXTma) {
    // The box is BN rows of 64 k at (kst, col0); rows past the batch and k past k are zeros,
    // and the full box's bytes count towards the transaction either way.
    if (tid == 0) {
      const unsigned b = unsigned(__cvta_generic_to_shared(bar));
      const unsigned d = unsigned(__cvta_generic_to_shared(xs));
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(b),
                   "n"(C::kXBytes)
                   : "memory");
      asm volatile(
          "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
          " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(d),
          "l"(reinterpret_cast<uint64_t>(tmap)), "r"(int(kst)), "r"(int(col0)), "r"(b)
          : "memory");
    }
  } else {
#pragma unroll
    for (int j = 0, p = tid; more_trips<C, C::BN * 8>(j, p); j++, p += C::kThreads) {
      if (past_end<C, C::BN * 8>(p)) continue;
      const int r = p >> 3, c = p & 7;
      const int64_t b = col0 + r, kk = kst + 8 * c;
      const bool ok = b < batch && kk < k;
      tile::cp_async(xs + x_offset(r, c), ok ? x + b * k + kk : x, 16, ok);
    }
  }
  if (ALIGNED) {
#pragma unroll
    for (int j = 0, p = tid; more_trips<C, C::BM * 2>(j, p); j++, p += C::kThreads) {
      if (past_end<C, C::BM * 2>(p)) continue;
      const int r = p >> 1, h = p & 1;
      const int64_t row = row0 + r, kk = kst + 32 * h;
      const bool ok = row < n && kk < k;
      tile::cp_async(cs + code_offset(r, h), ok ? codes + row * (k / 2) + kk / 2 : codes, 16, ok);
    }
  } else {
#pragma unroll
    for (int j = 0, p = tid; more_trips<C, C::BM * 4>(j, p); j++, p += C::kThreads) {
      if (past_end<C, C::BM * 4>(p)) continue;
      const int r = p >> 2, q = p & 3;
      const int64_t row = row0 + r, kk = kst + 16 * q;
      const bool ok = row < n && kk < k;
      tile::cp_async(cs + code_offset(r, q >> 1) + 8 * (q & 1),
                     ok ? codes + row * (k / 2) + kk / 2 : codes, 8, ok);
    }
  }
  const int need = int((k - kst < kBK ? k - kst : kBK) / G);  // scale bytes of this stage
#pragma unroll
  for (int j = 0, p = tid; more_trips<C, C::BM * 2>(j, p); j++, p += C::kThreads) {
    if (past_end<C, C::BM * 2>(p)) continue;
    const int r = p >> 1, wi = p & 1;
    const int64_t row = row0 + r;
    const uintptr_t a = uintptr_t(scales + row * (k / G) + kst / G);
    const bool ok = row < n && (wi == 0 || int(a & 3) + need > 4);
    const void *src = ok ? reinterpret_cast<const void *>((a & ~uintptr_t(3)) + 4 * wi) : scales;
    tile::cp_async(ss + r * 8 + 4 * wi, src, 4, ok);
  }
}

// Position of a k stage in the tile sequence: tile (rt, ct) = (row tile, batch tile), stage st.
struct Cursor {
  int64_t rt, ct, st;
  __device__ Cursor(int64_t it, int64_t nst, int64_t col_tiles)
      : rt(it / nst / col_tiles), ct(it / nst % col_tiles), st(it % nst) {}
  __device__ void next(int64_t nst, int64_t col_tiles) {
    if (++st == nst) {
      st = 0;
      if (++ct == col_tiles) ct = 0, rt++;
    }
  }
};

// Stores a block's f32 sums for `tile` (all of its k stages when `whole`, else the block's
// segment of them): directly, or through the workspace, the tile's last contributor storing the
// sum of every contributor's partial in k order.
template <class C, int FMT>
__device__ __forceinline__ void finish(float (&acc)[C::MW][C::BN / 2], const Cursor &at,
                                       bool whole, bool first_of_block, int64_t P, int64_t NB,
                                       int64_t nst, int64_t col_tiles, int wrow, uint16_t *y,
                                       int64_t batch, int64_t n, float out_scale, int *count,
                                       float *part, int *is_last) {
  constexpr int MW = C::MW, NR = C::BN / 2;
  const int tid = threadIdx.x, t = tid & 3;
  if (!whole) {
    const int64_t tile = at.rt * col_tiles + at.ct;
    // Workspace slot 2b holds block b's first tile, 2b + 1 its last.
    float *mine = part + (2 * int64_t(blockIdx.x) + (first_of_block ? 0 : 1)) * C::kTileElems;
#pragma unroll
    for (int m = 0; m < MW; m++)
#pragma unroll
      for (int i = 0; i < NR; i++) __stcg(mine + (m * NR + i) * C::kThreads + tid, acc[m][i]);
    __threadfence();
    __syncthreads();
    const int64_t first = block_of(tile * nst, P, NB);
    const int64_t last = block_of(tile * nst + nst - 1, P, NB);
    if (tid == 0) {
      *is_last = atomicAdd(count + tile, 1) == int(last - first);
      if (*is_last) count[tile] = 0;
    }
    __syncthreads();
    if (!*is_last) return;
    __threadfence();
#pragma unroll 1
    for (int64_t b = first; b <= last; b++) {
      const int64_t slot = 2 * b + (tile == range_start(b, P, NB) / nst ? 0 : 1);
      const float *src = part + slot * C::kTileElems + tid;
#pragma unroll
      for (int m = 0; m < MW; m++)
#pragma unroll
        for (int i = 0; i < NR; i++) {
          const float v = __ldcg(src + (m * NR + i) * C::kThreads);
          acc[m][i] = b == first ? v : acc[m][i] + v;
        }
    }
  }
  const int64_t row0 = at.rt * C::BM, col0 = at.ct * C::BN;
#pragma unroll
  for (int m = 0; m < MW; m++)
#pragma unroll
    for (int i = 0; i < NR; i++) {
      const int64_t row = row0 + wrow + 64 * m + 8 * ((i >> 1) & 1);
      const int64_t b = col0 + 8 * (i >> 2) + 2 * t + (i & 1);
      if (row < n && b < batch) y[b * n + row] = fmt::f32_to_bf16(acc[m][i] * out_scale);
    }
}

template <class C, int FMT, bool ALIGNED, int XL>
__global__ void __launch_bounds__(C::kThreads, 1)
    gemm_wgmma_kernel(const uint16_t *__restrict__ x, const __grid_constant__ CUtensorMap tmap,
                      const uint8_t *__restrict__ codes, const uint8_t *__restrict__ scales,
                      float out_scale, uint16_t *__restrict__ y, int64_t batch, int64_t n,
                      int64_t k, int *__restrict__ count, float *__restrict__ part) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // the compute_90 PTX, for other GPUs, has no wgmma: launch() refuses them
#else
  constexpr int G = FMT == FP4_WEIGHTS_MXFP4 ? 32 : 16, MW = C::MW, NR = C::BN / 2;
  constexpr int S = C::STAGES;
  extern __shared__ unsigned char smem_raw[];
  __shared__ int is_last;
  __shared__ alignas(8) uint64_t bars[S];  // kXTma: stage s's activations landed
  unsigned char *stages = smem_raw + ((1024 - (__cvta_generic_to_shared(smem_raw) & 1023)) & 1023);
  // The bf16 of each scale byte (LEAN: in both halves of a u32, as the decode multiplies pairs).
  using Entry = std::conditional_t<C::LEAN, uint32_t, uint16_t>;
  Entry *table = reinterpret_cast<Entry *>(stages + S * C::kStageBytes);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int t = lane & 3;
  // This lane's first row in each of its warpgroup's 64-row tiles: warpgroup warp / 4 owns tiles
  // MW (warp / 4) .. MW (warp / 4) + MW - 1, and warp j of it rows 16 j .. 16 j + 15 of each.
  const int wrow = 64 * MW * (warp >> 2) + 16 * (warp & 3) + (lane >> 2);
  const int64_t col_tiles = (batch + C::BN - 1) / C::BN;
  const int64_t nst = stages_per_tile(k);
  const int64_t P = ((n + C::BM - 1) / C::BM) * col_tiles * nst / 2, NB = gridDim.x;
  const int64_t start = range_start(blockIdx.x, P, NB);
  const int64_t count_it = range_start(blockIdx.x + 1, P, NB) - start;  // even, >= 2

  if constexpr (XL == kXTma) {
    if (tid == 0) {
      for (int s = 0; s < S; s++) mbar_init(bars + s);
      // Makes the initialised barriers visible to the async proxy (the TMA unit).
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
  }
  uint32_t phases = 0;  // kXTma: bit s = parity of the next phase to wait for on bars[s]

  Cursor ld(start, nst, col_tiles);  // next stage to load
  int lbuf = 0;                      // its ring buffer
  auto load_next = [&]() {
    load_stage<C, FMT, ALIGNED, XL>(stages + lbuf * C::kStageBytes, x, &tmap, bars + lbuf, codes,
                                    scales, ld.rt * C::BM, ld.ct * C::BN, batch, n, k,
                                    ld.st * kBK);
    ld.next(nst, col_tiles);
    lbuf = lbuf == S - 1 ? 0 : lbuf + 1;
  };
#pragma unroll 1
  for (int s = 0; s < S - 1; s++) {
    if (s < count_it) load_next();
    asm volatile("cp.async.commit_group;\n" ::);
  }
  for (int i = tid; i < 256; i += C::kThreads) {
    const float s = FMT == FP4_WEIGHTS_MXFP4
                        ? fmt::e8m0_decode(uint32_t(i))
                        : fmt::mf_decode(fmt::fmt_e4m3(), uint32_t(i)) * 0x1p100f;
    table[i] = Entry(fmt::f32_to_bf16(s)) * (C::LEAN ? 0x10001u : 1u);
  }

  float acc[MW][NR];
#pragma unroll
  for (int m = 0; m < MW; m++)
#pragma unroll
    for (int i = 0; i < NR; i++) acc[m][i] = 0.f;
  uint32_t a[2][MW][4][4];  // [buffer][64-row tile][k16 step][register]
  Cursor at(start, nst, col_tiles);  // the stage computed
  int buf = 0;                       // its ring buffer
  bool from0 = at.st == 0;           // the current segment started at the tile's first stage
  bool first_of_block = true;        // the current segment is the block's first

  asm volatile("cp.async.wait_group %0;\n" ::"n"(S - 2));
  if constexpr (XL == kXCopy) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  if constexpr (XL == kXTma) {
    mbar_wait(bars, 0);
    phases ^= 1u;
  }
  __syncthreads();

#pragma unroll 1
  for (int64_t i0 = 0; i0 < count_it; i0 += 2) {
#pragma unroll
    for (int ab = 0; ab < 2; ab++) {  // A register buffer, a compile-time index
      const int64_t li = i0 + ab;
      const unsigned char *xs = stages + buf * C::kStageBytes;
      const unsigned char *cs = xs + C::kXBytes, *ss = cs + C::kCodeBytes;
      const int64_t kst = at.st * kBK, row0 = at.rt * C::BM;
      const bool fresh = li == 0 || at.st == 0;  // first stage of a segment: MMAs overwrite

#pragma unroll
      for (int m = 0; m < MW; m++) {
        const int r0 = wrow + 64 * m, r1 = r0 + 8;
        const uint4 c00 = *reinterpret_cast<const uint4 *>(cs + code_offset(r0, 0));
        const uint4 c01 = *reinterpret_cast<const uint4 *>(cs + code_offset(r0, 1));
        const uint4 c10 = *reinterpret_cast<const uint4 *>(cs + code_offset(r1, 0));
        const uint4 c11 = *reinterpret_cast<const uint4 *>(cs + code_offset(r1, 1));
        const uint32_t w0[8] = {c00.x, c00.y, c00.z, c00.w, c01.x, c01.y, c01.z, c01.w};
        const uint32_t w1[8] = {c10.x, c10.y, c10.z, c10.w, c11.x, c11.y, c11.z, c11.w};
        // This stage's scale bytes of rows r0 and r1, group j of the stage in byte j.
        const uint2 s0w = *reinterpret_cast<const uint2 *>(ss + r0 * 8);
        const uint2 s1w = *reinterpret_cast<const uint2 *>(ss + r1 * 8);
        int o0, o1;
        if constexpr (C::LEAN) {
          // Only the address mod 4 matters, which u32 arithmetic keeps.
          const uint32_t kg = uint32_t(k / G);
          const uint32_t base = uint32_t(uintptr_t(scales)) + uint32_t(kst / G);
          o0 = int((base + uint32_t(row0 + r0) * kg) & 3u);
          o1 = int((base + uint32_t(row0 + r1) * kg) & 3u);
        } else {
          o0 = int(uintptr_t(scales + (row0 + r0) * (k / G) + kst / G) & 3);
          o1 = int(uintptr_t(scales + (row0 + r1) * (k / G) + kst / G) & 3);
        }
        const uint32_t v0 = __funnelshift_r(s0w.x, s0w.y, 8 * o0);
        const uint32_t v1 = __funnelshift_r(s1w.x, s1w.y, 8 * o1);
#pragma unroll
        for (int s = 0; s < 4; s++) {
          const int j = G == 32 ? s >> 1 : s;  // group of k16 step s within the stage
          const bool in = kst + G * j < k;
          const uint32_t m2 = C::LEAN ? 1u : 0x10001u;
          const uint32_t sc0 = in ? uint32_t(table[(v0 >> (8 * j)) & 0xffu]) * m2 : 0u;
          const uint32_t sc1 = in ? uint32_t(table[(v1 >> (8 * j)) & 0xffu]) * m2 : 0u;
          const uint32_t lo0 = w0[2 * s], hi0 = w0[2 * s + 1];
          const uint32_t lo1 = w1[2 * s], hi1 = w1[2 * s + 1];
          a[ab][m][s][0] = tile::dequant<FMT>(lo0, lo0 << 4, t, sc0);
          a[ab][m][s][1] = tile::dequant<FMT>(lo1, lo1 << 4, t, sc1);
          a[ab][m][s][2] = tile::dequant<FMT>(hi0, hi0 << 4, t, sc0);
          a[ab][m][s][3] = tile::dequant<FMT>(hi1, hi1 << 4, t, sc1);
#pragma unroll
          for (int q = 0; q < 4; q++) pin(a[ab][m][s][q]);
        }
      }

      wgmma_fence();
      const uint64_t desc = x_desc(unsigned(__cvta_generic_to_shared(xs)));
#pragma unroll
      for (int s = 0; s < 4; s++)
#pragma unroll
        for (int m = 0; m < MW; m++) {
          Wgmma<C::BN>::run(acc[m], a[ab][m][s], desc + 2 * s, s > 0 || !fresh);
        }
      wgmma_commit();
      wgmma_wait<1>();

      // A segment ends only on the second stage of a pair (ranges start at even stages and nst
      // is even), which LEAN tells the compiler.
      if ((!C::LEAN || ab == 1) && (li + 1 == count_it || at.st == nst - 1)) {
        wgmma_wait<0>();
#pragma unroll
        for (int m = 0; m < MW; m++)
#pragma unroll
          for (int i = 0; i < NR; i++) pin(acc[m][i]);
        finish<C, FMT>(acc, at, from0 && at.st == nst - 1, first_of_block, P, NB, nst,
                       col_tiles, wrow, y, batch, n, out_scale, count, part, &is_last);
        from0 = true;
        first_of_block = false;
      }
      at.next(nst, col_tiles);
      buf = buf == S - 1 ? 0 : buf + 1;

      // Stage li + 1 has landed; every warp is done with stage li - 1 (its MMAs included),
      // whose buffer takes stage li + S - 1.
      asm volatile("cp.async.wait_group %0;\n" ::"n"(S - 3));
      if constexpr (XL == kXCopy) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      if constexpr (XL == kXTma) {
        if (li + 1 < count_it) {
          mbar_wait(bars + buf, (phases >> buf) & 1u);
          phases ^= 1u << buf;
        }
      }
      __syncthreads();
      if (li + S - 1 < count_it) load_next();
      asm volatile("cp.async.commit_group;\n" ::);
    }
  }
  wgmma_wait<0>();
#endif
}


// Whether `device` runs the kernel above: it is built for sm_90a (Hopper) alone.
inline fp4_status supported(int device, bool *yes) {
  int major = 0, minor = 0;
  FP4_CU(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FP4_CU(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  *yes = major == 9 && minor == 0;
  return FP4_OK;
}

// Per-device stream-k workspace: per-tile arrival counters (zero between launches) and two
// partial tiles per block. Grown on demand outside stream capture; a capturing launch that finds
// it too small runs one block per tile instead (no partials).
struct Workspace {
  int *count = nullptr;
  float *part = nullptr;
  size_t count_cap = 0, part_cap = 0;
};

inline Workspace &workspace_of(int device) {
  static Workspace ws[64];
  return ws[device & 63];
}

// Makes the workspace hold `ncount` counters and `npart` floats; *ok = false (and no error)
// when that would need an allocation during stream capture.
inline fp4_status reserve(size_t ncount, size_t npart, cudaStream_t stream, bool *ok) {
  int dev = 0;
  FP4_CU(cudaGetDevice(&dev));
  Workspace &ws = workspace_of(dev);
  *ok = true;
  if (ws.count_cap >= ncount && ws.part_cap >= npart) return FP4_OK;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  FP4_CU(cudaStreamIsCapturing(stream, &cap));
  if (cap != cudaStreamCaptureStatusNone) {
    *ok = false;
    return FP4_OK;
  }
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
  return FP4_OK;
}

// cuTensorMapEncodeTiled from the driver (through the runtime, so nothing links libcuda), or
// null where the driver lacks it.
using EncodeTiledFn = CUresult (*)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                   const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                   const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
inline EncodeTiledFn encode_tiled() {
  static const EncodeTiledFn fn = [] {
    void *f = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      f = nullptr;
    }
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

// The tensor map of x [batch, k] bf16 for kXTma: boxes of BN rows x 64 k, 128-byte swizzle (the
// stage layout of x_offset), zeros outside. False where x cannot be described so.
template <class C>
inline bool x_tensor_map(const uint16_t *x, int64_t batch, int64_t k, CUtensorMap *map) {
  const EncodeTiledFn encode = encode_tiled();
  if (!encode || k % 8 != 0 || uintptr_t(x) % 16 != 0 || batch >= (int64_t(1) << 31) ||
      k >= (int64_t(1) << 31))
    return false;
  const cuuint64_t dims[2] = {cuuint64_t(k), cuuint64_t(batch)};
  const cuuint64_t strides[1] = {cuuint64_t(k) * 2};
  const cuuint32_t box[2] = {cuuint32_t(kBK), cuuint32_t(C::BN)};
  const cuuint32_t elem[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<uint16_t *>(x), dims,
                strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <class C, int FMT, bool ALIGNED, int XL>
fp4_status configure(int device, int *per_sm) {
  FP4_CU(cudaFuncSetAttribute(gemm_wgmma_kernel<C, FMT, ALIGNED, XL>,
                              cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem));
  FP4_CU(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      per_sm, gemm_wgmma_kernel<C, FMT, ALIGNED, XL>, C::kThreads, C::kSmem));
  FP4_REQUIRE(*per_sm >= 1, "fp4_gemm: the wgmma kernel does not fit on device %d", device);
  return FP4_OK;
}

// Enqueues the wgmma GEMM with configuration C on `stream`: `blocks` stream-k blocks (0 = as
// many as fit on the device at once), at most one per pair of k stages. XL: how activations are
// loaded (kXAuto: kXTma where x allows it, else kXCopy; a forced mode is for benchmarks, and a
// forced kXTma that x does not allow is an error).
template <class C, int FMT, int XL = kXAuto>
fp4_status launch(const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                  float tensor_scale, uint16_t *y, int64_t batch, int64_t n, int64_t k,
                  int64_t blocks, cudaStream_t stream) {
  constexpr int kMain = XL == kXAuto ? kXTma : XL;   // the mode when x allows TMA
  constexpr int kFall = XL == kXAuto ? kXCopy : XL;  // otherwise
  static int device = -1, per_sm = 0, sms = 0;
  int dev = 0;
  FP4_CU(cudaGetDevice(&dev));
  if (device != dev) {
    bool ok = false;
    if (fp4_status st = supported(dev, &ok)) return st;
    FP4_REQUIRE(ok, "fp4_gemm: the wgmma kernel needs a compute capability 9.0 GPU");
    FP4_CU(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    int a = 0, b = 0, c = 0;
    if (fp4_status st = configure<C, FMT, true, kMain>(dev, &a)) return st;
    if (fp4_status st = configure<C, FMT, false, kMain>(dev, &b)) return st;
    if (fp4_status st = configure<C, FMT, false, kFall>(dev, &c)) return st;
    per_sm = a < b ? (a < c ? a : c) : (b < c ? b : c);
    device = dev;
  }
  const int64_t tiles = ((n + C::BM - 1) / C::BM) * ((batch + C::BN - 1) / C::BN);
  const int64_t pairs = tiles * (stages_per_tile(k) / 2);
  FP4_REQUIRE(tiles <= 0x7fffffff, "fp4_gemm: n = %lld x batch = %lld is too large", (long long)n,
              (long long)batch);
  int64_t G = blocks > 0 ? blocks : int64_t(sms) * per_sm;
  if (G > pairs) G = pairs;
  if (G > 0x7fffffff) G = 0x7fffffff;
  Workspace *ws = nullptr;
  if (G != tiles) {
    bool ok = false;
    if (fp4_status s = reserve(size_t(tiles), size_t(2 * G) * C::kTileElems, stream, &ok)) return s;
    if (ok) {
      FP4_CU(cudaGetDevice(&dev));
      ws = &workspace_of(dev);
    } else {
      G = tiles;
    }
  }
  CUtensorMap map{};
  const bool tma = kMain == kXTma && x_tensor_map<C>(x, batch, k, &map);
  FP4_REQUIRE(tma || kMain != kXTma || XL == kXAuto,
              "fp4_gemm: forced TMA activations need k %% 8 == 0 and 16-byte aligned x");
  const bool aligned = k % 32 == 0 && uintptr_t(codes) % 16 == 0;
  // The f32 sums times this, rounded once: (sum * 2^26) * tensor_scale for NVFP4 (exactly
  // sum * (2^26 tensor_scale)); 1 for MXFP4, a run-time multiply that keeps the sums in f32
  // registers (folded away, it lets the compiler move them as integers around the MMAs).
  const float out_scale = FMT == FP4_WEIGHTS_NVFP4 ? 0x1p26f * tensor_scale : 1.f;
  int *count = ws ? ws->count : nullptr;
  float *part = ws ? ws->part : nullptr;
  // kMain: aligned or not; kFall (x not for TMA: k % 8 != 0, so never aligned) the general one.
  auto kernel = kMain == kXTma && !tma ? gemm_wgmma_kernel<C, FMT, false, kFall>
                : aligned              ? gemm_wgmma_kernel<C, FMT, true, kMain>
                                       : gemm_wgmma_kernel<C, FMT, false, kMain>;
  kernel<<<unsigned(G), C::kThreads, C::kSmem, stream>>>(x, map, codes, scales, out_scale, y,
                                                         batch, n, k, count, part);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace fp4::cuda::wg
