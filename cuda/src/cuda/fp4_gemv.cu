// W4A16 GEMV for small batches (1 .. kGemvMaxBatch): memory-bound, so the kernel streams every
// packed weight byte exactly once with 16-byte loads and keeps enough loads in flight.
//
// Layout: the plain one of fp4lab/gemm.h (codes [n, k/2], scales [n, k/group], row-major).
// Work: a block of 8 warps owns 16 weight rows; its warps split the k chunks of 128 (warp w takes
// chunks w, w + 8, ...), each lane loading 16 code bytes per row (rows g and g + 8), their scales,
// and 64 bytes of each of its activation rows (which stay in L1: they are read by every block).
// Codes are dequantised to exact bf16 through a shared-memory table and multiplied on the tensor
// cores (fp4_dequant.cuh), the batch padded to 8 or 16 columns. The 8 partial tiles are summed
// through shared memory and rounded once to bf16.
// Bytes moved: n*k/2 codes + n*k/group scales + batch*k*2 activations + batch*n*2 outputs.
#include "../gemm_backend.hpp"
#include "check.cuh"
#include "fp4_dequant.cuh"

namespace fp4::cuda {
namespace {

constexpr int kWarps = 8;

// NT: activation column tiles of 8 (1 or 2).
template <int NT, bool ALIGNED16>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(int32_t format, const uint16_t *__restrict__ x, const uint8_t *__restrict__ codes,
                const uint8_t *__restrict__ scales, float post, uint16_t *__restrict__ y,
                int64_t batch, int64_t n, int64_t k) {
  extern __shared__ __align__(16) unsigned char smem[];
  w4::Tables &tb = *reinterpret_cast<w4::Tables *>(smem);
  float *partial = reinterpret_cast<float *>(smem + sizeof(w4::Tables));  // [warps][NT*4][32]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t row0 = int64_t(blockIdx.x) * 16;
  const int64_t nchunks = (k + w4::kChunk - 1) / w4::kChunk;

  build_tables(tb, format);
  __syncthreads();

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  for (int64_t c = warp; c < nchunks; c += kWarps) {
    const int64_t k0 = c * w4::kChunk + 32 * t;
    const int valid = k0 >= k ? 0 : (k - k0 >= 32 ? 32 : int(k - k0));
    w4::RowFrag r0 = w4::load_row<ALIGNED16>(tb, format, codes, scales, row0 + g, n, k, k0, valid);
    w4::RowFrag r1 =
        w4::load_row<ALIGNED16>(tb, format, codes, scales, row0 + g + 8, n, k, k0, valid);
    uint4 xv[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) {
      const int64_t b = 8 * j + g;
#pragma unroll
      for (int q = 0; q < 4; q++) {
        bool ok = b < batch && 8 * q < valid;
        xv[j][q] = ok ? __ldg(reinterpret_cast<const uint4 *>(x + b * k + k0) + q)
                      : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int s = 0; s < 8; s++) {
      uint32_t a[4];
      w4::a_frag(tb, r0, r1, s, lane, a);
#pragma unroll
      for (int j = 0; j < NT; j++) {
        const uint4 &v = xv[j][s >> 1];
        uint32_t b0 = (s & 1) ? v.z : v.x, b1 = (s & 1) ? v.w : v.y;
        w4::mma_bf16(acc[j], a, b0, b1);
      }
    }
  }

#pragma unroll
  for (int j = 0; j < NT; j++)
#pragma unroll
    for (int i = 0; i < 4; i++) partial[(warp * NT * 4 + j * 4 + i) * 32 + lane] = acc[j][i];
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int j = 0; j < NT; j++) {
      float sum[4];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        float s = 0.0f;
        for (int w = 0; w < kWarps; w++) s += partial[(w * NT * 4 + j * 4 + i) * 32 + lane];
        sum[i] = s;
      }
      w4::store_tile(y, sum, row0, 8 * j, batch, n, post, lane);
    }
  }
}

template <int NT, bool ALIGNED16>
fp4_status launch(int32_t format, const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                  float post, uint16_t *y, int64_t batch, int64_t n, int64_t k,
                  cudaStream_t stream) {
  const size_t smem = sizeof(w4::Tables) + sizeof(float) * kWarps * NT * 4 * 32;
  static bool configured = false;
  if (!configured) {
    FP4_CU(cudaFuncSetAttribute(gemv_kernel<NT, ALIGNED16>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    configured = true;
  }
  const int64_t tiles = (n + 15) / 16;
  FP4_REQUIRE(tiles <= 0x7fffffff, "fp4_gemm: n = %lld is too large", (long long)n);
  gemv_kernel<NT, ALIGNED16><<<unsigned(tiles), kWarps * 32, smem, stream>>>(
      format, x, codes, scales, post, y, batch, n, k);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace

fp4_status fp4_gemv_launch(int32_t format, const uint16_t *x, const uint8_t *codes,
                           const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                           int64_t n, int64_t k, void *stream) {
  FP4_REQUIRE(batch <= kGemvMaxBatch, "fp4_gemv: batch %lld > %lld", (long long)batch,
              (long long)kGemvMaxBatch);
  const float post = format == FP4_WEIGHTS_NVFP4 ? tensor_scale : 1.0f;
  auto s = static_cast<cudaStream_t>(stream);
  const bool aligned = k % 32 == 0;
  if (batch <= 8) {
    return aligned ? launch<1, true>(format, x, codes, scales, post, y, batch, n, k, s)
                   : launch<1, false>(format, x, codes, scales, post, y, batch, n, k, s);
  }
  return aligned ? launch<2, true>(format, x, codes, scales, post, y, batch, n, k, s)
                 : launch<2, false>(format, x, codes, scales, post, y, batch, n, k, s);
}

}  // namespace fp4::cuda
