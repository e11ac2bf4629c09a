// Elementwise pieces of the decode step (fp4lab/decode.h): embedding lookup, SwiGLU, residual
// add. Each moves its operands once (bytes: embedding tokens * dim * (table element + 4),
// silu_mul 3n activation elements, add n * (4 + x element) + 4n); grid-stride loops.
#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "decode_launch.cuh"

namespace fp4::cuda {
namespace {

using fp4::dec::load;
using fp4::dec::store;

constexpr int kThreads = 256;

int blocks_for(uint64_t n) {
  const uint64_t b = (n + kThreads - 1) / kThreads;
  return int(b < 4096 ? b : 4096);
}

__global__ void embedding_kernel(const int32_t *ids, const void *table, int32_t dtype, float *y,
                                 int64_t tokens, int64_t vocab, int64_t dim) {
  pdl_trigger();
  pdl_wait();
  const int64_t n = tokens * dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / dim, d = i % dim;
    const int32_t id = ids[t];
    y[i] = (id >= 0 && id < vocab) ? load(table, dtype, int64_t(id) * dim + d) : __int_as_float(0x7fc00000);
  }
}

__global__ void silu_mul_kernel(const void *gate, const void *up, void *out, int32_t dtype,
                                uint64_t n) {
  pdl_trigger();
  pdl_wait();
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n;
       i += uint64_t(gridDim.x) * blockDim.x) {
    store(out, dtype, int64_t(i),
          fp4::dec::silu_mul(load(gate, dtype, int64_t(i)), load(up, dtype, int64_t(i))));
  }
}

__global__ void add_kernel(float *y, const void *x, int32_t dtype, uint64_t n) {
  pdl_trigger();
  pdl_wait();
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n;
       i += uint64_t(gridDim.x) * blockDim.x)
    y[i] += load(x, dtype, int64_t(i));
}

}  // namespace

fp4_status dec_embedding(const int32_t *ids, const void *table, int32_t table_dtype, float *y,
                         int64_t tokens, int64_t vocab, int64_t dim) {
  if (fp4_status s = ensure_device()) return s;
  return launch_decode(embedding_kernel, dim3(blocks_for(uint64_t(tokens * dim))), dim3(kThreads),
                       1, ids, table, table_dtype, y, tokens, vocab, dim);
}

fp4_status dec_silu_mul(const void *gate, const void *up, void *out, int32_t dtype, uint64_t n) {
  if (fp4_status s = ensure_device()) return s;
  return launch_decode(silu_mul_kernel, dim3(blocks_for(n)), dim3(kThreads), 1, gate, up, out,
                       dtype, n);
}

fp4_status dec_add(float *y, const void *x, int32_t x_dtype, uint64_t n) {
  if (fp4_status s = ensure_device()) return s;
  return launch_decode(add_kernel, dim3(blocks_for(n)), dim3(kThreads), 1, y, x, x_dtype, n);
}

}  // namespace fp4::cuda
