// W4A16 GEMM for larger batches (> kGemvMaxBatch): the Hopper warpgroup-MMA kernel
// (fp4_gemm_wgmma.cuh) or the mma.sync tile kernel (fp4_gemm_tile.cuh), each of whose headers has
// its layout and the bytes it moves. This file picks the kernel and tile shape from the batch.
//
// Workspaces (split-k of the tile kernel, stream-k of the wgmma kernel): allocated lazily per
// device by the first non-captured launch that needs them and grown on demand (cached, never
// freed); a launch under stream capture that finds one too small runs without splitting k.
// Launches sharing a device must not run concurrently on two streams (they share the
// workspaces' tile counters).
//
// fp4_gemm_set_kernels (fp4lab/gemm.h) picks the Hopper kernel set: FP4_GEMM_KERNELS_V4, the
// measured dispatch below, or a lean candidate under measurement (fp4_gemm_lean.cu).
#include <cstdlib>
#include <mutex>

#include "../gemm_backend.hpp"
#include "fp4_gemm_wgmma.cuh"

namespace fp4::cuda {
namespace {

// <warpgroups, 64-row tiles per warpgroup, batch columns, stages>: 128 weight rows per block,
// the batch tile the smallest of 32, 64, 128 that holds the batch (larger batches: several);
// activations by TMA where x allows it (fp4_gemm_wgmma.cuh). On the H100 the tile kernel is kept
// only for batches 33..64 with n >= 16384: bench/notes/fp4_gemm.md ("Version 4") measured the TMA
// wgmma kernel 3-53% faster than the tile kernel at batch 32 on every shape, and up to 5% slower
// at batch 64 with n = 28672 (NVFP4).
using Wg32 = wg::Cfg<2, 1, 32, 8>;
using Wg64 = wg::Cfg<2, 1, 64, 8>;
using Wg128 = wg::Cfg<2, 1, 128, 6>;

// The mma.sync tile kernel: <BM rows, BN batch columns, warps along rows, warps along columns,
// stages, min blocks/SM>, from an H100 sweep (issue 6); for GPUs other than compute 9.0 and the
// shapes above.
using Narrow = tile::Cfg<128, 32, 4, 1, 4, 2>;
using Wide = tile::Cfg<128, 64, 4, 1, 4, 2>;
using Small = tile::Cfg<64, 64, 2, 2, 4, 3>;

template <int FMT>
fp4_status tile_dispatch(const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
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

template <int FMT>
fp4_status dispatch(const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                    float tensor_scale, uint16_t *y, int64_t batch, int64_t n, int64_t k,
                    cudaStream_t s) {
  static int device = -1;
  static bool hopper = false;
  int dev = 0;
  FP4_CU(cudaGetDevice(&dev));
  if (dev != device) {
    if (fp4_status st = wg::supported(dev, &hopper)) return st;
    device = dev;
  }
  const int set = gemm_kernels();
  FP4_REQUIRE(set >= 0, "fp4_gemm: $FP4LAB_GEMM_WGMMA must be v4, lean or lean3 (got \"%s\")",
              std::getenv("FP4LAB_GEMM_WGMMA"));
  if (hopper && set != FP4_GEMM_KERNELS_V4) {
    return fp4_gemm_lean_launch(set, FMT, x, codes, scales, tensor_scale, y, batch, n, k, s);
  }
  if (!hopper || (batch > 32 && batch <= 64 && n >= 16384)) {
    return tile_dispatch<FMT>(x, codes, scales, tensor_scale, y, batch, n, k, s);
  }
  if (batch <= 32) {
    return wg::launch<Wg32, FMT>(x, codes, scales, tensor_scale, y, batch, n, k, 0, s);
  }
  if (batch <= 64) {
    return wg::launch<Wg64, FMT>(x, codes, scales, tensor_scale, y, batch, n, k, 0, s);
  }
  return wg::launch<Wg128, FMT>(x, codes, scales, tensor_scale, y, batch, n, k, 0, s);
}

}  // namespace

fp4_status fp4_gemm_launch(int32_t format, const uint16_t *x, const uint8_t *codes,
                           const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                           int64_t n, int64_t k, void *stream) {
  // Calls from several threads (parallel test workers, a notebook's workers) enqueue one at a
  // time: the workspaces are grown and handed out here, and one thread's launch must not take a
  // buffer another thread is about to free and replace.
  static std::mutex serial;
  std::lock_guard<std::mutex> hold(serial);
  auto s = static_cast<cudaStream_t>(stream);
  return format == FP4_WEIGHTS_NVFP4
             ? dispatch<FP4_WEIGHTS_NVFP4>(x, codes, scales, tensor_scale, y, batch, n, k, s)
             : dispatch<FP4_WEIGHTS_MXFP4>(x, codes, scales, tensor_scale, y, batch, n, k, s);
}

}  // namespace fp4::cuda
