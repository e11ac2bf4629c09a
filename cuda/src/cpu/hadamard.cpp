// Block Hadamard rotation on the CPU (docs/FORMATS.md §8): OpenMP over (row, block) pairs, each
// block copied to a float32 scratch, signed, transformed by the shared butterflies, scaled.
// Reads rows*cols elements of the input dtype, writes as many of the output dtype.
#include <cstring>
#include <vector>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../formats.hpp"

namespace fp4::cpu {

// Defined in quantize.cpp (the formats entry points share it).
fp4_status formats_check_device(int32_t device);

using namespace fp4::fmt;

void hadamard_rows(int32_t dtype, const void *x, int32_t out_dtype, void *out, uint64_t rows,
                   uint64_t cols, int32_t block, bool inverse, bool has_seed, uint64_t seed) {
  int k = 0;
  while ((1 << k) < block) k++;
  const float c = hadamard_norm(k);
  std::vector<float> sign(has_seed ? cols : 0);
  for (uint64_t j = 0; j < sign.size(); j++) {
    sign[j] = hadamard_sign(j, uint32_t(seed), uint32_t(seed >> 32)) ? -1.0f : 1.0f;
  }
  const uint64_t per_row = cols / uint64_t(block);
  const int64_t units = int64_t(rows * per_row);
#pragma omp parallel
  {
    std::vector<float> v(static_cast<size_t>(block));
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; u++) {
      const uint64_t base = uint64_t(u) * uint64_t(block);  // linear index of the block start
      const uint64_t col0 = base % cols;
      for (int i = 0; i < block; i++) {
        v[i] = dtype == FP4_DTYPE_BF16 ? bf16_to_f32(static_cast<const uint16_t *>(x)[base + i])
                                       : static_cast<const float *>(x)[base + i];
      }
      if (has_seed && !inverse) {
        for (int i = 0; i < block; i++) v[i] = v[i] * sign[col0 + i];
      }
      fwht_inplace(v.data(), block);
      for (int i = 0; i < block; i++) v[i] = v[i] * c;
      if (has_seed && inverse) {
        for (int i = 0; i < block; i++) v[i] = v[i] * sign[col0 + i];
      }
      if (out_dtype == FP4_DTYPE_BF16) {
        uint16_t *o = static_cast<uint16_t *>(out) + base;
        for (int i = 0; i < block; i++) o[i] = f32_to_bf16(v[i]);
      } else {
        std::memcpy(static_cast<float *>(out) + base, v.data(), sizeof(float) * size_t(block));
      }
    }
  }
}

fp4_status check_hadamard(const char *fn, int32_t dtype, uint64_t rows, uint64_t cols,
                          int32_t block) {
  FP4_REQUIRE(dtype == FP4_DTYPE_F32 || dtype == FP4_DTYPE_BF16,
              "%s: dtype %d is not f32 (0) or bf16 (2)", fn, dtype);
  FP4_REQUIRE(block >= 2 && block <= 4096 && (block & (block - 1)) == 0,
              "%s: block must be a power of two in 2..4096, got %d", fn, block);
  FP4_REQUIRE(cols % uint64_t(block) == 0, "%s: block %d does not divide the %llu columns", fn,
              block, (unsigned long long)cols);
  FP4_REQUIRE(cols == 0 || rows <= (uint64_t(1) << 62) / cols, "%s: [%llu, %llu] is too large",
              fn, (unsigned long long)rows, (unsigned long long)cols);
  return FP4_OK;
}

}  // namespace fp4::cpu

FP4_API fp4_status fp4_hadamard(int32_t device, int32_t dtype, const void *x, int32_t out_dtype,
                                void *out, uint64_t rows, uint64_t cols, int32_t block,
                                int32_t inverse, int32_t has_seed, uint64_t seed) {
  FP4_GUARD({
    if (fp4_status s = fp4::cpu::check_hadamard("fp4_hadamard", dtype, rows, cols, block)) return s;
    FP4_REQUIRE(out_dtype == FP4_DTYPE_F32 || out_dtype == FP4_DTYPE_BF16,
                "fp4_hadamard: out_dtype %d is not f32 (0) or bf16 (2)", out_dtype);
    FP4_REQUIRE(inverse == 0 || inverse == 1, "fp4_hadamard: inverse must be 0 or 1, got %d", inverse);
    FP4_REQUIRE(has_seed == 0 || has_seed == 1, "fp4_hadamard: has_seed must be 0 or 1, got %d",
                has_seed);
    if (rows * cols == 0) return FP4_OK;
    FP4_REQUIRE(x && out, "fp4_hadamard: null pointer");
    // In place only when the storage is identical; a partial overlap would read written blocks.
    FP4_REQUIRE(x != out || dtype == out_dtype,
                "fp4_hadamard: in-place rotation needs the same input and output dtype");
    if (fp4_status s = fp4::cpu::formats_check_device(device)) return s;
    if (device == FP4_DEVICE_CPU) {
      fp4::cpu::hadamard_rows(dtype, x, out_dtype, out, rows, cols, block, inverse, has_seed, seed);
      return FP4_OK;
    }
    FP4_CUDA_ONLY(return fp4::cuda::hadamard(dtype, x, out_dtype, out, rows, cols, block, inverse,
                                             has_seed, seed));
  })
}
