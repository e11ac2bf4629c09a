// Dense (f32 or bf16 weight) linear layer of the decode step (fp4lab/decode.h): the BF16
// baseline the FP4 kernels are measured against, and the LM head. BF16 weights with BF16
// activations go to cuBLAS when it can be loaded (cublas_runtime.cu); the rest, or all of it
// without cuBLAS, to this kernel, a GEMV: one warp per output
// feature streams its weight row once (16-byte loads when in_features % 8 == 0) and dots it with
// up to kRows activation rows at a time (activations come from L1/L2). Bytes: out * in weight
// elements per ceil(rows / kRows) passes, plus the activations. f32 accumulation; each lane
// sums its own k-slice in order, then the warp tree-reduces.
#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "cublas.cuh"
#include "stream.cuh"

namespace fp4::cuda {
namespace {

using fp4::dec::load;
using fp4::dec::store;

constexpr int kWarps = 8;
constexpr int kRows = 4;

template <bool kBf16W>
__global__ void linear_kernel(const void *x, int32_t x_dtype, const void *w, void *y,
                              int32_t y_dtype, int64_t rows, int64_t out_f, int64_t in_f,
                              bool vec) {
  const int lane = threadIdx.x % 32;
  const int64_t o = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;
  if (o >= out_f) return;
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int nr = int(rows - r0 < kRows ? rows - r0 : kRows);
    float acc[kRows] = {};
    if (kBf16W && vec) {
      const uint4 *wr = reinterpret_cast<const uint4 *>(static_cast<const uint16_t *>(w) + o * in_f);
      for (int64_t c = lane; c < in_f / 8; c += 32) {
        const uint4 pk = wr[c];
        const uint32_t words[4] = {pk.x, pk.y, pk.z, pk.w};
        float wv[8];
#pragma unroll
        for (int e = 0; e < 4; e++) {
          wv[2 * e] = __uint_as_float(words[e] << 16);
          wv[2 * e + 1] = __uint_as_float(words[e] & 0xffff0000u);
        }
#pragma unroll
        for (int r = 0; r < kRows; r++) {
          if (r >= nr) break;
          const int64_t xb = (r0 + r) * in_f + c * 8;
#pragma unroll
          for (int e = 0; e < 8; e++) acc[r] += load(x, x_dtype, xb + e) * wv[e];
        }
      }
    } else {
      for (int64_t i = lane; i < in_f; i += 32) {
        const float wv = kBf16W ? fp4::fmt::bf16_to_f32(static_cast<const uint16_t *>(w)[o * in_f + i])
                                : static_cast<const float *>(w)[o * in_f + i];
#pragma unroll
        for (int r = 0; r < kRows; r++)
          if (r < nr) acc[r] += load(x, x_dtype, (r0 + r) * in_f + i) * wv;
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; r++) {
      float v = acc[r];
      for (int s = 16; s > 0; s >>= 1) v += __shfl_xor_sync(0xffffffffu, v, s);
      if (lane == 0 && r < nr) store(y, y_dtype, (r0 + r) * out_f + o, v);
    }
  }
}

}  // namespace

fp4_status dec_linear(const void *x, int32_t x_dtype, const void *w, int32_t w_dtype, void *y,
                      int32_t y_dtype, int64_t rows, int64_t out_features, int64_t in_features) {
  if (fp4_status s = ensure_device()) return s;
  if (w_dtype == FP4_DTYPE_BF16 && x_dtype == FP4_DTYPE_BF16 && cublas_loaded(nullptr))
    return cublas_linear_bf16(x, w, y, y_dtype, rows, out_features, in_features,
                              launch_stream());
  const int64_t blocks = (out_features + kWarps - 1) / kWarps;
  FP4_REQUIRE(blocks < (int64_t(1) << 31), "fp4_dec_linear: out_features too large for CUDA");
  const bool vec = in_features % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  if (w_dtype == FP4_DTYPE_BF16)
    linear_kernel<true><<<unsigned(blocks), kWarps * 32, 0, launch_stream()>>>(x, x_dtype, w, y, y_dtype, rows,
                                                           out_features, in_features, vec);
  else
    linear_kernel<false><<<unsigned(blocks), kWarps * 32, 0, launch_stream()>>>(x, x_dtype, w, y, y_dtype, rows,
                                                            out_features, in_features, vec);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace fp4::cuda
