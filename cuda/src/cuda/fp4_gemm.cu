// W4A16 GEMM for larger batches (> kGemvMaxBatch): the activations are reused by many weight rows,
// so a block stages them in shared memory once and its warps multiply them with their own rows.
//
// Layout: the plain one of fp4lab/gemm.h (codes [n, k/2], scales [n, k/group], row-major).
// Tile: a block of 4 warps owns 64 weight rows (16 per warp) x 64 batch columns and walks k in
// chunks of 128. Each chunk of activations (64 rows x 128 bf16 = 16 KiB) is copied to shared
// memory with cp.async (double-buffered, so the copy of chunk c + 1 overlaps the MMAs of chunk c),
// in the lane order of fp4_dequant.cuh: the 16-byte piece u of lane t's 32 k goes to slot 4u + t,
// and rows are padded to 320 bytes, so the 16-byte reads of a quarter warp hit 32 distinct banks.
// Weights go straight from global memory to registers (16 bytes per row per lane), are
// dequantised to exact bf16 through the shared table and multiplied on the tensor cores
// (mma.sync m16n8k16, f32 accumulators: 8 column tiles x 4 per lane).
// Bytes moved: weights once per 64 batch columns (n*k/2 + n*k/group each), activations
// batch*k*2 once per 64 weight rows (from L2), outputs batch*n*2.
#include "../gemm_backend.hpp"
#include "check.cuh"
#include "fp4_dequant.cuh"

namespace fp4::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRows = 16 * kWarps;  // weight rows per block
constexpr int kCols = 64;           // batch columns per block
constexpr int kRowBytes = 320;      // 256 bytes of a staged activation row + 64 of padding
constexpr int kStage = kCols * kRowBytes;

__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool ok) {
  unsigned d = unsigned(__cvta_generic_to_shared(dst));
  int bytes = ok ? 16 : 0;  // 0: zero-fill the destination
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes));
}

// Stages chunk c of activation columns col0 .. col0 + 63 into `stage`.
__device__ __forceinline__ void stage_x(unsigned char *stage, const uint16_t *x, int64_t col0,
                                        int64_t batch, int64_t k, int64_t c) {
  for (int p = threadIdx.x; p < kCols * 16; p += kWarps * 32) {
    const int row = p >> 4, q = p & 15;  // piece q = 4 t + u covers k = 8 q .. 8 q + 7
    const int64_t b = col0 + row, kk = c * w4::kChunk + 8 * q;
    const bool ok = b < batch && kk < k;
    const uint16_t *src = ok ? x + b * k + kk : x;
    cp_async16(stage + row * kRowBytes + ((q & 3) * 4 + (q >> 2)) * 16, src, ok);
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

template <bool ALIGNED16>
__global__ void __launch_bounds__(kWarps * 32)
    gemm_kernel(int32_t format, const uint16_t *__restrict__ x, const uint8_t *__restrict__ codes,
                const uint8_t *__restrict__ scales, float post, uint16_t *__restrict__ y,
                int64_t batch, int64_t n, int64_t k) {
  extern __shared__ __align__(16) unsigned char smem[];
  w4::Tables &tb = *reinterpret_cast<w4::Tables *>(smem);
  unsigned char *stages = smem + ((sizeof(w4::Tables) + 15) / 16) * 16;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t row0 = int64_t(blockIdx.x) * kRows + 16 * warp;
  const int64_t col0 = int64_t(blockIdx.y) * kCols;
  const int64_t nchunks = (k + w4::kChunk - 1) / w4::kChunk;

  stage_x(stages, x, col0, batch, k, 0);
  build_tables(tb, format);
  __syncthreads();

  float acc[8][4];
#pragma unroll
  for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  auto valid_of = [&](int64_t c) {
    const int64_t k0 = c * w4::kChunk + 32 * t;
    return k0 >= k ? 0 : (k - k0 >= 32 ? 32 : int(k - k0));
  };
  int valid = valid_of(0);
  w4::RowFrag r0 = w4::load_row<ALIGNED16>(tb, format, codes, scales, row0 + g, n, k, 32 * t, valid);
  w4::RowFrag r1 =
      w4::load_row<ALIGNED16>(tb, format, codes, scales, row0 + g + 8, n, k, 32 * t, valid);

  for (int64_t c = 0; c < nchunks; c++) {
    unsigned char *cur = stages + (c & 1) * kStage;
    if (c + 1 < nchunks) {
      stage_x(stages + ((c + 1) & 1) * kStage, x, col0, batch, k, c + 1);
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);
    }
    __syncthreads();

    // Weights of the next chunk are loaded now, so their latency hides behind these MMAs.
    w4::RowFrag n0 = r0, n1 = r1;
    if (c + 1 < nchunks) {
      const int64_t k0 = (c + 1) * w4::kChunk + 32 * t;
      const int v = valid_of(c + 1);
      n0 = w4::load_row<ALIGNED16>(tb, format, codes, scales, row0 + g, n, k, k0, v);
      n1 = w4::load_row<ALIGNED16>(tb, format, codes, scales, row0 + g + 8, n, k, k0, v);
    }

#pragma unroll
    for (int u = 0; u < 4; u++) {
      uint4 bv[8];
#pragma unroll
      for (int j = 0; j < 8; j++) {
        bv[j] = *reinterpret_cast<const uint4 *>(cur + (8 * j + g) * kRowBytes + (u * 4 + t) * 16);
      }
#pragma unroll
      for (int h = 0; h < 2; h++) {
        uint32_t a[4];
        w4::a_frag(tb, r0, r1, 2 * u + h, lane, a);
#pragma unroll
        for (int j = 0; j < 8; j++) {
          w4::mma_bf16(acc[j], a, h ? bv[j].z : bv[j].x, h ? bv[j].w : bv[j].y);
        }
      }
    }
    r0 = n0;
    r1 = n1;
    __syncthreads();  // the stage just read is the next iteration's copy target
  }

#pragma unroll
  for (int j = 0; j < 8; j++) w4::store_tile(y, acc[j], row0, col0 + 8 * j, batch, n, post, lane);
}

template <bool ALIGNED16>
fp4_status launch(int32_t format, const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                  float post, uint16_t *y, int64_t batch, int64_t n, int64_t k,
                  cudaStream_t stream) {
  const size_t smem = ((sizeof(w4::Tables) + 15) / 16) * 16 + 2 * size_t(kStage);
  static bool configured = false;
  if (!configured) {
    FP4_CU(cudaFuncSetAttribute(gemm_kernel<ALIGNED16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                int(smem)));
    configured = true;
  }
  const int64_t rows = (n + kRows - 1) / kRows, cols = (batch + kCols - 1) / kCols;
  FP4_REQUIRE(rows <= 0x7fffffff && cols <= 65535, "fp4_gemm: n = %lld or batch = %lld too large",
              (long long)n, (long long)batch);
  gemm_kernel<ALIGNED16><<<dim3(unsigned(rows), unsigned(cols)), kWarps * 32, smem, stream>>>(
      format, x, codes, scales, post, y, batch, n, k);
  FP4_CU_LAUNCH();
  return FP4_OK;
}

}  // namespace

fp4_status fp4_gemm_launch(int32_t format, const uint16_t *x, const uint8_t *codes,
                           const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                           int64_t n, int64_t k, void *stream) {
  const float post = format == FP4_WEIGHTS_NVFP4 ? tensor_scale : 1.0f;
  auto s = static_cast<cudaStream_t>(stream);
  return k % 32 == 0 ? launch<true>(format, x, codes, scales, post, y, batch, n, k, s)
                     : launch<false>(format, x, codes, scales, post, y, batch, n, k, s);
}

}  // namespace fp4::cuda
