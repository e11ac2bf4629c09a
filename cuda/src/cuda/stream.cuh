// The stream the decode ops and the W4A16 GEMM launch on: the legacy default stream, or the
// recording stream while the calling thread records a graph (graph.cu).
#pragma once
#include <cuda_runtime.h>

namespace fp4::cuda {

cudaStream_t launch_stream();

}  // namespace fp4::cuda
