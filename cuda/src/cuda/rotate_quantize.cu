// Fused block-Hadamard rotation + group quantization of activations (CUDA), equal bit for bit
// to quantize(hadamard(x)) of lib/formats (and to the CPU twin, which runs exactly that).
//
// Layout: x [rows, cols] bf16 or f32; Hadamard blocks of b = 32·E elements (E = 1..32) along
// rows; groups of `len` elements inside a block, len a multiple of E. One warp per Hadamard
// block: lane L holds elements L·E .. L·E+E-1 in registers; butterfly stages h < E run inside
// the lane, stages h >= E exchange with lane L ^ (h/E) by shuffles, each output the same single
// float32 add or subtract as the reference. Then the group's amax/min/max are reduced over its
// len/E lanes, every lane of the group derives the same scale, encodes its E elements and
// writes its E/2 (4-bit) or E code bytes; the group's first lane writes the scale.
// Bytes moved: reads n input elements, writes n/2 (4-bit) or n code bytes plus n/len scales;
// with a tensor scale (NVFP4) the input is read twice (amax pass, then the quantize pass).
// Other shapes (b < 64 for 4-bit codes, groups not inside blocks, MSE, channel/tensor groups)
// rotate into a float32 scratch and quantize it.
//
// Fast path (b = 128, E2M1 with nearest rounding, groups of 16 or 32, tile_rotate_kernel):
// persistent kernels on the tile ring of quantize_fast.cuh; each thread holds 32 consecutive
// elements of a block (its 64 bytes of bf16 from shared memory), so the 4 lanes of a block run
// stages h < 32 in registers and only the last two stages by shuffles (one FMA per element and
// stage: v·(±1) + other is the reference's single add or subtract). Groups lie inside a thread,
// take the inlined scale rule (NVFP4: group_divider's table) and the exact encoder of
// quantize_fast.cuh, and each thread writes its 16 code bytes in one store. With a tensor amax a
// first kernel (tile_rotate_amax_kernel: two threads per block, one cross-lane stage) rotates and
// writes each CTA's max |y|; the quantize kernel reduces those and walks the tiles backwards to
// start on what the first left in L2. Bytes moved: 2 B per element read per kernel, 0.5 B of
// codes and 1/len B of scales written.
#include <cuda_runtime.h>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../formats.hpp"
#include "check.cuh"
#include "quantize_fast.cuh"

namespace fp4::cuda {

using namespace fp4::fmt;

namespace {

constexpr int kWarps = 8;  // warps per CTA of the generic kernel


// v[r] times the random sign of its element: sign points at the signs of the segment's first
// element, and register chunk c of 4 holds the segment's chunk c ^ swz4.
template <int N>
__device__ __forceinline__ void apply_signs(float (&v)[N], const float *sign, int swz4) {
  const float4 *sg = reinterpret_cast<const float4 *>(sign);
#pragma unroll
  for (int c = 0; c < N / 4; c++) {
    const float4 s4 = sg[c ^ swz4];
    v[4 * c] = v[4 * c] * s4.x;
    v[4 * c + 1] = v[4 * c + 1] * s4.y;
    v[4 * c + 2] = v[4 * c + 2] * s4.z;
    v[4 * c + 3] = v[4 * c + 3] * s4.w;
  }
}

// The butterfly stages h = 1 .. N/2 inside the registers, each output the reference's single
// float32 add or subtract.
template <int N>
__device__ __forceinline__ void butterfly(float (&v)[N]) {
#pragma unroll
  for (int h = 1; h < N; h <<= 1) {
#pragma unroll
    for (int j = 0; j < N; j++) {
      if ((j & h) == 0) {
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
}

template <int E, bool kBf16>
__device__ __forceinline__ void load_lane(const void *x, uint64_t base, float (&v)[E]) {
  if constexpr (kBf16 && E % 4 == 0) {
    const uint2 *p = reinterpret_cast<const uint2 *>(static_cast<const uint16_t *>(x) + base);
#pragma unroll
    for (int r = 0; r < E / 4; r++) {
      uint2 w = p[r];
      v[4 * r + 0] = __uint_as_float(w.x << 16);
      v[4 * r + 1] = __uint_as_float(w.x & 0xffff0000u);
      v[4 * r + 2] = __uint_as_float(w.y << 16);
      v[4 * r + 3] = __uint_as_float(w.y & 0xffff0000u);
    }
  } else if constexpr (kBf16) {
#pragma unroll
    for (int r = 0; r < E; r++) v[r] = bf16_to_f32(static_cast<const uint16_t *>(x)[base + r]);
  } else {
#pragma unroll
    for (int r = 0; r < E; r++) v[r] = static_cast<const float *>(x)[base + r];
  }
}

// kPass 0: amax of the rotated tensor (tensor scale); kPass 1: quantize.
template <int E, bool kBf16, int kPass>
__global__ void __launch_bounds__(32 * kWarps)
    rotate_quantize_kernel(QuantParams q, const void *x, uint64_t n, uint64_t cols, int k, int len,
                           const float *sign, const float *s_t, Stats *st, uint8_t *codes,
                           uint8_t *scales, uint8_t *zeros) {
  constexpr int B = 32 * E;
  const int lane = threadIdx.x & 31;
  const uint64_t warp = (blockIdx.x * uint64_t(blockDim.x) + threadIdx.x) >> 5;
  const uint64_t nwarps = (uint64_t(gridDim.x) * blockDim.x) >> 5;
  const float c = hadamard_norm(k);
  if (kPass == 1 && s_t) q.s_t = *s_t;
  const int L = len / E;  // lanes per group, a power of two dividing 32
  const bool sr = q.stochastic;
  float amax_run = 0.0f;
  for (uint64_t blk = warp; blk < n / B; blk += nwarps) {
    const uint64_t base = blk * B + uint64_t(lane) * E;
    float v[E];
    load_lane<E, kBf16>(x, base, v);
    if (sign) {
#pragma unroll
      for (int r = 0; r < E; r++) v[r] = v[r] * sign[(base + r) % cols];
    }
    butterfly(v);
#pragma unroll
    for (int h = E; h < B; h <<= 1) {
      const int m = h / E;
      const bool upper = (lane & m) != 0;
#pragma unroll
      for (int r = 0; r < E; r++) {
        const float other = __shfl_xor_sync(0xffffffffu, v[r], m);
        v[r] = upper ? other - v[r] : v[r] + other;
      }
    }
    unsigned long long bad = ~0ull;
#pragma unroll
    for (int r = 0; r < E; r++) {
      v[r] = v[r] * c;
      if (!is_finite(v[r]) && bad == ~0ull) bad = base + r;
    }
    if (bad != ~0ull) atomicMin(&st->bad, bad);
    if (kPass == 0) {
#pragma unroll
      for (int r = 0; r < E; r++) {
        const float a = fabsf(v[r]);
        if (a > amax_run) amax_run = a;
      }
      continue;
    }
    float a = 0.0f, lo = 0.0f, hi = 0.0f;
#pragma unroll
    for (int r = 0; r < E; r++) {
      const float av = fabsf(v[r]);
      if (av > a) a = av;
      if (v[r] < lo) lo = v[r];
      if (v[r] > hi) hi = v[r];
    }
    for (int o = 1; o < L; o <<= 1) {
      const float a2 = __shfl_xor_sync(0xffffffffu, a, o);
      const float l2 = __shfl_xor_sync(0xffffffffu, lo, o);
      const float h2 = __shfl_xor_sync(0xffffffffu, hi, o);
      if (a2 > a) a = a2;
      if (l2 < lo) lo = l2;
      if (h2 > hi) hi = h2;
    }
    const GroupScale gs = scale_for(q, a, lo, hi, 1.0f);
    if (lane % L == 0) {
      const uint64_t g = base / uint64_t(len);
      store_scale(scales, g, gs.bits, q.scale_nbytes);
      if (zeros) zeros[g] = uint8_t(gs.z);
    }
    if (q.code_bits == 4) {
#pragma unroll
      for (int r = 0; r < E; r += 2) {
        const uint32_t c0 = quantize_element(q, gs, v[r], base + r, sr) & 0xfu;
        const uint32_t c1 = quantize_element(q, gs, v[r + 1], base + r + 1, sr) & 0xfu;
        codes[(base + r) >> 1] = uint8_t(c0 | (c1 << 4));
      }
    } else {
#pragma unroll
      for (int r = 0; r < E; r++) codes[base + r] = uint8_t(quantize_element(q, gs, v[r], base + r, sr));
    }
  }
  if (kPass == 0) {
    for (int o = 16; o > 0; o >>= 1) {
      const float a2 = __shfl_xor_sync(0xffffffffu, amax_run, o);
      if (a2 > amax_run) amax_run = a2;
    }
    if (lane == 0) atomicMax(&st->amax, __float_as_uint(amax_run));
  }
}

// The amax pass of the fast path: per-CTA max |y| of the rotated tile ring into
// part[blockIdx.x] (the first kernel of a call, it lets the quantize pass start at once).
// kAmaxThreads threads per CTA, thread t owning elements 64t .. 64t + 63 of a tile, half a
// Hadamard block: the stages h < 64 run in registers, and the last one needs no signs, since
// for its pair (a, b) max(|RN(a + b)|, |RN(a - b)|) = RN(|a| + |b|) (one of the two has operands
// of one sign, the other is no larger; RN is monotone and odd). So each lane of a pair sends the
// half of its values that the other one finishes: 32 shuffles per 64 elements where the
// quantize pass's layout takes 128. Shared-memory reads without bank conflicts: thread t puts
// the 16-byte chunk c ^ (t & 7) of its segment in register chunk c (8 neighbouring threads, 128
// or 256 bytes apart, then read 8 distinct bank quads). That permutes the element index by an
// xor with s = (t & 7) * (elements per chunk), on bits the in-register stages own, and the
// butterfly run on the permuted registers still yields the reference's values up to sign: a stage
// on bit b pairs the reference's partners, makes a + b (addition commutes) and a - b or its
// negation b - a (where bit b of s is set), and leaves bit b of the permutation cleared, so after
// stage 32 the registers are in place and only signs differ, which neither |a| + |b| nor the
// maximum sees. max |y| = RN(max |v| · c) for the unnormalised v (rounding is monotone), so the
// maxima run on v. Non-finite values do not count (the quantize pass reports them, and a finite
// pair's RN(|a| + |b|) overflows exactly when one of its outputs does).
constexpr int kAmaxThreads = 128;
constexpr int kAmaxRun = kTileElems / kAmaxThreads;  // 64 elements per thread and tile

template <bool kBf16>
__global__ void __launch_bounds__(kAmaxThreads, kCtasPerSm)
    tile_rotate_amax_kernel(const void *x, uint64_t n, uint64_t cols, const float *sign,
                            uint32_t *part) {
  constexpr uint32_t kEB = kBf16 ? 2 : 4;
  extern __shared__ __align__(128) uint8_t ring[];
  __shared__ uint64_t full[kStages];
  __shared__ uint32_t red[kAmaxThreads / 32];
  TileWalk<kAmaxThreads> walk(x, n * kEB, kEB, false, ring, full);
  if (threadIdx.x == 0) walk.start();
  __syncthreads();
  const bool lower = (threadIdx.x & 1) == 0;
  constexpr int K = 16 / int(kEB);  // elements per 16-byte chunk
  const int swz = int(threadIdx.x & 7);  // chunk xor
  float run = 0.0f;
  for (uint32_t i = 0; i < walk.count; i++) {
    const uint8_t *seg = walk.wait(i);
    const uint64_t e0 = walk.first(i);
    const bool live = e0 < n;  // both lanes of a block are live or dead; dead ones add zeros
    float v[kAmaxRun];
    const uint4 *p = reinterpret_cast<const uint4 *>(seg);
#pragma unroll
    for (int c = 0; c < kAmaxRun / K; c++) {
      const uint4 q = live ? p[c ^ swz] : make_uint4(0, 0, 0, 0);
      const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int k = 0; k < 4; k++) {
        if constexpr (kBf16) {
          v[K * c + 2 * k] = __uint_as_float(w[k] << 16);
          v[K * c + 2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
        } else {
          v[K * c + k] = __uint_as_float(w[k]);
        }
      }
    }
    walk.release(i);
    if (live && sign) apply_signs(v, sign + e0 % cols, swz * K / 4);
    butterfly(v);
    constexpr int H = kAmaxRun / 2;
#pragma unroll
    for (int r = 0; r < H; r++) {
      const float keep = lower ? v[r] : v[r + H];
      const float other = __shfl_xor_sync(0xffffffffu, lower ? v[r + H] : v[r], 1);
      run = fmaxf(run, fabsf(keep) + fabsf(other));
    }
  }
  // The quantize pass may launch once this CTA's loads are done, not before: launched at the
  // start, the pair ran 14 µs slower on the H100 (bench/notes/formats.md, version 6).
  pdl_launch_dependents();
  const uint32_t m = block_max<kAmaxThreads>(__float_as_uint(run), red);
  if (threadIdx.x == 0) part[blockIdx.x] = __float_as_uint(__uint_as_float(m) * hadamard_norm(7));
}

// The quantize pass of the fast path (header comment) on the tile ring: thread t of a tile owns
// its elements 32t .. 32t + 31, a quarter of a Hadamard block; codes and scales, the tensor
// scale from tile_rotate_amax_kernel's partials when q.tensor_amax, bad[blockIdx.x] the first
// non-finite rotated index seen. The group maxima run on the unnormalised v as in the amax pass.
// MXFP4 folds the normalisation into the power-of-two quotient:
// RN(RN(v c) / 2^e) = RN(v · (c 2^-e)) while both products are normal, and a scale of at least
// 2^-120 makes any subnormal RN(v c) encode to +-0 either way.
template <bool kBf16, int kLen, int kScale>
__global__ void __launch_bounds__(kTileThreads, kCtasPerSm)
    tile_rotate_kernel(QuantParams q, const void *x, uint64_t n, uint64_t cols, const float *sign,
                       uint32_t *part, int parts, float *tensor_scale, uint8_t *codes,
                       uint8_t *scales, unsigned long long *bad, bool reverse) {
  constexpr uint32_t kEB = kBf16 ? 2 : 4;
  constexpr int P = 128 / kSeg;  // lanes per Hadamard block
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
  const int lane = threadIdx.x & 31;
  const float cn = hadamard_norm(7);
  const NvTable *nv = nullptr;
  pdl_wait();
  if (q.tensor_amax) q.s_t = tensor_scale_from(q, part, parts, red);
  if (q.has_st && blockIdx.x == 0 && threadIdx.x == 0) *tensor_scale = q.s_t;
  if constexpr (kScale == kScaleNv) {
    __shared__ NvTable table;
    nv_table_init(q, table);
    __syncthreads();
    nv = &table;
  }
  for (uint32_t i = 0; i < walk.count; i++) {
    const uint8_t *seg = walk.wait(i);
    const uint64_t e0 = walk.first(i);
    const bool live = e0 < n;  // whole Hadamard blocks: dead lanes still shuffle, with dead ones
    float v[kSeg];
    if (live) {
      load_seg<kBf16, 0>(seg, v, nullptr);
    } else {
#pragma unroll
      for (int r = 0; r < kSeg; r++) v[r] = 0.0f;
    }
    walk.release(i);
    if (live && sign) apply_signs(v, sign + e0 % cols, 0);
    butterfly(v);
#pragma unroll
    for (int m = 1; m < P; m <<= 1) {
      const float sg = (lane & m) ? -1.0f : 1.0f;
#pragma unroll
      for (int r = 0; r < kSeg; r++) v[r] = __fmaf_rn(v[r], sg, __shfl_xor_sync(0xffffffffu, v[r], m));
    }
    if (!live) continue;
    uint32_t word[kSeg / 8];
#pragma unroll
    for (int g = 0; g < kSeg / kLen; g++) {
      float *w = v + g * kLen;
      float m = 0.0f;
#pragma unroll
      for (int r = 0; r < kLen; r++) m = max_abs_nan(m, w[r]);
      const float amax = m * cn;
      if (!is_finite(amax)) {  // a non-finite group: note its first bad element, the call fails
        for (int r = 0; r < kLen; r++) {
          if (!is_finite(w[r])) {
            atomicMin(&first_bad, (unsigned long long)(e0 + g * kLen + r));
            break;
          }
        }
#pragma unroll
        for (int c = 0; c < kLen / 8; c++) word[g * kLen / 8 + c] = 0;
        continue;
      }
      uint32_t bits;
      const GroupDivider div = group_divider<kScale>(q, nv, amax, &bits);
      store_scale(scales, (e0 + g * kLen) / kLen, bits,
                  kScale == kScaleGeneric ? q.scale_nbytes : 1);
      uint32_t *out = word + g * kLen / 8;
      if (kScale == kScaleMx && bits >= 7 && bits <= 240) {  // div.y = 2^-(bits - 127)
        encode_run<kLen / 8, true>(GroupDivider::multiplier(cn * div.y), w, out);
      } else if (div.S == 0.0f) {
#pragma unroll
        for (int c = 0; c < kLen / 8; c++) out[c] = 0;
      } else {
#pragma unroll
        for (int r = 0; r < kLen; r++) w[r] = w[r] * cn;
        encode_run<kLen / 8, true>(div, w, out);
      }
    }
    reinterpret_cast<uint4 *>(codes)[e0 / kSeg] = make_uint4(word[0], word[1], word[2], word[3]);
  }
  __syncthreads();
  if (threadIdx.x == 0) bad[blockIdx.x] = first_bad;
}

__global__ void rq_tensor_scale_kernel(QuantParams q, const Stats *st, float *tensor_scale) {
  *tensor_scale = q.tensor_amax ? tensor_scale_of(q, __uint_as_float(st->amax)) : q.s_t;
}

struct Plan {
  QuantParams q;
  const void *x;
  uint64_t n, cols;
  int k, len;
  const float *sign;
  float *s_t;
  Stats *st;
  uint8_t *codes, *scales, *zeros;
};

template <int E, bool kBf16>
fp4_status launch(const Plan &p) {
  constexpr int B = 32 * E;
  const uint64_t blocks = p.n / B;
  uint64_t grid = (blocks + kWarps - 1) / kWarps;
  if (grid > 132 * 64) grid = 132 * 64;  // grid-stride beyond a few waves
  if (grid == 0) grid = 1;
  if (p.q.tensor_amax) {
    rotate_quantize_kernel<E, kBf16, 0><<<unsigned(grid), 32 * kWarps>>>(
        p.q, p.x, p.n, p.cols, p.k, p.len, p.sign, nullptr, p.st, nullptr, nullptr, nullptr);
    FP4_CU_LAUNCH();
  }
  if (p.q.has_st) {
    rq_tensor_scale_kernel<<<1, 1>>>(p.q, p.st, p.s_t);
    FP4_CU_LAUNCH();
  }
  rotate_quantize_kernel<E, kBf16, 1><<<unsigned(grid), 32 * kWarps>>>(
      p.q, p.x, p.n, p.cols, p.k, p.len, p.sign, p.q.has_st ? p.s_t : nullptr, p.st, p.codes,
      p.scales, p.zeros);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

// The fast path's launches: [max |y| partials,] then codes and scales. *parts: the quantize
// grid, whose bad-index partials the caller reads.
template <bool kBf16, int kLen, int kScale>
cudaError_t launch_tiled_as(const Plan &p, const Workspace &ws, int *parts) {
  constexpr auto kAmax = tile_rotate_amax_kernel<kBf16>;
  constexpr auto kQuant = tile_rotate_kernel<kBf16, kLen, kScale>;
  if (cudaError_t e = allow_tile_smem<kAmax>()) return e;
  if (cudaError_t e = allow_tile_smem<kQuant>()) return e;
  const TilePlan plan = tile_plan(ws, p.n, kBf16);
  int amax_parts = 0;
  if (p.q.tensor_amax) {
    amax_parts = int(plan.grid);
    if (cudaError_t e = launch_ex(kAmax, plan.grid, kAmaxThreads, plan.smem, false, p.x, p.n,
                                  p.cols, p.sign, ws.amax)) {
      return e;
    }
  }
  *parts = int(plan.grid);
  return launch_ex(kQuant, plan.grid, kTileThreads, plan.smem, p.q.tensor_amax != 0, p.q, p.x,
                   p.n, p.cols, p.sign, ws.amax, amax_parts, p.s_t, p.codes, p.scales, ws.bad,
                   p.q.tensor_amax != 0);
}

template <bool kBf16>
cudaError_t launch_tiled(const Plan &p, const Workspace &ws, int *parts) {
  const QuantParams &q = p.q;
  const bool mx = q.scale_fmt == SCALE_E8M0 && q.rule == RULE_OCP && !q.has_st;
  const bool nv = q.scale_fmt == SCALE_E4M3 && q.rule == RULE_ABSMAX;
  if (p.len == 16) {
    return mx   ? launch_tiled_as<kBf16, 16, kScaleMx>(p, ws, parts)
           : nv ? launch_tiled_as<kBf16, 16, kScaleNv>(p, ws, parts)
                : launch_tiled_as<kBf16, 16, kScaleGeneric>(p, ws, parts);
  }
  return mx   ? launch_tiled_as<kBf16, 32, kScaleMx>(p, ws, parts)
         : nv ? launch_tiled_as<kBf16, 32, kScaleNv>(p, ws, parts)
              : launch_tiled_as<kBf16, 32, kScaleGeneric>(p, ws, parts);
}

template <bool kBf16>
fp4_status dispatch(int E, const Plan &p) {
  switch (E) {
    case 2: return launch<2, kBf16>(p);
    case 4: return launch<4, kBf16>(p);
    case 8: return launch<8, kBf16>(p);
    case 16: return launch<16, kBf16>(p);
    default: return launch<32, kBf16>(p);
  }
}

struct DeviceBuffer {
  void *p = nullptr;
  ~DeviceBuffer() {
    if (p) cudaFreeAsync(p, 0);
  }
};

}  // namespace

// `check` = false skips reading back the non-finite flag (benchmarks): nothing synchronizes.
fp4_status rotate_quantize_impl(const fp4_quant_spec &spec, int32_t dtype, const void *x,
                                uint64_t rows, uint64_t cols, int32_t block, int32_t has_seed,
                                uint64_t seed, uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                                float *tensor_scale, bool check) {
  const uint64_t n = rows * cols;
  const Layout l = make_layout(spec.group_size, rows, cols);
  const QuantParams q = make_params(spec.element, spec.scale_format, spec.scale_rule,
                                    spec.tensor_scale, spec.tensor_scale_value, spec.rounding,
                                    spec.mse_candidates, spec.mse_min_shrink, spec.mse_norm,
                                    spec.seed);
  const int E = block / 32;
  const bool fused = block >= 64 && block <= 1024 && spec.group_size > 0 && q.mse_k == 0 &&
                     uint64_t(block) % l.len == 0 && l.len % uint64_t(E) == 0;
  if (!fused) {
    // Rotate into a float32 scratch from the stream-ordered pool, then the generic quantizer
    // (which reports bad values when `check`); nothing here waits for the device.
    DeviceBuffer y;
    FP4_CU(cudaMallocAsync(&y.p, n * sizeof(float), 0));
    if (fp4_status s = hadamard_async(dtype, x, FP4_DTYPE_F32, y.p, rows, cols, block, 0, has_seed,
                                      seed)) {
      return s;
    }
    return quantize_unchecked(spec, FP4_DTYPE_F32, y.p, rows, cols, codes, scales, zeros,
                              tensor_scale, check);
  }
  const bool fast = block == 128 && (l.len == 16 || l.len == 32) && q.elem == CODEC_E2M1 &&
                    !q.stochastic && q.rule != RULE_MINMAX && zeros == nullptr &&
                    reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(codes) % 16 == 0;
  DeviceBuffer sign_mem;
  if (has_seed) {
    float *sign;
    if (fp4_status s = hadamard_signs(cols, seed, &sign)) return s;
    sign_mem.p = sign;
  }
  Workspace *ws;
  if (fp4_status s = workspace(&ws)) return s;
  std::lock_guard<std::recursive_mutex> hold(ws->lock);
  Stats *st = ws->st;
  int k = 0;
  while ((1 << k) < block) k++;
  Plan p{q, x, n, cols, k, int(l.len), static_cast<const float *>(sign_mem.p), tensor_scale,
         st, codes, scales, zeros};
  fp4_status s = FP4_OK;
  unsigned long long bad = ~0ull;
  if (fast) {
    int parts = 0;
    FP4_CU(dtype == FP4_DTYPE_BF16 ? launch_tiled<true>(p, *ws, &parts)
                                   : launch_tiled<false>(p, *ws, &parts));
    if (!check) return FP4_OK;
    if (fp4_status s2 = first_bad(*ws, parts, &bad)) return s2;
  } else {
    FP4_CU(cudaMemsetAsync(st, 0, sizeof(Stats), 0));
    FP4_CU(cudaMemsetAsync(&st->bad, 0xff, sizeof(unsigned long long), 0));
    s = dtype == FP4_DTYPE_BF16 ? dispatch<true>(E, p) : dispatch<false>(E, p);
    if (s || !check) return s;
    FP4_CU(cudaMemcpy(&bad, &st->bad, sizeof bad, cudaMemcpyDeviceToHost));
  }
  if (bad == ~0ull) return FP4_OK;
  // Name the bad rotated element as quantize(hadamard(x)) would: rotate, then read it.
  DeviceBuffer y;
  FP4_CU(cudaMalloc(&y.p, n * sizeof(float)));
  if (fp4_status s2 = hadamard(dtype, x, FP4_DTYPE_F32, y.p, rows, cols, block, 0, has_seed, seed)) {
    return s2;
  }
  return report_bad(y.p, FP4_DTYPE_F32, bad, cols);
}

fp4_status rotate_quantize(const fp4_quant_spec &spec, int32_t dtype, const void *x,
                           uint64_t rows, uint64_t cols, int32_t block, int32_t has_seed,
                           uint64_t seed, uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                           float *tensor_scale) {
  return rotate_quantize_impl(spec, dtype, x, rows, cols, block, has_seed, seed, codes, scales,
                              zeros, tensor_scale, true);
}

}  // namespace fp4::cuda
