// CUDA group quantization, dequantization and element conversion (docs/FORMATS.md §2-6), on the
// shared primitives of formats.hpp, so results equal the CPU backend and the TypeScript bit for
// bit (nvcc -fmad=false; divisions are IEEE divisions).
//
// Layout: x [rows, cols] f32 or bf16, row-major; groups of `len` consecutive elements.
// Paths:
//  - fused: one thread per group (picks the scale, encodes, packs its own bytes) when every group
//    owns whole bytes (8-bit codes, or 4-bit codes with an even group length) and groups are not
//    the whole tensor. Bytes moved: reads x once (plain rule) or 2 + candidates times (MSE, from
//    L1/L2), writes n/2 or n code bytes plus the scales.
//  - two-phase: scales per group (phase A), then one thread per code byte (phase B) for odd
//    4-bit groups and tensor-wide groups (whose stats come from a reduction; an MSE search over
//    a tensor-wide group runs on the host to keep the float64 error sum in element order).
// Non-finite input is found with an atomicMin over the linear index, read back after the run.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../formats.hpp"
#include "check.cuh"

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
    atomicMax(&st->neg_lo, __float_as_uint(-l));
    atomicMax(&st->hi, __float_as_uint(h));
    if (bad != ~0ull) atomicMin(&st->bad, bad);
  }
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
  return make_params(s.element, s.scale_format, s.scale_rule, s.tensor_scale, s.rounding,
                     s.mse_candidates, s.mse_min_shrink, s.mse_norm, s.seed);
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

template <class Load>
fp4_status quantize_with(const fp4_quant_spec &spec, Load load, int32_t dtype, const void *x,
                         uint64_t rows, uint64_t cols, uint8_t *codes, uint8_t *scales,
                         uint8_t *zeros, float *tensor_scale, bool check) {
  const Layout l = make_layout(spec.group_size, rows, cols);
  QuantParams q = params_of(spec);
  const bool tensor_group = spec.group_size == FP4_GROUP_TENSOR;
  const bool fused = !tensor_group && (q.code_bits != 4 || (l.len % 2) == 0);
  const bool need_stats = q.tensor_amax || tensor_group;
  Scratch st_mem, sz_mem;
  FP4_CU(cudaMallocAsync(&st_mem.p, sizeof(Stats), 0));
  Stats *st = static_cast<Stats *>(st_mem.p);
  FP4_CU(cudaMemsetAsync(st, 0, sizeof(Stats)));
  FP4_CU(cudaMemsetAsync(&st->bad, 0xff, sizeof(unsigned long long)));
  if (need_stats) {
    unsigned grid = grid_for(l.n, 256);
    stats_kernel<<<grid > 4096 ? 4096 : grid, 256>>>(load, l.n, st);
    FP4_CU_LAUNCH();
  }
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
      group_kernel<Load, false><<<grid_for(l.groups, 128), 128>>>(q, load, l, codes, scales, zeros,
                                                                 S, Z, st, st_dev);
      FP4_CU_LAUNCH();
    }
    element_kernel<<<grid_for(code_bytes(q.code_bits, l.n), 256), 256>>>(q, load, l, S, Z, codes);
    FP4_CU_LAUNCH();
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
  FP4_CU(cudaDeviceSynchronize());
  return FP4_OK;
}

fp4_status decode(int32_t codec, const uint8_t *codes, uint64_t n, float *out) {
  decode_kernel<<<grid_for(n, 256), 256>>>(codec, codes, n, out);
  FP4_CU_LAUNCH();
  FP4_CU(cudaDeviceSynchronize());
  return FP4_OK;
}

fp4_status quantize(const fp4_quant_spec &spec, int32_t dtype, const void *x, uint64_t rows,
                    uint64_t cols, uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                    float *tensor_scale) {
  return quantize_unchecked(spec, dtype, x, rows, cols, codes, scales, zeros, tensor_scale, true);
}

fp4_status dequantize(const fp4_quant_spec &spec, const uint8_t *codes, const uint8_t *scales,
                      const uint8_t *zeros, const float *tensor_scale, uint64_t rows,
                      uint64_t cols, int32_t out_dtype, void *out) {
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
  FP4_CU(cudaDeviceSynchronize());
  return FP4_OK;
}

}  // namespace fp4::cuda
