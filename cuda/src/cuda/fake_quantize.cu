// fp4_fake_quantize on CUDA: the W4A4 input transform of a forward pass, (rotate +) quantize then
// dequantize, enqueued without any host synchronization: the unchecked quantize paths skip the
// non-finite flag read-back and dequantize_async skips the final wait. Bytes moved are those of
// the two kernels it chains (docs in quantize.cu and rotate_quantize.cu); the twin is the CPU
// entry in cuda/src/cpu/fake_quantize.cpp, which chains the checked calls.
#include "../cuda_backend.hpp"

namespace fp4::cuda {

fp4_status fake_quantize(const fp4_quant_spec &spec, int32_t dtype, const void *x, uint64_t rows,
                         uint64_t cols, int32_t block, int32_t has_seed, uint64_t seed,
                         uint8_t *codes, uint8_t *scales, uint8_t *zeros, float *tensor_scale,
                         int32_t out_dtype, void *out) {
  if (fp4_status s = ensure_device()) return s;
  fp4_status s = block > 0 ? rotate_quantize_impl(spec, dtype, x, rows, cols, block, has_seed,
                                                  seed, codes, scales, zeros, tensor_scale, false)
                           : quantize_unchecked(spec, dtype, x, rows, cols, codes, scales, zeros,
                                                tensor_scale, false);
  if (s) return s;
  return dequantize_async(spec, codes, scales, zeros, tensor_scale, rows, cols, out_dtype, out);
}

}  // namespace fp4::cuda
