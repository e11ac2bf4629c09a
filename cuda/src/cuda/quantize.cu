// CUDA group quantization, dequantization and element conversion (docs/FORMATS.md §2-6), on the
// shared primitives of formats.hpp, so results equal the CPU backend and the TypeScript bit for
// bit (nvcc -fmad=false; divisions are IEEE divisions).
//
// Layout: x [rows, cols] f32 or bf16, row-major; groups of `len` consecutive elements.
// Paths:
//  - tiled (E2M1 with nearest rounding, groups of 16 or 32, n a multiple of 32, no zero points):
//    persistent kernels on the tile ring of quantize_fast.cuh. Each thread owns 32 consecutive
//    elements of a 8192-element tile (its 64 bytes of bf16 read from shared memory), so its one
//    or two groups need no shuffles; it derives each group's scale once (inlined rule), encodes
//    with the exact fast encoder and divider, and writes its 16 code bytes in one store and its
//    scale bytes. With a tensor amax a first persistent kernel writes each CTA's max |x|; the
//    quantize kernel (dependent launch: its first tiles load while the first drains) reduces
//    those partials and walks the tiles backwards, starting on what the first left in L2.
//    Non-finite input: each CTA writes the first bad index it saw. Bytes moved: reads x once
//    (twice with a tensor amax), writes n/2 code bytes and n/len scale bytes.
//  - coalesced (other groups of 8·2^k elements, k <= 5, no MSE): each thread owns 8 consecutive
//    elements (one 16-byte load of bf16), the len/8 lanes of a group reduce its statistics with
//    shuffles, and each thread stores its 4 (4-bit) or 8 code bytes in one store, so a warp
//    reads 512 contiguous bytes and writes 128 per instruction. E2M1 with nearest rounding
//    takes the exact fast encoder and divider of quantize_fast.cuh. Bytes moved: reads x once,
//    writes n/2 or n code bytes plus the scales. With a tensor amax the statistics pass reads
//    x once more (16-byte loads); the quantize pass then walks the tensor backwards, so it
//    starts on the part that the statistics pass left in L2.
//  - fused: one thread per group (picks the scale, encodes, packs its own bytes) when every group
//    owns whole bytes (8-bit codes, or 4-bit codes with an even group length) and groups are not
//    the whole tensor. Bytes moved: reads x once (plain rule) or 2 + candidates times (MSE, from
//    L1/L2), writes n/2 or n code bytes plus the scales.
//  - two-phase: scales per group (phase A), then one thread per code byte (phase B) for odd
//    4-bit groups and tensor-wide groups (whose stats come from a reduction; an MSE search over
//    a tensor-wide group runs on the host to keep the float64 error sum in element order).
// Non-finite input is otherwise found with an atomicMin over the linear index, read back after
// the run.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <mutex>
#include <type_traits>
#include <vector>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../formats.hpp"
#include "check.cuh"
#include "quantize_fast.cuh"

namespace fp4::cuda {

using namespace fp4::fmt;

namespace {

__global__ void encode_kernel(int codec, const float *x, uint64_t n, const uint32_t *random,
                              uint8_t *codes) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n;
       i += uint64_t(gridDim.x) * blockDim.x) {
    codes[i] = uint8_t(codec_encode(codec, x[i], random != nullptr, random ? random[i] : 0u));
  }
}

__global__ void decode_kernel(int codec, const uint8_t *codes, uint64_t n, float *out) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n;
       i += uint64_t(gridDim.x) * blockDim.x) {
    out[i] = codec_decode(codec, codes[i]);
  }
}

// Whole-tensor statistics: first non-finite index, max |x|, -min(x, 0), max(x, 0). Non-negative
// floats order like their bits, so atomicMax on the bits is an exact float max.
template <class Load>
__global__ void stats_kernel(Load load, uint64_t n, Stats *st) {
  float a = 0.0f, l = 0.0f, h = 0.0f;
  unsigned long long bad = ~0ull;
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n;
       i += uint64_t(gridDim.x) * blockDim.x) {
    float v = load(i);
    if (!is_finite(v)) {
      if (i < bad) bad = i;
      continue;
    }
    // Comparisons as in the reference, so -0 never becomes an extreme.
    float av = fabsf(v);
    if (av > a) a = av;
    if (v < l) l = v;
    if (v > h) h = v;
  }
  for (int o = 16; o > 0; o >>= 1) {
    a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
    l = fminf(l, __shfl_xor_sync(0xffffffffu, l, o));
    h = fmaxf(h, __shfl_xor_sync(0xffffffffu, h, o));
    unsigned long long b2 = __shfl_xor_sync(0xffffffffu, bad, o);
    bad = b2 < bad ? b2 : bad;
  }
  if ((threadIdx.x & 31) == 0) {
    atomicMax(&st->amax, __float_as_uint(a));
    atomicMax(&st->neg_lo, __float_as_uint(0.0f - l));  // +0, not -0, when l = 0
    atomicMax(&st->hi, __float_as_uint(h));
    if (bad != ~0ull) atomicMin(&st->bad, bad);
  }
}

__global__ void init_stats_kernel(Stats *st) {
  st->bad = ~0ull;
  st->amax = st->neg_lo = st->hi = st->pad = 0;
}

constexpr int kStatThreads = 256;
constexpr int kStatUnroll = 4;

// Whole-tensor statistics over 8-element chunks (16-byte loads), grid-stride with kStatUnroll
// loads in flight per thread, one atomic per block and statistic. kLoHi: also min/max (the
// tensor-wide group's rules); the tensor amax needs only max |x|. Launched dependent on the
// initialisation of st, and lets the quantize pass start as its blocks retire.
template <bool kBf16, bool kLoHi>
__global__ void __launch_bounds__(kStatThreads)
    vec_stats_kernel(const void *x, uint64_t chunks, Stats *st) {
  pdl_launch_dependents();
  uint32_t mag = 0;
  float l = 0.0f, h = 0.0f;
  unsigned long long bad = ~0ull;
  const uint64_t stride = uint64_t(gridDim.x) * kStatThreads;
  for (uint64_t c0 = blockIdx.x * uint64_t(kStatThreads) + threadIdx.x; c0 < chunks;
       c0 += stride * kStatUnroll) {
    float v[kStatUnroll][8];
#pragma unroll
    for (int k = 0; k < kStatUnroll; k++) {
      const uint64_t c = c0 + k * stride;
      if (c < chunks) {
        load_chunk8<kBf16>(x, c, v[k]);
      } else {
#pragma unroll
        for (int i = 0; i < 8; i++) v[k][i] = 0.0f;
      }
    }
#pragma unroll
    for (int k = 0; k < kStatUnroll; k++) {
      uint32_t m = magnitude_bits8(v[k]);
      if (m >= 0x7f800000u) {  // rare: note the first bad index, keep the finite values
        m = 0;
        for (int i = 0; i < 8; i++) {
          if (is_finite(v[k][i])) {
            m = max(m, __float_as_uint(v[k][i]) & 0x7fffffffu);
          } else {
            bad = min(bad, (unsigned long long)((c0 + k * stride) * 8 + i));
            v[k][i] = 0.0f;
          }
        }
      }
      mag = max(mag, m);
      if (kLoHi) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
          if (v[k][i] < l) l = v[k][i];
          if (v[k][i] > h) h = v[k][i];
        }
      }
    }
  }
  __shared__ uint32_t s_mag[kStatThreads / 32], s_lo[kStatThreads / 32], s_hi[kStatThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    mag = max(mag, __shfl_xor_sync(0xffffffffu, mag, o));
    if (kLoHi) {
      l = fminf(l, __shfl_xor_sync(0xffffffffu, l, o));
      h = fmaxf(h, __shfl_xor_sync(0xffffffffu, h, o));
    }
    bad = min(bad, __shfl_xor_sync(0xffffffffu, bad, o));
  }
  const int warp = threadIdx.x >> 5;
  pdl_wait();
  if ((threadIdx.x & 31) == 0) {
    s_mag[warp] = mag;
    s_lo[warp] = __float_as_uint(0.0f - l);  // +0, not -0, when l = 0
    s_hi[warp] = __float_as_uint(h);
    if (bad != ~0ull) atomicMin(&st->bad, bad);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t a = 0, nl = 0, hh = 0;
    for (int w = 0; w < kStatThreads / 32; w++) {
      a = max(a, s_mag[w]);
      nl = max(nl, s_lo[w]);  // bits of non-negative floats (-l >= 0 is +0 or positive)
      hh = max(hh, s_hi[w]);
    }
    atomicMax(&st->amax, a);
    if (kLoHi) {
      atomicMax(&st->neg_lo, nl);
      atomicMax(&st->hi, hh);
    }
  }
}

constexpr int kVecThreads = 256;
constexpr int kVecUnroll = 2;  // chunks per thread, all loaded before the first is used (4: more
                               // registers, fewer warps; slower on the H100)

// The coalesced quantizer (header comment). Chunk c = block * 256 kUnroll + k * 256 + thread;
// the `lanes` = len / 8 chunks of a group are consecutive lanes of one warp. The tensor scale,
// when there is one, comes from the statistics pass (amax) or the rule's constant; block 0
// writes it out. kFast: E2M1 with nearest rounding (quantize_fast.cuh; kScale picks the scale
// rule's inlined form), else quantize_element. Launched dependent on the kernel before it:
// the loads of x start at once, everything after them waits for that kernel.
template <bool kBf16, bool kFast, int kScale, int kUnroll>
__global__ void __launch_bounds__(kVecThreads)
    vec_group_kernel(QuantParams q, const void *x, uint64_t chunks, int lanes, uint8_t *codes,
                     uint8_t *scales, uint8_t *zeros, Stats *st, float *tensor_scale,
                     bool reverse) {
  const uint64_t blk = reverse ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const uint64_t c0 = blk * (kVecThreads * kUnroll) + threadIdx.x;
  float v[kUnroll][8];
#pragma unroll
  for (int k = 0; k < kUnroll; k++) {
    const uint64_t c = c0 + k * kVecThreads;
    if (c < chunks) {
      load_chunk8<kBf16>(x, c, v[k]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) v[k][i] = 0.0f;
    }
  }
  pdl_wait();
  if (q.tensor_amax) q.s_t = tensor_scale_of(q, __uint_as_float(st->amax));
  if (q.has_st && blockIdx.x == 0 && threadIdx.x == 0) *tensor_scale = q.s_t;
  const bool first = (threadIdx.x & (lanes - 1)) == 0;
#pragma unroll
  for (int k = 0; k < kUnroll; k++) {
    const uint64_t c = c0 + k * kVecThreads;
    const uint32_t own = magnitude_bits8(v[k]);
    uint32_t mag = own;
    float lo = 0.0f, hi = 0.0f;
    if (!kFast) {
#pragma unroll
      for (int i = 0; i < 8; i++) {
        if (v[k][i] < lo) lo = v[k][i];
        if (v[k][i] > hi) hi = v[k][i];
      }
    }
    for (int o = 1; o < lanes; o <<= 1) {
      mag = max(mag, __shfl_xor_sync(0xffffffffu, mag, o));
      if (!kFast) {
        const float l2 = __shfl_xor_sync(0xffffffffu, lo, o);
        const float h2 = __shfl_xor_sync(0xffffffffu, hi, o);
        if (l2 < lo) lo = l2;
        if (h2 > hi) hi = h2;
      }
    }
    if (c >= chunks) continue;
    if (mag >= 0x7f800000u) {  // the group holds a non-finite value: report, write nothing
      if (own >= 0x7f800000u) {
        for (int i = 0; i < 8; i++) {
          if (!is_finite(v[k][i])) {
            atomicMin(&st->bad, (unsigned long long)(c * 8 + i));
            break;
          }
        }
      }
      continue;
    }
    const float amax = __uint_as_float(mag);
    const GroupScale gs = kFast ? fast_scale<kScale>(q, amax) : scale_for(q, amax, lo, hi, 1.0f);
    if (first) {
      const uint64_t g = c / uint64_t(lanes);
      store_scale(scales, g, gs.bits, q.scale_nbytes);
      if (zeros) zeros[g] = uint8_t(gs.z);
    }
    if (kFast) {
      reinterpret_cast<uint32_t *>(codes)[c] = encode8(gs.S, amax, v[k]);
    } else if (q.code_bits == 4) {
      uint32_t word = 0;
#pragma unroll
      for (int i = 0; i < 8; i++) {
        word |= (quantize_element(q, gs, v[k][i], c * 8 + i, q.stochastic) & 0xfu) << (4 * i);
      }
      reinterpret_cast<uint32_t *>(codes)[c] = word;
    } else {
      uint32_t w[2] = {0, 0};
#pragma unroll
      for (int i = 0; i < 8; i++) {
        w[i >> 2] |= (quantize_element(q, gs, v[k][i], c * 8 + i, q.stochastic) & 0xffu)
                     << (8 * (i & 3));
      }
      reinterpret_cast<uint2 *>(codes)[c] = make_uint2(w[0], w[1]);
    }
  }
}

// ---- The tiled path (header comment) ----

// Per-CTA max |x| bits of the whole tensor into part[blockIdx.x] (bf16: over packed pairs).
// The first kernel of a call: launched after everything before it, it lets the quantize
// kernel start at once (that kernel waits before reading part).
template <bool kBf16>
__global__ void __launch_bounds__(kTileThreads, kCtasPerSm)
    tile_amax_kernel(const void *x, uint64_t n, uint32_t *part) {
  pdl_launch_dependents();
  constexpr uint32_t kEB = kBf16 ? 2 : 4;
  extern __shared__ __align__(128) uint8_t ring[];
  __shared__ uint64_t full[kStages];
  __shared__ uint32_t red[kTileThreads / 32];
  TileWalk walk(x, n * kEB, kEB, false, ring, full);
  if (threadIdx.x == 0) walk.start();
  __syncthreads();
  uint32_t m = 0;  // bf16: two 16-bit lanes of magnitude bits; f32: magnitude bits
  for (uint32_t i = 0; i < walk.count; i++) {
    const uint8_t *seg = walk.wait(i);
    if (walk.first(i) < n) {
      const uint4 *p = reinterpret_cast<const uint4 *>(seg);
#pragma unroll
      for (int c = 0; c < kSeg * int(kEB) / 16; c++) {
        const uint4 q = p[c];
        if constexpr (kBf16) {
          m = max_u16x2(m, q.x & 0x7fff7fffu);
          m = max_u16x2(m, q.y & 0x7fff7fffu);
          m = max_u16x2(m, q.z & 0x7fff7fffu);
          m = max_u16x2(m, q.w & 0x7fff7fffu);
        } else {
          m = max(m, max(max(q.x & 0x7fffffffu, q.y & 0x7fffffffu),
                         max(q.z & 0x7fffffffu, q.w & 0x7fffffffu)));
        }
      }
    }
    walk.release(i);
  }
  if (kBf16) m = max(m >> 16, m & 0xffffu) << 16;
  m = block_max(m, red);
  if (threadIdx.x == 0) part[blockIdx.x] = m;
}

// Codes and scales of groups of kLen (16 or 32) elements, E2M1 nearest; kScale as in
// vec_group_kernel. The tensor scale, when there is one, from the amax partials (or the rule's
// constant); block 0 writes it out. bad[blockIdx.x]: the first non-finite index seen.
template <bool kBf16, int kLen, int kScale>
__global__ void __launch_bounds__(kTileThreads, kCtasPerSm)
    tile_quantize_kernel(QuantParams q, const void *x, uint64_t n, uint8_t *codes,
                         uint8_t *scales, const uint32_t *amax_part, int parts,
                         float *tensor_scale, unsigned long long *bad, bool reverse) {
  constexpr uint32_t kEB = kBf16 ? 2 : 4;
  constexpr int kGroups = kSeg / kLen;
  extern __shared__ __align__(128) uint8_t ring[];
  __shared__ uint64_t full[kStages];
  __shared__ uint32_t red[kTileThreads / 32];
  __shared__ unsigned long long first_bad;
  TileWalk walk(x, n * kEB, kEB, reverse, ring, full);
  if (threadIdx.x == 0) {
    walk.start();
    first_bad = ~0ull;
  }
  __syncthreads();
  pdl_wait();
  if (q.tensor_amax) q.s_t = tensor_scale_from(q, amax_part, parts, red);
  if (q.has_st && blockIdx.x == 0 && threadIdx.x == 0) *tensor_scale = q.s_t;
  const NvTable *nv = nullptr;
  if constexpr (kScale == kScaleNv) {
    __shared__ NvTable table;
    nv_table_init(q, table);
    __syncthreads();
    nv = &table;
  }
  for (uint32_t i = 0; i < walk.count; i++) {
    const uint8_t *seg = walk.wait(i);
    const uint64_t e0 = walk.first(i);
    const bool live = e0 < n;
    float v[kSeg];
    uint32_t mag[kGroups];
    if (live) load_seg<kBf16, kLen>(seg, v, mag);
    walk.release(i);
    if (!live) continue;
    uint32_t word[kSeg / 8];
#pragma unroll
    for (int g = 0; g < kGroups; g++) {
      const uint64_t g0 = e0 + g * kLen;
      if (mag[g] >= 0x7f800000u) {  // a non-finite group: note it, the call fails
        for (int r = 0; r < kLen; r++) {
          if (!is_finite(v[g * kLen + r])) {
            atomicMin(&first_bad, (unsigned long long)(g0 + r));
            break;
          }
        }
#pragma unroll
        for (int c = 0; c < kLen / 8; c++) word[g * kLen / 8 + c] = 0;
        continue;
      }
      const float amax = __uint_as_float(mag[g]);
      uint32_t bits;
      const GroupDivider div = group_divider<kScale>(q, nv, amax, &bits);
      store_scale(scales, g0 / kLen, bits, kScale == kScaleGeneric ? q.scale_nbytes : 1);
      if (div.S == 0.0f) {  // every code +0
#pragma unroll
        for (int c = 0; c < kLen / 8; c++) word[g * kLen / 8 + c] = 0;
      } else {
        encode_run<kLen / 8, true>(div, v + g * kLen, word + g * kLen / 8);
      }
    }
    reinterpret_cast<uint4 *>(codes)[e0 / kSeg] = make_uint4(word[0], word[1], word[2], word[3]);
  }
  __syncthreads();
  if (threadIdx.x == 0) bad[blockIdx.x] = first_bad;
}

template <class Load>
struct Offset {
  Load load;
  uint64_t base;
  __device__ float operator()(uint64_t i) const { return load(base + i); }
};

// One thread per group: scale (plain or MSE), then either its packed codes (fused) or its S and
// zero point for phase B.
template <class Load, bool kFused>
__global__ void group_kernel(QuantParams q, Load load, Layout l, uint8_t *codes, uint8_t *scales,
                             uint8_t *zeros, float *S_out, int *z_out, Stats *st,
                             const float *s_t) {
  const uint64_t g = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x;
  if (g >= l.groups) return;
  if (s_t) q.s_t = *s_t;
  const uint64_t start = g * l.len;
  for (uint64_t i = 0; i < l.len; i++) {
    if (!is_finite(load(start + i))) {
      atomicMin(&st->bad, (unsigned long long)(start + i));
      return;
    }
  }
  Offset<Load> group{load, start};
  GroupScale gs = choose_scale(q, group, l.len);
  store_scale(scales, g, gs.bits, q.scale_nbytes);
  if (zeros) zeros[g] = uint8_t(gs.z);
  if (!kFused) {
    S_out[g] = gs.S;
    z_out[g] = gs.z;
    return;
  }
  const bool sr = q.stochastic;
  if (q.code_bits == 4) {
    for (uint64_t i = 0; i < l.len; i += 2) {
      uint32_t lo = quantize_element(q, gs, load(start + i), start + i, sr) & 0xfu;
      uint32_t hi = quantize_element(q, gs, load(start + i + 1), start + i + 1, sr) & 0xfu;
      codes[(start + i) >> 1] = uint8_t(lo | (hi << 4));
    }
  } else {
    for (uint64_t i = 0; i < l.len; i++) {
      codes[start + i] = uint8_t(quantize_element(q, gs, load(start + i), start + i, sr));
    }
  }
}

// The single group of a tensor-wide layout, from the reduced statistics.
__global__ void tensor_group_kernel(QuantParams q, const Stats *st, const float *s_t,
                                    uint8_t *scales, uint8_t *zeros, float *S_out, int *z_out) {
  if (s_t) q.s_t = *s_t;
  GroupScale gs = scale_for(q, __uint_as_float(st->amax), -__uint_as_float(st->neg_lo),
                            __uint_as_float(st->hi), 1.0f);
  store_scale(scales, 0, gs.bits, q.scale_nbytes);
  if (zeros) zeros[0] = uint8_t(gs.z);
  S_out[0] = gs.S;
  z_out[0] = gs.z;
}

// Phase B: one thread per code byte.
template <class Load>
__global__ void element_kernel(QuantParams q, Load load, Layout l, const float *S, const int *Z,
                               uint8_t *codes) {
  const uint64_t nb = code_bytes(q.code_bits, l.n);
  const bool sr = q.stochastic;
  for (uint64_t j = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; j < nb;
       j += uint64_t(gridDim.x) * blockDim.x) {
    if (q.code_bits == 4) {
      uint64_t i = 2 * j;
      GroupScale g0{0, S[i / l.len], Z[i / l.len]};
      uint32_t lo = quantize_element(q, g0, load(i), i, sr) & 0xfu;
      uint32_t hi = 0;
      if (i + 1 < l.n) {
        GroupScale g1{0, S[(i + 1) / l.len], Z[(i + 1) / l.len]};
        hi = quantize_element(q, g1, load(i + 1), i + 1, sr) & 0xfu;
      }
      codes[j] = uint8_t(lo | (hi << 4));
    } else {
      GroupScale g0{0, S[j / l.len], Z[j / l.len]};
      codes[j] = uint8_t(quantize_element(q, g0, load(j), j, sr));
    }
  }
}

template <class Store>
__global__ void dequantize_kernel(QuantParams q, Layout l, const uint8_t *codes,
                                  const uint8_t *scales, const uint8_t *zeros,
                                  const float *tensor_scale, Store store) {
  if (q.has_st) q.s_t = *tensor_scale;
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < l.n;
       i += uint64_t(gridDim.x) * blockDim.x) {
    const uint64_t g = i / l.len;
    const float S = effective_scale(q, load_scale(scales, g, q.scale_nbytes));
    const int z = zeros ? zeros[g] : 0;
    uint32_t bits = q.code_bits == 4 ? (codes[i >> 1] >> ((i & 1) * 4)) & 0xfu : codes[i];
    store(i, dequantize_element(q, S, z, bits));
  }
}

struct StoreF32 {
  float *p;
  __device__ void operator()(uint64_t i, float v) const { p[i] = v; }
};

struct StoreBf16 {
  uint16_t *p;
  __device__ void operator()(uint64_t i, float v) const { p[i] = f32_to_bf16(v); }
};

unsigned grid_for(uint64_t work, unsigned threads) {
  uint64_t b = (work + threads - 1) / threads;
  return unsigned(b < 65535ull * 16 ? (b ? b : 1) : 65535ull * 16);
}

// Device scratch that frees itself, stream-ordered (no device-wide synchronization).
struct Scratch {
  void *p = nullptr;
  ~Scratch() {
    if (p) cudaFreeAsync(p, 0);
  }
};

const char *js_number(float v, char *buf, size_t cap) {
  if (v != v) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  snprintf(buf, cap, "%.9g", double(v));
  return buf;
}

QuantParams params_of(const fp4_quant_spec &s) {
  return make_params(s.element, s.scale_format, s.scale_rule, s.tensor_scale,
                     s.tensor_scale_value, s.rounding, s.mse_candidates, s.mse_min_shrink,
                     s.mse_norm, s.seed);
}

// The host-side tensor-wide MSE search: copies x back and runs the shared template in order.
template <class Load>
GroupScale host_tensor_scale(const QuantParams &q, const void *x, int32_t dtype, uint64_t n,
                             fp4_status &status) {
  status = FP4_OK;
  const size_t bytes = n * (dtype == FP4_DTYPE_BF16 ? 2 : 4);
  std::vector<uint8_t> h(bytes);
  cudaError_t e = cudaMemcpy(h.data(), x, bytes, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) {
    cudaGetLastError();
    status = fail(FP4_ERR_CUDA, "copying the tensor for its MSE scale search failed: %s",
                  cudaGetErrorString(e));
    return GroupScale{0, 0.0f, 0};
  }
  if (dtype == FP4_DTYPE_BF16) {
    return choose_scale(q, LoadBf16{reinterpret_cast<const uint16_t *>(h.data())}, n);
  }
  return choose_scale(q, LoadF32{reinterpret_cast<const float *>(h.data())}, n);
}

// Writes the tensor scale s_t (amax rule from the reduced statistics, or the mr-gptq constant).
__global__ void tensor_scale_kernel(QuantParams q, const Stats *st, float *tensor_scale) {
  *tensor_scale = q.tensor_amax ? tensor_scale_of(q, __uint_as_float(st->amax)) : q.s_t;
}

// Statistics of the whole tensor into st (initialised): 16-byte loads when x allows them.
template <class Load>
fp4_status launch_stats(Load load, const void *x, bool bf16, uint64_t n, bool lohi, Stats *st) {
  const uint64_t chunks = n / 8;
  if (n % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    auto kernel = bf16 ? (lohi ? vec_stats_kernel<true, true> : vec_stats_kernel<true, false>)
                       : (lohi ? vec_stats_kernel<false, true> : vec_stats_kernel<false, false>);
    // One resident wave: the grid-stride loop then ends for every block at once.
    int dev = 0, sms = 0, per_sm = 0;
    FP4_CU(cudaGetDevice(&dev));
    FP4_CU(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    FP4_CU(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kStatThreads, 0));
    const uint64_t wave = uint64_t(sms) * uint64_t(per_sm > 0 ? per_sm : 1);
    const uint64_t want = (chunks + kStatThreads * kStatUnroll - 1) / (kStatThreads * kStatUnroll);
    const unsigned grid = unsigned(want < wave ? (want ? want : 1) : wave);
    FP4_CU(launch_pdl(kernel, grid, kStatThreads, x, chunks, st));
  } else {
    const unsigned grid = grid_for(n, 256);
    stats_kernel<<<grid > 4096 ? 4096 : grid, 256>>>(load, n, st);
  }
  FP4_CU_LAUNCH();
  return FP4_OK;
}

// The scale rule's inlined form for the fast E2M1 path (quantize_fast.cuh).
int fast_scale_kind(const QuantParams &q) {
  if (q.scale_fmt == SCALE_E8M0 && q.rule == RULE_OCP && !q.has_st) return kScaleMx;
  if (q.scale_fmt == SCALE_E4M3 && q.rule == RULE_ABSMAX) return kScaleNv;
  return kScaleGeneric;
}

template <bool kBf16, int kUnroll = kVecUnroll>
cudaError_t launch_vec(const QuantParams &q, const void *x, const Layout &l, uint8_t *codes,
                       uint8_t *scales, uint8_t *zeros, Stats *st, float *tensor_scale) {
  const uint64_t chunks = l.n / 8;
  const uint64_t per = kVecThreads * kUnroll;
  const unsigned grid = unsigned((chunks + per - 1) / per);
  const int lanes = int(l.len / 8);
  const bool rev = q.tensor_amax != 0;
  const bool fast = q.elem == CODEC_E2M1 && !q.stochastic && q.rule != RULE_MINMAX;
  auto go = [&](auto kernel) {
    return launch_pdl(kernel, grid, kVecThreads, q, x, chunks, lanes, codes, scales, zeros, st,
                      tensor_scale, rev);
  };
  if (!fast) return go(vec_group_kernel<kBf16, false, kScaleGeneric, kUnroll>);
  switch (fast_scale_kind(q)) {
    case kScaleMx: return go(vec_group_kernel<kBf16, true, kScaleMx, kUnroll>);
    case kScaleNv: return go(vec_group_kernel<kBf16, true, kScaleNv, kUnroll>);
    default: return go(vec_group_kernel<kBf16, true, kScaleGeneric, kUnroll>);
  }
}

// The tiled path's launches ([amax partials,] codes and scales); *parts: the quantize grid,
// whose bad-index partials the caller reads.
template <bool kBf16, int kLen, int kScale>
cudaError_t launch_tiled_as(const QuantParams &q, const void *x, uint64_t n, uint8_t *codes,
                            uint8_t *scales, float *tensor_scale, const Workspace &ws,
                            int *parts) {
  constexpr auto kAmax = tile_amax_kernel<kBf16>;
  constexpr auto kQuant = tile_quantize_kernel<kBf16, kLen, kScale>;
  if (cudaError_t e = allow_tile_smem<kAmax>()) return e;
  if (cudaError_t e = allow_tile_smem<kQuant>()) return e;
  const TilePlan plan = tile_plan(ws, n, kBf16);
  int amax_parts = 0;
  if (q.tensor_amax) {
    amax_parts = int(plan.grid);
    if (cudaError_t e = launch_ex(kAmax, plan.grid, kTileThreads, plan.smem, false, x, n,
                                  ws.amax)) {
      return e;
    }
  }
  *parts = int(plan.grid);
  return launch_ex(kQuant, plan.grid, kTileThreads, plan.smem, q.tensor_amax != 0, q, x, n,
                   codes, scales, static_cast<const uint32_t *>(ws.amax), amax_parts,
                   tensor_scale, ws.bad, q.tensor_amax != 0);
}

template <bool kBf16>
cudaError_t launch_tiled(const QuantParams &q, uint64_t len, const void *x, uint64_t n,
                         uint8_t *codes, uint8_t *scales, float *tensor_scale,
                         const Workspace &ws, int *parts) {
  auto go = [&](auto len_c, auto scale_c) {
    return launch_tiled_as<kBf16, decltype(len_c)::value, decltype(scale_c)::value>(
        q, x, n, codes, scales, tensor_scale, ws, parts);
  };
  using L16 = std::integral_constant<int, 16>;
  using L32 = std::integral_constant<int, 32>;
  using Mx = std::integral_constant<int, kScaleMx>;
  using Nv = std::integral_constant<int, kScaleNv>;
  using Gen = std::integral_constant<int, kScaleGeneric>;
  const int kind = fast_scale_kind(q);
  if (len == 16) {
    return kind == kScaleMx ? go(L16{}, Mx{}) : kind == kScaleNv ? go(L16{}, Nv{}) : go(L16{}, Gen{});
  }
  return kind == kScaleMx ? go(L32{}, Mx{}) : kind == kScaleNv ? go(L32{}, Nv{}) : go(L32{}, Gen{});
}

template <class Load>
fp4_status quantize_with(const fp4_quant_spec &spec, Load load, int32_t dtype, const void *x,
                         uint64_t rows, uint64_t cols, uint8_t *codes, uint8_t *scales,
                         uint8_t *zeros, float *tensor_scale, bool check) {
  const Layout l = make_layout(spec.group_size, rows, cols);
  QuantParams q = params_of(spec);
  const bool tensor_group = spec.group_size == FP4_GROUP_TENSOR;
  const bool fused = !tensor_group && (q.code_bits != 4 || (l.len % 2) == 0);
  const bool need_stats = q.tensor_amax || tensor_group;
  const uint64_t lanes = l.len / 8;
  const bool vec = fused && q.mse_k == 0 && l.len % 8 == 0 && lanes <= 32 &&
                   (lanes & (lanes - 1)) == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(codes) % (q.code_bits == 4 ? 4 : 8) == 0;
  const bool tiled = vec && q.elem == CODEC_E2M1 && !q.stochastic && q.rule != RULE_MINMAX &&
                     (l.len == 16 || l.len == 32) && l.n % kSeg == 0 && zeros == nullptr &&
                     reinterpret_cast<uintptr_t>(codes) % 16 == 0;
  Workspace *ws;
  if (fp4_status s = workspace(&ws)) return s;
  std::lock_guard<std::recursive_mutex> hold(ws->lock);
  if (tiled) {
    int parts = 0;
    FP4_CU(dtype == FP4_DTYPE_BF16
               ? launch_tiled<true>(q, l.len, x, l.n, codes, scales, tensor_scale, *ws, &parts)
               : launch_tiled<false>(q, l.len, x, l.n, codes, scales, tensor_scale, *ws, &parts));
    if (!check) return FP4_OK;
    unsigned long long bad;
    if (fp4_status s = first_bad(*ws, parts, &bad)) return s;
    return bad == ~0ull ? FP4_OK : report_bad(x, dtype, bad, cols);
  }
  Scratch sz_mem;
  Stats *st = ws->st;
  init_stats_kernel<<<1, 1>>>(st);
  FP4_CU_LAUNCH();
  if (need_stats) {
    if (fp4_status s = launch_stats(load, x, dtype == FP4_DTYPE_BF16, l.n, tensor_group, st)) {
      return s;
    }
  }
  if (vec) {
    // The kernel derives the tensor scale itself and writes it out.
    FP4_CU(dtype == FP4_DTYPE_BF16 ? launch_vec<true>(q, x, l, codes, scales, zeros, st, tensor_scale)
                                   : launch_vec<false>(q, x, l, codes, scales, zeros, st, tensor_scale));
  } else {
    // Kernels read s_t from device memory, so nothing here waits for the statistics.
    const float *st_dev = q.has_st ? tensor_scale : nullptr;
    if (q.has_st) {
      tensor_scale_kernel<<<1, 1>>>(q, st, tensor_scale);
      FP4_CU_LAUNCH();
    }
    if (fused) {
      group_kernel<Load, true><<<grid_for(l.groups, 128), 128>>>(q, load, l, codes, scales, zeros,
                                                                nullptr, nullptr, st, st_dev);
      FP4_CU_LAUNCH();
    } else {
      FP4_CU(cudaMallocAsync(&sz_mem.p, l.groups * (sizeof(float) + sizeof(int)), 0));
      float *S = static_cast<float *>(sz_mem.p);
      int *Z = reinterpret_cast<int *>(S + l.groups);
      if (tensor_group && q.mse_k > 0) {
        if (q.has_st) FP4_CU(cudaMemcpy(&q.s_t, tensor_scale, sizeof(float), cudaMemcpyDeviceToHost));
        fp4_status s;
        GroupScale gs = host_tensor_scale<Load>(q, x, dtype, l.n, s);
        if (s) return s;
        uint8_t sb[4];
        store_scale(sb, 0, gs.bits, q.scale_nbytes);
        FP4_CU(cudaMemcpy(scales, sb, size_t(q.scale_nbytes), cudaMemcpyHostToDevice));
        if (zeros) {
          uint8_t zb = uint8_t(gs.z);
          FP4_CU(cudaMemcpy(zeros, &zb, 1, cudaMemcpyHostToDevice));
        }
        FP4_CU(cudaMemcpy(S, &gs.S, sizeof(float), cudaMemcpyHostToDevice));
        FP4_CU(cudaMemcpy(Z, &gs.z, sizeof(int), cudaMemcpyHostToDevice));
      } else if (tensor_group) {
        tensor_group_kernel<<<1, 1>>>(q, st, st_dev, scales, zeros, S, Z);
        FP4_CU_LAUNCH();
      } else {
        group_kernel<Load, false><<<grid_for(l.groups, 128), 128>>>(q, load, l, codes, scales,
                                                                   zeros, S, Z, st, st_dev);
        FP4_CU_LAUNCH();
      }
      element_kernel<<<grid_for(code_bytes(q.code_bits, l.n), 256), 256>>>(q, load, l, S, Z,
                                                                            codes);
      FP4_CU_LAUNCH();
    }
  }
  if (check) {
    unsigned long long bad;
    FP4_CU(cudaMemcpy(&bad, &st->bad, sizeof bad, cudaMemcpyDeviceToHost));
    if (bad != ~0ull) return report_bad(x, dtype, bad, cols);
  }
  return FP4_OK;
}

}  // namespace

fp4_status report_bad(const void *x, int32_t dtype, uint64_t index, uint64_t cols) {
  float v;
  if (dtype == FP4_DTYPE_BF16) {
    uint16_t b;
    FP4_CU(cudaMemcpy(&b, static_cast<const uint16_t *>(x) + index, 2, cudaMemcpyDeviceToHost));
    v = bf16_to_f32(b);
  } else {
    FP4_CU(cudaMemcpy(&v, static_cast<const float *>(x) + index, 4, cudaMemcpyDeviceToHost));
  }
  char buf[32];
  return fail(FP4_ERR_NUMERIC, "non-finite value %s at (row %llu, col %llu)",
              js_number(v, buf, sizeof buf), (unsigned long long)(index / cols),
              (unsigned long long)(index % cols));
}

fp4_status workspace(Workspace **out) {
  constexpr int kDevices = 64;
  static Workspace spaces[kDevices];
  static std::mutex init;
  int dev = 0;
  FP4_CU(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kDevices) return fail(FP4_ERR_CUDA, "device %d has no workspace slot", dev);
  Workspace &ws = spaces[dev];
  std::lock_guard<std::mutex> hold(init);
  if (!ws.st) {
    int sms = 0;
    FP4_CU(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    const int slots = sms * kCtasPerSm;
    void *p = nullptr;
    FP4_CU(cudaMalloc(&p, sizeof(Stats) + size_t(slots) * (sizeof(unsigned long long) + 4)));
    ws.st = static_cast<Stats *>(p);
    ws.bad = reinterpret_cast<unsigned long long *>(ws.st + 1);
    ws.amax = reinterpret_cast<uint32_t *>(ws.bad + slots);
    ws.slots = slots;
    ws.sms = sms;
  }
  *out = &ws;
  return FP4_OK;
}

fp4_status first_bad(const Workspace &ws, int parts, unsigned long long *bad) {
  std::vector<unsigned long long> h(size_t(parts > 0 ? parts : 1), ~0ull);
  if (parts > 0) {
    FP4_CU(cudaMemcpy(h.data(), ws.bad, size_t(parts) * sizeof(unsigned long long),
                      cudaMemcpyDeviceToHost));
  }
  *bad = ~0ull;
  for (unsigned long long b : h) *bad = b < *bad ? b : *bad;
  return FP4_OK;
}

fp4_status quantize_unchecked(const fp4_quant_spec &spec, int32_t dtype, const void *x,
                              uint64_t rows, uint64_t cols, uint8_t *codes, uint8_t *scales,
                              uint8_t *zeros, float *tensor_scale, bool check) {
  if (dtype == FP4_DTYPE_BF16) {
    return quantize_with(spec, LoadBf16{static_cast<const uint16_t *>(x)}, dtype, x, rows, cols,
                         codes, scales, zeros, tensor_scale, check);
  }
  return quantize_with(spec, LoadF32{static_cast<const float *>(x)}, dtype, x, rows, cols, codes,
                       scales, zeros, tensor_scale, check);
}

fp4_status encode(int32_t codec, const float *x, uint64_t n, const uint32_t *random,
                  uint8_t *codes) {
  encode_kernel<<<grid_for(n, 256), 256>>>(codec, x, n, random, codes);
  FP4_CU_LAUNCH();
  FP4_CU(sync_library());
  return FP4_OK;
}

fp4_status decode(int32_t codec, const uint8_t *codes, uint64_t n, float *out) {
  decode_kernel<<<grid_for(n, 256), 256>>>(codec, codes, n, out);
  FP4_CU_LAUNCH();
  FP4_CU(sync_library());
  return FP4_OK;
}

fp4_status quantize(const fp4_quant_spec &spec, int32_t dtype, const void *x, uint64_t rows,
                    uint64_t cols, uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                    float *tensor_scale) {
  return quantize_unchecked(spec, dtype, x, rows, cols, codes, scales, zeros, tensor_scale, true);
}

fp4_status dequantize_async(const fp4_quant_spec &spec, const uint8_t *codes,
                            const uint8_t *scales, const uint8_t *zeros,
                            const float *tensor_scale, uint64_t rows, uint64_t cols,
                            int32_t out_dtype, void *out) {
  const Layout l = make_layout(spec.group_size, rows, cols);
  const QuantParams q = params_of(spec);
  if (out_dtype == FP4_DTYPE_BF16) {
    dequantize_kernel<<<grid_for(l.n, 256), 256>>>(q, l, codes, scales, zeros, tensor_scale,
                                                   StoreBf16{static_cast<uint16_t *>(out)});
  } else {
    dequantize_kernel<<<grid_for(l.n, 256), 256>>>(q, l, codes, scales, zeros, tensor_scale,
                                                   StoreF32{static_cast<float *>(out)});
  }
  FP4_CU_LAUNCH();
  return FP4_OK;
}

fp4_status dequantize(const fp4_quant_spec &spec, const uint8_t *codes, const uint8_t *scales,
                      const uint8_t *zeros, const float *tensor_scale, uint64_t rows,
                      uint64_t cols, int32_t out_dtype, void *out) {
  if (fp4_status s = dequantize_async(spec, codes, scales, zeros, tensor_scale, rows, cols,
                                      out_dtype, out))
    return s;
  FP4_CU(sync_library());
  return FP4_OK;
}

}  // namespace fp4::cuda
