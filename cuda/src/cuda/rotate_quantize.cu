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
// Fast path (b = 128, E2M1 with nearest rounding, groups of 16 or 32, rot128_kernel): each
// thread holds T = 16 or 32 consecutive elements of a block (T/8 16-byte loads of bf16), so
// the 128/T lanes of a block run stages h < T in registers and only the last log2(128/T)
// stages by shuffles (one FMA per element and stage: v·(±1) + other is the reference's single
// add or subtract). Groups then lie inside a thread (len <= T) or over two lanes, take the
// inlined scale rule and encoder of quantize_fast.cuh, and each thread writes its T/2 code
// bytes in one store. With a tensor amax a first launch rotates and reduces only max |y|; the
// quantize launch walks the tensor backwards to start on what the first left in L2. Bytes
// moved: 2 B per element read per launch, 0.5 B of codes and 1/len B of scales written.
#include <cuda_runtime.h>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../formats.hpp"
#include "check.cuh"
#include "quantize_fast.cuh"

namespace fp4::cuda {

using namespace fp4::fmt;

namespace {

constexpr int kWarps = 8;  // warps per CTA

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
#pragma unroll
    for (int h = 1; h < E; h <<= 1) {
#pragma unroll
      for (int j = 0; j < E; j++) {
        if ((j & h) == 0) {
          const float u = v[j], w = v[j + h];
          v[j] = u + w;
          v[j + h] = u - w;
        }
      }
    }
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

constexpr int kRotThreads = 256;

__global__ void rq_init_kernel(Stats *st) {
  st->bad = ~0ull;
  st->amax = st->neg_lo = st->hi = st->pad = 0;
}

// The fast path (header comment). kPass 0: atomicMax of max |y| into st; kPass 1: codes and
// scales, the tensor scale from st when q.tensor_amax. Launched dependent on the kernel before
// it: the loads start at once, st is touched only after pdl_wait.
template <int T, bool kBf16, int kPass, int kScale>
__global__ void __launch_bounds__(kRotThreads)
    rot128_kernel(QuantParams q, const void *x, uint64_t n, uint64_t cols, int len,
                  const float *sign, Stats *st, float *tensor_scale, uint8_t *codes,
                  uint8_t *scales, bool reverse) {
  constexpr int P = 128 / T;  // lanes per Hadamard block
  if (kPass == 0) pdl_launch_dependents();
  const uint64_t blk = reverse ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const uint64_t base = (blk * kRotThreads + threadIdx.x) * T;
  const bool live = base < n;  // dead lanes still take part in the shuffles
  const int lane = threadIdx.x & 31;
  float v[T];
  if (live) {
#pragma unroll
    for (int c = 0; c < T / 8; c++) {
      float w[8];
      load_chunk8<kBf16>(x, base / 8 + c, w);
#pragma unroll
      for (int i = 0; i < 8; i++) v[8 * c + i] = w[i];
    }
    if (sign) {
      const float4 *sg = reinterpret_cast<const float4 *>(sign + base % cols);
#pragma unroll
      for (int c = 0; c < T / 4; c++) {
        const float4 s4 = sg[c];
        v[4 * c] = v[4 * c] * s4.x;
        v[4 * c + 1] = v[4 * c + 1] * s4.y;
        v[4 * c + 2] = v[4 * c + 2] * s4.z;
        v[4 * c + 3] = v[4 * c + 3] * s4.w;
      }
    }
  } else {
#pragma unroll
    for (int r = 0; r < T; r++) v[r] = 0.0f;
  }
#pragma unroll
  for (int h = 1; h < T; h <<= 1) {
#pragma unroll
    for (int j = 0; j < T; j++) {
      if ((j & h) == 0) {
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
#pragma unroll
  for (int m = 1; m < P; m <<= 1) {
    const float s = (lane & m) ? -1.0f : 1.0f;
#pragma unroll
    for (int r = 0; r < T; r++) v[r] = __fmaf_rn(v[r], s, __shfl_xor_sync(0xffffffffu, v[r], m));
  }
  const float cn = hadamard_norm(7);
  uint32_t mag[T / 8];
#pragma unroll
  for (int c = 0; c < T / 8; c++) {
    float w[8];
#pragma unroll
    for (int i = 0; i < 8; i++) w[i] = v[8 * c + i] = v[8 * c + i] * cn;
    mag[c] = magnitude_bits8(w);
  }
  pdl_wait();
  uint32_t all = 0;
#pragma unroll
  for (int c = 0; c < T / 8; c++) all = max(all, mag[c]);
  if (live && all >= 0x7f800000u) {
    for (int r = 0; r < T; r++) {
      if (!is_finite(v[r])) {
        atomicMin(&st->bad, (unsigned long long)(base + r));
        break;
      }
    }
  }
  if (kPass == 0) {
    // Non-finite values do not count (the call fails anyway); the block's max goes out once.
    __shared__ uint32_t s_max[kRotThreads / 32];
    uint32_t a = all < 0x7f800000u ? all : 0u;
    for (int o = 16; o > 0; o >>= 1) a = max(a, __shfl_xor_sync(0xffffffffu, a, o));
    if (lane == 0) s_max[threadIdx.x >> 5] = a;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kRotThreads / 32; w++) a = max(a, s_max[w]);
      atomicMax(&st->amax, a);
    }
    return;
  }
  if (q.tensor_amax) q.s_t = tensor_scale_of(q, __uint_as_float(st->amax));
  if (q.has_st && blockIdx.x == 0 && threadIdx.x == 0) *tensor_scale = q.s_t;
  // Groups of len = 16 or 32 elements: len / 8 chunks, inside the thread or over 2 lanes.
  uint32_t pair[T / 8], word[T / 8];
#pragma unroll
  for (int c = 0; c < T / 8; c++) pair[c] = max(mag[c], mag[c ^ 1]);
#pragma unroll
  for (int c = 0; c < T / 8; c++) {
    uint32_t g = pair[c];
    if constexpr (T == 32) {
      if (len == 32) g = max(g, pair[c ^ 2]);
    } else {
      if (len == 32) g = max(g, __shfl_xor_sync(0xffffffffu, g, 1));
    }
    word[c] = 0;
    if (g >= 0x7f800000u) continue;  // a non-finite group: reported above, left unwritten
    const float amax = __uint_as_float(g);
    const GroupScale gs = fast_scale<kScale>(q, amax);
    const uint64_t e0 = base + 8 * c;  // first element of this chunk
    if (live && e0 % uint64_t(len) == 0) store_scale(scales, e0 / uint64_t(len), gs.bits, q.scale_nbytes);
    float w[8];
#pragma unroll
    for (int i = 0; i < 8; i++) w[i] = v[8 * c + i];
    word[c] = encode8(gs.S, amax, w);
  }
  if (!live || all >= 0x7f800000u) return;
  if constexpr (T == 32) {
    reinterpret_cast<uint4 *>(codes)[base / 32] = make_uint4(word[0], word[1], word[2], word[3]);
  } else {
    reinterpret_cast<uint2 *>(codes)[base / 16] = make_uint2(word[0], word[1]);
  }
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

constexpr int kRotT = 32;  // elements per thread of the fast path

// The fast path's launches after st is initialised: [max |y|,] then codes and scales.
template <bool kBf16, int kScale, int T = kRotT>
cudaError_t launch_rot128(const Plan &p) {
  const unsigned grid = unsigned((p.n / T + kRotThreads - 1) / kRotThreads);
  if (p.q.tensor_amax) {
    if (cudaError_t e = launch_pdl(rot128_kernel<T, kBf16, 0, kScale>, grid, kRotThreads, p.q, p.x,
                                   p.n, p.cols, p.len, p.sign, p.st, p.s_t, p.codes, p.scales,
                                   false)) {
      return e;
    }
  }
  return launch_pdl(rot128_kernel<T, kBf16, 1, kScale>, grid, kRotThreads, p.q, p.x, p.n, p.cols,
                    p.len, p.sign, p.st, p.s_t, p.codes, p.scales, p.q.tensor_amax != 0);
}

template <bool kBf16>
cudaError_t dispatch_rot128(const Plan &p) {
  if (p.q.scale_fmt == SCALE_E8M0 && p.q.rule == RULE_OCP && !p.q.has_st) {
    return launch_rot128<kBf16, kScaleMx>(p);
  }
  if (p.q.scale_fmt == SCALE_E4M3 && p.q.rule == RULE_ABSMAX) return launch_rot128<kBf16, kScaleNv>(p);
  return launch_rot128<kBf16, kScaleGeneric>(p);
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
                                    spec.tensor_scale, spec.rounding, spec.mse_candidates,
                                    spec.mse_min_shrink, spec.mse_norm, spec.seed);
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
                    !q.stochastic && q.rule != RULE_MINMAX &&
                    reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(codes) % 16 == 0;
  DeviceBuffer st_mem, sign_mem;
  if (has_seed) {
    float *sign;
    if (fp4_status s = hadamard_signs(cols, seed, &sign)) return s;
    sign_mem.p = sign;
  }
  FP4_CU(cudaMallocAsync(&st_mem.p, sizeof(Stats), 0));
  Stats *st = static_cast<Stats *>(st_mem.p);
  int k = 0;
  while ((1 << k) < block) k++;
  Plan p{q, x, n, cols, k, int(l.len), static_cast<const float *>(sign_mem.p), tensor_scale,
         st, codes, scales, zeros};
  fp4_status s = FP4_OK;
  if (fast) {
    rq_init_kernel<<<1, 1>>>(st);
    FP4_CU_LAUNCH();
    FP4_CU(dtype == FP4_DTYPE_BF16 ? dispatch_rot128<true>(p) : dispatch_rot128<false>(p));
  } else {
    FP4_CU(cudaMemsetAsync(st, 0, sizeof(Stats), 0));
    FP4_CU(cudaMemsetAsync(&st->bad, 0xff, sizeof(unsigned long long), 0));
    s = dtype == FP4_DTYPE_BF16 ? dispatch<true>(E, p) : dispatch<false>(E, p);
  }
  if (s || !check) return s;
  unsigned long long bad;
  FP4_CU(cudaMemcpy(&bad, &st->bad, sizeof bad, cudaMemcpyDeviceToHost));
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
