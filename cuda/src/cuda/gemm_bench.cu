// Dispatch of the W4A16 kernels, and the CUDA-event timings the GPU benchmark uses
// (bench/gpu/fp4_gemm_bench.ts): our kernels, a device-to-device copy (the bandwidth yardstick)
// and cuBLAS BF16 GEMM, which this library does not link: it is dlopen()ed at run time.
//
// Every timing captures `reps` launches in a CUDA graph (as a decode step would run them) and
// reports, per sample, the graph's event-timed duration divided by reps. Each launch reads the
// next of `copies` weight sets, so a benchmark with copies * weight bytes > L2 reads from HBM.
#include <dlfcn.h>

#include <string>

#include "../cuda_backend.hpp"
#include "../gemm_backend.hpp"
#include "check.cuh"

namespace fp4::cuda {

fp4_status gemm(int32_t format, const uint16_t *x, const uint8_t *codes, const uint8_t *scales,
                float tensor_scale, uint16_t *y, int64_t batch, int64_t n, int64_t k) {
  if (fp4_status s = ensure_device()) return s;
  return batch <= kGemvMaxBatch
             ? fp4_gemv_launch(format, x, codes, scales, tensor_scale, y, batch, n, k, nullptr)
             : fp4_gemm_launch(format, x, codes, scales, tensor_scale, y, batch, n, k, nullptr);
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

namespace {

// The few cuBLAS entry points the baseline needs (cublas_api.h, CUDA 13), with their enum values.
using Handle = void *;
using CreateFn = int (*)(Handle *);
using DestroyFn = int (*)(Handle);
using SetStreamFn = int (*)(Handle, cudaStream_t);
using SetWorkspaceFn = int (*)(Handle, void *, size_t);
using GemmExFn = int (*)(Handle, int, int, int, int, int, const void *, const void *, int, int,
                         const void *, int, int, const void *, void *, int, int, int, int);
constexpr int kOpN = 0, kOpT = 1, kR16BF = 14, kCompute32F = 68, kGemmDefault = -1;

struct Cublas {
  void *lib = nullptr;
  Handle handle = nullptr;
  DestroyFn destroy = nullptr;
  void *workspace = nullptr;
  ~Cublas() {
    if (handle && destroy) destroy(handle);
    if (workspace) cudaFree(workspace);
    // The library stays loaded: unloading cuBLAS while the runtime holds its kernels is unsafe.
  }
};

}  // namespace

fp4_status cublas_bench(const char *cublas_path, const uint16_t *x, const uint16_t *w, uint16_t *y,
                        int64_t batch, int64_t n, int64_t k, int32_t copies, int32_t reps,
                        int32_t nsamples, float *samples) {
  if (fp4_status s = ensure_device()) return s;
  Cublas cb;
  // libcublas needs libcublasLt from its own folder; load it first in case no RUNPATH finds it.
  std::string dir(cublas_path);
  size_t slash = dir.rfind('/');
  if (slash != std::string::npos) {
    std::string lt = dir.substr(0, slash + 1) + "libcublasLt.so.13";
    dlopen(lt.c_str(), RTLD_NOW | RTLD_GLOBAL);
  }
  cb.lib = dlopen(cublas_path, RTLD_NOW | RTLD_LOCAL);
  FP4_REQUIRE(cb.lib, "fp4_cublas_bench: cannot load %s: %s", cublas_path, dlerror());
  auto create = reinterpret_cast<CreateFn>(dlsym(cb.lib, "cublasCreate_v2"));
  cb.destroy = reinterpret_cast<DestroyFn>(dlsym(cb.lib, "cublasDestroy_v2"));
  auto set_stream = reinterpret_cast<SetStreamFn>(dlsym(cb.lib, "cublasSetStream_v2"));
  auto set_workspace = reinterpret_cast<SetWorkspaceFn>(dlsym(cb.lib, "cublasSetWorkspace_v2"));
  auto gemm_ex = reinterpret_cast<GemmExFn>(dlsym(cb.lib, "cublasGemmEx"));
  FP4_REQUIRE(create && cb.destroy && set_stream && set_workspace && gemm_ex,
              "fp4_cublas_bench: %s lacks a cuBLAS entry point", cublas_path);
  int st = create(&cb.handle);
  if (st != 0) {
    cb.handle = nullptr;
    return fail(FP4_ERR_CUDA, "fp4_cublas_bench: cublasCreate failed with status %d", st);
  }
  // A fixed workspace keeps cuBLAS from allocating while the launches are captured in a graph.
  const size_t ws = size_t(32) << 20;
  FP4_CU(cudaMalloc(&cb.workspace, ws));
  if ((st = set_workspace(cb.handle, cb.workspace, ws)) != 0) {
    return fail(FP4_ERR_CUDA, "fp4_cublas_bench: cublasSetWorkspace failed with status %d", st);
  }
  const float alpha = 1.0f, beta = 0.0f;
  // Row-major y[batch, n] = x[batch, k] w[n, k]^T is, column-major, y^T = w^T(op T) x^T.
  return time_graph(reps, nsamples, samples, [&](cudaStream_t stream, int32_t i) -> fp4_status {
    int s = set_stream(cb.handle, stream);
    if (s == 0) {
      s = gemm_ex(cb.handle, kOpT, kOpN, int(n), int(batch), int(k), &alpha,
                  w + (i % copies) * n * k, kR16BF, int(k), x, kR16BF, int(k), &beta, y, kR16BF,
                  int(n), kCompute32F, kGemmDefault);
    }
    if (s != 0) return fail(FP4_ERR_CUDA, "fp4_cublas_bench: cublasGemmEx failed with status %d", s);
    return FP4_OK;
  });
}

}  // namespace fp4::cuda
