// CUDA graphs of the library's own launches (fp4lab/graph.h). Recording needs a stream of its
// own (the legacy default stream, where every other call of the library runs, cannot be
// captured): while the calling thread records, launch_stream() hands that stream to the decode
// ops and the W4A16 GEMM; otherwise it is the legacy stream. Replays go to the legacy stream, so
// they are ordered with the library's other work.
#include "../cuda_backend.hpp"
#include "check.cuh"
#include "stream.cuh"

namespace fp4::cuda {
namespace {

thread_local cudaStream_t recording = nullptr;

}  // namespace

cudaStream_t launch_stream() { return recording; }

fp4_status graph_begin() {
  if (fp4_status s = ensure_device()) return s;
  FP4_REQUIRE(!recording, "fp4_graph_begin: this thread is already recording a graph");
  cudaStream_t s = nullptr;
  FP4_CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const cudaError_t e = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess) {
    cudaStreamDestroy(s);
    FP4_CU(e);
  }
  recording = s;
  return FP4_OK;
}

fp4_status graph_end(void **graph) {
  FP4_REQUIRE(recording, "fp4_graph_end: this thread is not recording a graph");
  cudaStream_t s = recording;
  recording = nullptr;
  cudaGraph_t g = nullptr;
  const cudaError_t e = cudaStreamEndCapture(s, &g);
  cudaStreamDestroy(s);
  if (e != cudaSuccess) {
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    return fail(FP4_ERR_CUDA,
                "fp4_graph_end: the recording failed (%s); a call that synchronizes or copies "
                "through the host was made while recording, or a recorded call failed",
                cudaGetErrorString(e));
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t ie = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  FP4_CU(ie);
  *graph = exec;
  return FP4_OK;
}

fp4_status graph_launch(void *graph) {
  FP4_CU(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), nullptr));
  return FP4_OK;
}

fp4_status graph_destroy(void *graph) {
  if (graph) FP4_CU(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph)));
  return FP4_OK;
}

}  // namespace fp4::cuda
