// W4A16 GEMM for larger batches (> kGemvMaxBatch): a pipelined tensor-core GEMM whose weights
// are dequantised in registers (fp4_gemm_tile.cuh has the kernel, its layout and the bytes it
// moves). This file picks the tile configuration from the batch and n.
//
// Split-k workspace: allocated lazily per device by the first non-captured launch that needs it
// and grown on demand (cached, never freed); a launch under stream capture that finds it too
// small runs without split-k. Launches sharing a device must not run concurrently on two
// streams while they split k (they share the workspace's tile counters).
#include "../gemm_backend.hpp"
#include "fp4_gemm_tile.cuh"

namespace fp4::cuda {
namespace {

// <BM rows, BN batch columns, warps along rows, warps along columns, stages, min blocks/SM>,
// chosen from an H100 sweep of tile variants (issue 6): narrow 64-row tiles
// give more blocks where n is small, 128-row tiles reuse each activation stage more where n is
// large. Split-k is automatic (one block per SM at least).
using Narrow = tile::Cfg<128, 32, 4, 1, 4, 2>;
using Wide = tile::Cfg<128, 64, 4, 1, 4, 2>;
using Small = tile::Cfg<64, 64, 2, 2, 4, 3>;

template <int FMT>
fp4_status dispatch(const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                    float tensor_scale, uint16_t *y, int64_t batch, int64_t n, int64_t k,
                    cudaStream_t s) {
  if (batch <= 32) {
    return tile::launch<Narrow, FMT>(x, codes, scales, tensor_scale, y, batch, n, k, 0, s);
  }
  if (n >= (batch <= 64 ? 16384 : 8192)) {
    return tile::launch<Wide, FMT>(x, codes, scales, tensor_scale, y, batch, n, k, 0, s);
  }
  return tile::launch<Small, FMT>(x, codes, scales, tensor_scale, y, batch, n, k, 0, s);
}

}  // namespace

fp4_status fp4_gemm_launch(int32_t format, const uint16_t *x, const uint8_t *codes,
                           const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                           int64_t n, int64_t k, void *stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return format == FP4_WEIGHTS_NVFP4
             ? dispatch<FP4_WEIGHTS_NVFP4>(x, codes, scales, tensor_scale, y, batch, n, k, s)
             : dispatch<FP4_WEIGHTS_MXFP4>(x, codes, scales, tensor_scale, y, batch, n, k, s);
}

}  // namespace fp4::cuda
