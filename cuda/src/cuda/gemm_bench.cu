// Dispatch of the W4A16 kernels, and the CUDA-event timings the GPU benchmark uses
// (bench/gpu/fp4_gemm_bench.ts): our kernels, a device-to-device copy (the bandwidth yardstick)
// and cuBLAS BF16 GEMM (cublas_runtime.cu: loaded at run time, not linked).
//
// Every timing captures `reps` launches in a CUDA graph (as a decode step would run them) and
// reports, per sample, the graph's event-timed duration divided by reps. Each launch reads the
// next of `copies` weight sets, so a benchmark with copies * weight bytes > L2 reads from HBM.
#include "../cuda_backend.hpp"
#include "../gemm_backend.hpp"
#include "check.cuh"
#include "cublas.cuh"
#include "stream.cuh"

namespace fp4::cuda {

fp4_status gemm(int32_t format, const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                float tensor_scale, uint16_t *y, int64_t batch, int64_t n, int64_t k) {
  if (fp4_status s = ensure_device()) return s;
  return batch <= kGemvMaxBatch
             ? fp4_gemv_launch(format, x, codes, scales, tensor_scale, y, batch, n, k, launch_stream())
             : fp4_gemm_launch(format, x, codes, scales, tensor_scale, y, batch, n, k, launch_stream());
}

namespace {

// Owns the stream, events, graph of one timing run.
struct Timer {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~Timer() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    if (stream) cudaStreamDestroy(stream);
  }
};

// Captures `body(stream, i)` for i < reps into a graph, runs it once to warm up, then times it.
template <class Body>
fp4_status time_graph(int32_t reps, int32_t nsamples, float *samples, Body body) {
  if (fp4_status s = ensure_device()) return s;
  Timer tm;
  FP4_CU(cudaStreamCreateWithFlags(&tm.stream, cudaStreamNonBlocking));
  FP4_CU(cudaEventCreate(&tm.start));
  FP4_CU(cudaEventCreate(&tm.stop));
  // One launch outside the capture configures the kernels (function attributes) and surfaces
  // launch errors with their own message.
  if (fp4_status s = body(tm.stream, 0)) return s;
  FP4_CU(cudaStreamSynchronize(tm.stream));
  FP4_CU(cudaStreamBeginCapture(tm.stream, cudaStreamCaptureModeThreadLocal));
  fp4_status captured = FP4_OK;
  for (int32_t i = 0; i < reps && captured == FP4_OK; i++) captured = body(tm.stream, i);
  cudaError_t end = cudaStreamEndCapture(tm.stream, &tm.graph);
  if (captured) return captured;
  FP4_CU(end);
  FP4_CU(cudaGraphInstantiate(&tm.exec, tm.graph, 0));
  FP4_CU(cudaGraphLaunch(tm.exec, tm.stream));
  FP4_CU(cudaStreamSynchronize(tm.stream));
  for (int32_t s = 0; s < nsamples; s++) {
    FP4_CU(cudaEventRecord(tm.start, tm.stream));
    FP4_CU(cudaGraphLaunch(tm.exec, tm.stream));
    FP4_CU(cudaEventRecord(tm.stop, tm.stream));
    FP4_CU(cudaEventSynchronize(tm.stop));
    float ms = 0;
    FP4_CU(cudaEventElapsedTime(&ms, tm.start, tm.stop));
    samples[s] = ms / float(reps);
  }
  return FP4_OK;
}

}  // namespace

fp4_status gemm_bench(int32_t format, const uint16_t *x, const uint8_t *codes,
                      const uint8_t *scales, float tensor_scale, uint16_t *y, int64_t batch,
                      int64_t n, int64_t k, int32_t copies, int32_t reps, int32_t nsamples,
                      float *samples) {
  const int64_t group = format == FP4_WEIGHTS_MXFP4 ? 32 : 16;
  const int64_t code_bytes = n * k / 2, scale_bytes = n * k / group;
  return time_graph(reps, nsamples, samples, [&](cudaStream_t st, int32_t i) {
    const int64_t c = i % copies;
    const uint8_t *cw = codes + c * code_bytes, *sw = scales + c * scale_bytes;
    return batch <= kGemvMaxBatch
               ? fp4_gemv_launch(format, x, cw, sw, tensor_scale, y, batch, n, k, st)
               : fp4_gemm_launch(format, x, cw, sw, tensor_scale, y, batch, n, k, st);
  });
}

fp4_status copy_bench(void *dst, const void *src, uint64_t bytes, int32_t reps, int32_t nsamples,
                      float *samples) {
  return time_graph(reps, nsamples, samples, [&](cudaStream_t st, int32_t) -> fp4_status {
    FP4_CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st));
    return FP4_OK;
  });
}

fp4_status cublas_bench(const uint16_t *x, const uint16_t *w, uint16_t *y, int64_t batch,
                        int64_t n, int64_t k, int32_t copies, int32_t reps, int32_t nsamples,
                        float *samples) {
  if (fp4_status s = ensure_device()) return s;
  return time_graph(reps, nsamples, samples, [&](cudaStream_t stream, int32_t i) {
    return cublas_linear_bf16(x, w + (i % copies) * n * k, y, FP4_DTYPE_BF16, batch, n, k,
                              stream);
  });
}

}  // namespace fp4::cuda
