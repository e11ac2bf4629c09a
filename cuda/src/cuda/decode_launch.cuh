// Launches of the decode-step kernels (decode_*.cu) with programmatic dependent launch (PDL):
// a kernel may be scheduled while the previous kernel of the stream drains, and each of ours
// calls pdl_wait() before it reads anything a previous kernel may write (and before it writes
// anything a previous kernel may still read), and pdl_trigger() to let the next PDL launch be
// scheduled early. Recorded into a CUDA graph, these launches become programmatic edges.
// Without the attribute (a plain launch, or $FP4LAB_PDL=off), both calls are no-ops.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "check.cuh"
#include "stream.cuh"

namespace fp4::cuda {

// Waits until every prerequisite grid has completed and its writes are visible.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel of the stream (when launched with PDL) be scheduled now.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Whether launches carry the PDL attribute: on unless $FP4LAB_PDL is "off" or "0", or a launch
// with it was refused (then never again: the first launches of a process run eagerly, before
// any recording that a refused launch would spoil).
inline std::atomic<bool> &pdl_on() {
  static std::atomic<bool> on{[] {
    const char *e = std::getenv("FP4LAB_PDL");
    return !(e && (std::strcmp(e, "off") == 0 || std::strcmp(e, "0") == 0));
  }()};
  return on;
}

// kernel<<<grid, block, smem, stream>>>(args...) with PDL (while pdl_on()), as clusters of
// `cluster_x` blocks along x when cluster_x > 1.
template <typename... Params, typename... Args>
fp4_status launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream, unsigned cluster_x, Args &&...args) {
  cudaLaunchAttribute attrs[2];
  unsigned n = 0;
  if (cluster_x > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = cluster_x;
    attrs[n].val.clusterDim.y = 1;
    attrs[n].val.clusterDim.z = 1;
    n++;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attrs;
  if (pdl_on().load(std::memory_order_relaxed)) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n].val.programmaticStreamSerializationAllowed = 1;
    cfg.numAttrs = n + 1;
    const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, args...);
    if (e == cudaSuccess) return FP4_OK;
    cudaGetLastError();
    if (pdl_on().exchange(false))
      std::fprintf(stderr, "fp4lab: a launch with programmatic dependent launch failed (%s); "
                   "decode kernels launch plainly from now on\n", cudaGetErrorString(e));
  }
  cfg.numAttrs = n;
  FP4_CU(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
  return FP4_OK;
}

// The same on launch_stream() without dynamic shared memory (the decode ops).
template <typename... Params, typename... Args>
fp4_status launch_decode(void (*kernel)(Params...), dim3 grid, dim3 block, unsigned cluster_x,
                         Args &&...args) {
  return launch_pdl(kernel, grid, block, 0, launch_stream(), cluster_x,
                    std::forward<Args>(args)...);
}

}  // namespace fp4::cuda
