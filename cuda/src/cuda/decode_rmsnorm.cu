// RMSNorm of the decode step (fp4lab/decode.h), alone or after the residual add that precedes
// it (x += r), one block per row: the sum of squares in f64 (as the CPU twin), then
// y = w * (x * inv) rounded to y's dtype. A decode step has one row, so the block is wide and
// the fast path keeps the row in registers: each thread owns up to kChunks groups of 4
// consecutive elements, read with one vector load per operand. Bytes per row: dim * (4 + y
// element) plus, with the add, dim * (r element + 4) (r read, x written); dim weight elements
// (from L2 after the first row).
#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "decode_launch.cuh"

namespace fp4::cuda {
namespace {

using fp4::dec::load;
using fp4::dec::store;

constexpr int kThreads = 512;
constexpr int kChunks = 4;  // the fast path holds dims up to kThreads * 4 * kChunks

// Four consecutive elements from i (a multiple of 4; 8- or 16-byte aligned on the fast path).
__device__ __forceinline__ float4 load4(const void *p, int32_t dtype, int64_t i) {
  if (dtype == FP4_DTYPE_BF16) {
    const uint2 u = *reinterpret_cast<const uint2 *>(static_cast<const uint16_t *>(p) + i);
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                       __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
  }
  return *reinterpret_cast<const float4 *>(static_cast<const float *>(p) + i);
}

__device__ __forceinline__ void store4(void *p, int32_t dtype, int64_t i, float4 v) {
  if (dtype == FP4_DTYPE_BF16) {
    const uint32_t a = fp4::fmt::f32_to_bf16(v.x) | uint32_t(fp4::fmt::f32_to_bf16(v.y)) << 16;
    const uint32_t b = fp4::fmt::f32_to_bf16(v.z) | uint32_t(fp4::fmt::f32_to_bf16(v.w)) << 16;
    *reinterpret_cast<uint2 *>(static_cast<uint16_t *>(p) + i) = make_uint2(a, b);
  } else {
    *reinterpret_cast<float4 *>(static_cast<float *>(p) + i) = v;
  }
}

// The block's sum of the threads' ss (every thread gets it).
__device__ __forceinline__ double block_sum(double ss) {
  __shared__ double partial[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  double total = 0;
  for (int i = 0; i < kThreads / 32; i++) total += partial[i];
  return total;
}

template <bool kAdd>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_kernel(float *x, const void *r, int32_t r_dtype, const void *w, int32_t w_dtype,
                   void *y, int32_t y_dtype, int64_t dim, float eps, bool fast) {
  pdl_trigger();
  float *xr = x + blockIdx.x * dim;
  const int64_t row = blockIdx.x * dim;
  double ss = 0;
  if (fast) {
    // The weights are no kernel's output: their loads overlap the previous kernel's tail.
    float4 g[kChunks];
#pragma unroll
    for (int c = 0; c < kChunks; c++) {
      const int64_t i = 4 * (threadIdx.x + int64_t(c) * kThreads);
      if (i >= dim) break;
      g[c] = load4(w, w_dtype, i);
    }
    pdl_wait();
    float4 v[kChunks];
#pragma unroll
    for (int c = 0; c < kChunks; c++) {
      const int64_t i = 4 * (threadIdx.x + int64_t(c) * kThreads);
      if (i >= dim) break;
      v[c] = load4(xr, FP4_DTYPE_F32, i);
      if (kAdd) {
        const float4 a = load4(r, r_dtype, row + i);
        v[c] = make_float4(v[c].x + a.x, v[c].y + a.y, v[c].z + a.z, v[c].w + a.w);
        store4(xr, FP4_DTYPE_F32, i, v[c]);
      }
      ss += double(v[c].x) * v[c].x;
      ss += double(v[c].y) * v[c].y;
      ss += double(v[c].z) * v[c].z;
      ss += double(v[c].w) * v[c].w;
    }
    const float inv = float(1.0 / sqrt(double(float(block_sum(ss) / double(dim))) + double(eps)));
#pragma unroll
    for (int c = 0; c < kChunks; c++) {
      const int64_t i = 4 * (threadIdx.x + int64_t(c) * kThreads);
      if (i >= dim) break;
      store4(y, y_dtype, row + i,
             make_float4(g[c].x * (v[c].x * inv), g[c].y * (v[c].y * inv),
                         g[c].z * (v[c].z * inv), g[c].w * (v[c].w * inv)));
    }
    return;
  }
  pdl_wait();
  for (int64_t d = threadIdx.x; d < dim; d += kThreads) {
    float v = xr[d];
    if (kAdd) {
      v += load(r, r_dtype, row + d);
      xr[d] = v;
    }
    ss += double(v) * v;
  }
  const float inv = float(1.0 / sqrt(double(float(block_sum(ss) / double(dim))) + double(eps)));
  for (int64_t d = threadIdx.x; d < dim; d += kThreads)
    store(y, y_dtype, row + d, load(w, w_dtype, d) * (xr[d] * inv));
}

bool aligned(const void *p, int32_t dtype) {
  return reinterpret_cast<uintptr_t>(p) % (dtype == FP4_DTYPE_BF16 ? 8 : 16) == 0;
}

template <bool kAdd>
fp4_status launch(float *x, const void *r, int32_t r_dtype, const void *w, int32_t w_dtype,
                  void *y, int32_t y_dtype, int64_t rows, int64_t dim, float eps) {
  if (fp4_status s = ensure_device()) return s;
  FP4_REQUIRE(rows < (int64_t(1) << 31), "fp4_dec_rmsnorm: too many rows for CUDA");
  const bool fast = dim % 4 == 0 && dim <= int64_t(kThreads) * 4 * kChunks &&
                    aligned(x, FP4_DTYPE_F32) && (!kAdd || aligned(r, r_dtype)) &&
                    aligned(w, w_dtype) && aligned(y, y_dtype);
  return launch_decode(rmsnorm_kernel<kAdd>, dim3(unsigned(rows)), dim3(kThreads), 1, x, r,
                       r_dtype, w, w_dtype, y, y_dtype, dim, eps, fast);
}

}  // namespace

fp4_status dec_rmsnorm(const float *x, const void *w, int32_t w_dtype, void *y, int32_t y_dtype,
                       int64_t rows, int64_t dim, float eps) {
  // Without the add the kernel only reads x.
  return launch<false>(const_cast<float *>(x), nullptr, FP4_DTYPE_F32, w, w_dtype, y, y_dtype,
                       rows, dim, eps);
}

fp4_status dec_add_rmsnorm(float *x, const void *r, int32_t r_dtype, const void *w,
                           int32_t w_dtype, void *y, int32_t y_dtype, int64_t rows, int64_t dim,
                           float eps) {
  return launch<true>(x, r, r_dtype, w, w_dtype, y, y_dtype, rows, dim, eps);
}

}  // namespace fp4::cuda
