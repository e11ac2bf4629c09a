// The lean wgmma kernel (fp4_gemm_wgmma.cuh with Cfg::LEAN) for every Hopper batch above the
// GEMV's: a candidate under measurement, run when fp4_gemm_set_kernels (fp4lab/gemm.h) chose it,
// never by default. bench/notes/fp4_gemm.md ("Version 7") measured its first form, with 4 / 3 / 3
// warpgroups per block for BN 32 / 64 / 128 (FP4_GEMM_KERNELS_LEAN3 here), 14-29% faster than
// the default at batches 32 and 64 but 1-13% slower at 128, where BN 128 at 3 warpgroups spills
// (168 registers). FP4_GEMM_KERNELS_LEAN keeps BN 128 at 2 warpgroups. Both also take the
// batches 33..64 with n >= 16384 that the default leaves to the tile kernel. Layout and bytes
// moved: those of fp4_gemm_wgmma.cuh.
#include "../gemm_backend.hpp"
#include "fp4_gemm_wgmma.cuh"

namespace fp4::cuda {
namespace {

using Lean32 = wg::Cfg<4, 1, 32, 8, true>;
using Lean64 = wg::Cfg<3, 1, 64, 8, true>;
using Lean128 = wg::Cfg<2, 1, 128, 6, true>;
using Lean128x3 = wg::Cfg<3, 1, 128, 6, true>;

template <int FMT>
fp4_status lean(int set, const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                float tensor_scale, uint16_t *y, int64_t batch, int64_t n, int64_t k,
                cudaStream_t s) {
  if (batch <= 32) {
    return wg::launch<Lean32, FMT>(x, codes, scales, tensor_scale, y, batch, n, k, 0, s);
  }
  if (batch <= 64) {
    return wg::launch<Lean64, FMT>(x, codes, scales, tensor_scale, y, batch, n, k, 0, s);
  }
  return set == FP4_GEMM_KERNELS_LEAN3
             ? wg::launch<Lean128x3, FMT>(x, codes, scales, tensor_scale, y, batch, n, k, 0, s)
             : wg::launch<Lean128, FMT>(x, codes, scales, tensor_scale, y, batch, n, k, 0, s);
}

}  // namespace

fp4_status fp4_gemm_lean_launch(int set, int32_t format, const uint16_t *x,
                                const uint8_t *codes, const uint8_t *scales, float tensor_scale,
                                uint16_t *y, int64_t batch, int64_t n, int64_t k, void *stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return format == FP4_WEIGHTS_NVFP4
             ? lean<FP4_WEIGHTS_NVFP4>(set, x, codes, scales, tensor_scale, y, batch, n, k, s)
             : lean<FP4_WEIGHTS_MXFP4>(set, x, codes, scales, tensor_scale, y, batch, n, k, s);
}

}  // namespace fp4::cuda
