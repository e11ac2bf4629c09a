// CUDA block Hadamard rotation (docs/FORMATS.md §8), bit-exact with the CPU twin
// (cuda/src/cpu/hadamard.cpp) and lib/formats/hadamard.ts: the same butterfly stages in the
// same order, each add/subtract one float32 rounding, then the float32 normalization.
//
// Layout: x [rows, cols] (f32 or bf16), blocks of b along each row, so the tensor is n / b
// consecutive blocks. One CTA of 256 threads transforms a tile of max(b, 2048) consecutive
// elements in shared memory (a __syncthreads per stage). Bytes moved: n * (in + out) bytes,
// plus the cols-float sign table when seeded.
#include <cuda_runtime.h>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../formats.hpp"
#include "check.cuh"

namespace fp4::cuda {

using namespace fp4::fmt;

namespace {

constexpr int kThreads = 256;

__global__ void sign_kernel(uint64_t cols, uint32_t k0, uint32_t k1, float *out) {
  for (uint64_t c = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; c < cols;
       c += uint64_t(gridDim.x) * blockDim.x) {
    out[c] = hadamard_sign(c, k0, k1) ? -1.0f : 1.0f;
  }
}

__global__ void hadamard_kernel(int dtype, const void *x, int out_dtype, void *out, uint64_t n,
                                uint64_t cols, int b, int k, int tile, bool inverse,
                                const float *sign) {
  extern __shared__ float v[];
  const float c = hadamard_norm(k);
  for (uint64_t base = uint64_t(blockIdx.x) * tile; base < n; base += uint64_t(gridDim.x) * tile) {
    const int len = int(n - base < uint64_t(tile) ? n - base : uint64_t(tile));  // multiple of b
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
      float xv = dtype == FP4_DTYPE_BF16 ? bf16_to_f32(static_cast<const uint16_t *>(x)[base + i])
                                         : static_cast<const float *>(x)[base + i];
      if (sign && !inverse) xv = xv * sign[(base + i) % cols];
      v[i] = xv;
    }
    __syncthreads();
    for (int h = 1; h < b; h <<= 1) {
      for (int p = threadIdx.x; p < len / 2; p += blockDim.x) {
        const int j = (p / h) * 2 * h + (p % h);  // lower index of pair p of this stage
        const float u = v[j], w = v[j + h];
        v[j] = u + w;
        v[j + h] = u - w;
      }
      __syncthreads();
    }
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
      float y = v[i] * c;
      if (sign && inverse) y = y * sign[(base + i) % cols];
      if (out_dtype == FP4_DTYPE_BF16) {
        static_cast<uint16_t *>(out)[base + i] = f32_to_bf16(y);
      } else {
        static_cast<float *>(out)[base + i] = y;
      }
    }
    __syncthreads();
  }
}

}  // namespace

fp4_status hadamard_signs(uint64_t cols, uint64_t seed, float **out) {
  *out = nullptr;
  FP4_CU(cudaMalloc(reinterpret_cast<void **>(out), cols * sizeof(float)));
  uint64_t grid = (cols + kThreads - 1) / kThreads;
  sign_kernel<<<unsigned(grid > 4096 ? 4096 : grid), kThreads>>>(cols, uint32_t(seed),
                                                                  uint32_t(seed >> 32), *out);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    cudaFree(*out);
    *out = nullptr;
    FP4_CU(e);
  }
  return FP4_OK;
}

fp4_status hadamard_async(int32_t dtype, const void *x, int32_t out_dtype, void *out,
                          uint64_t rows, uint64_t cols, int32_t block, int32_t inverse,
                          int32_t has_seed, uint64_t seed) {
  const uint64_t n = rows * cols;
  int k = 0;
  while ((1 << k) < block) k++;
  const int tile = block > 2048 ? block : 2048;
  float *sign = nullptr;
  if (has_seed) {
    if (fp4_status s = hadamard_signs(cols, seed, &sign)) return s;
  }
  uint64_t tiles = (n + tile - 1) / tile;
  hadamard_kernel<<<unsigned(tiles > 65535 * 8 ? 65535 * 8 : tiles), kThreads,
                    size_t(tile) * sizeof(float)>>>(dtype, x, out_dtype, out, n, cols, block, k,
                                                    tile, inverse != 0, sign);
  cudaError_t e = cudaGetLastError();
  // Stream-ordered: the signs are released after the kernel has read them.
  if (sign) cudaFreeAsync(sign, 0);
  FP4_CU(e);
  return FP4_OK;
}

fp4_status hadamard(int32_t dtype, const void *x, int32_t out_dtype, void *out, uint64_t rows,
                    uint64_t cols, int32_t block, int32_t inverse, int32_t has_seed,
                    uint64_t seed) {
  if (fp4_status s = hadamard_async(dtype, x, out_dtype, out, rows, cols, block, inverse,
                                    has_seed, seed))
    return s;
  FP4_CU(sync_library());
  return FP4_OK;
}

}  // namespace fp4::cuda
