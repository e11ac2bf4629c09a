// Turns a failed CUDA runtime call into an fp4 error carrying the runtime's message and the
// call site, and clears the sticky error state so later calls are not poisoned.
#pragma once
#include <cuda_runtime.h>

#include "../error.hpp"

#define FP4_CU(call)                                                                        \
  do {                                                                                      \
    cudaError_t fp4_cu_err_ = (call);                                                       \
    if (fp4_cu_err_ != cudaSuccess) {                                                       \
      cudaGetLastError();                                                                   \
      return fp4::fail(fp4_cu_err_ == cudaErrorMemoryAllocation ? FP4_ERR_OUT_OF_MEMORY     \
                                                                : FP4_ERR_CUDA,             \
                       "%s failed: %s (%s:%d)", #call, cudaGetErrorString(fp4_cu_err_),     \
                       __FILE__, __LINE__);                                                 \
    }                                                                                       \
  } while (0)

// Waits for the library's work, all of which runs on the legacy default stream. Not
// cudaDeviceSynchronize: that also waits on the stream another thread may be recording a graph
// on (graph.cu), which the runtime refuses for as long as the recording lasts.
inline cudaError_t sync_library() { return cudaStreamSynchronize(cudaStreamLegacy); }

// Checks the launch that just happened (bad configuration, missing kernel image).
#define FP4_CU_LAUNCH() FP4_CU(cudaGetLastError())
