// C entry points of fp4lab/graph.h: graphs exist only on the CUDA backend.
#include "../error.hpp"
#include "fp4lab.h"
#ifdef FP4LAB_WITH_CUDA
#include "../cuda_backend.hpp"
#endif

namespace {

fp4_status require_cuda(int32_t device, const char *what) {
  if (device != FP4_DEVICE_CUDA)
    return fp4::fail(FP4_ERR_INVALID_ARGUMENT, "%s: graphs need the CUDA device (got device %d)",
                     what, int(device));
  return FP4_OK;
}

}  // namespace

FP4_API fp4_status fp4_graph_begin(int32_t device) {
  FP4_GUARD({
    if (fp4_status s = require_cuda(device, "fp4_graph_begin")) return s;
    FP4_CUDA_ONLY(return fp4::cuda::graph_begin());
  });
}

FP4_API fp4_status fp4_graph_end(int32_t device, void **graph) {
  FP4_GUARD({
    FP4_REQUIRE(graph, "fp4_graph_end: graph is null");
    *graph = nullptr;
    if (fp4_status s = require_cuda(device, "fp4_graph_end")) return s;
    FP4_CUDA_ONLY(return fp4::cuda::graph_end(graph));
  });
}

FP4_API fp4_status fp4_graph_launch(int32_t device, void *graph) {
  FP4_GUARD({
    FP4_REQUIRE(graph, "fp4_graph_launch: graph is null");
    if (fp4_status s = require_cuda(device, "fp4_graph_launch")) return s;
    FP4_CUDA_ONLY(return fp4::cuda::graph_launch(graph));
  });
}

FP4_API fp4_status fp4_graph_destroy(int32_t device, void *graph) {
  FP4_GUARD({
    if (!graph) return FP4_OK;
    if (fp4_status s = require_cuda(device, "fp4_graph_destroy")) return s;
    FP4_CUDA_ONLY(return fp4::cuda::graph_destroy(graph));
  });
}
