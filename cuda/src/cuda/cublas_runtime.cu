// cuBLAS at run time (see dynlib.hpp): the dense BF16 linear layers of the CUDA decode engine
// (fp4_dec_linear) and the BF16 baseline of the GEMM benchmark. Only cublasGemmEx is used:
// y[rows, n] = x[rows, k] w[n, k]^T with BF16 x and w, FP32 accumulation, BF16 or FP32 y.
// Where it is looked for: $FP4LAB_CUBLAS (a path to libcublas.so.*) only, when set; else where
// dynlib.hpp looks. FP4LAB_CUBLAS=off disables it (the library's own kernel runs instead).
//
// One handle per process, with a fixed 32 MiB workspace so that cuBLAS never allocates while a
// graph is being recorded; calls are serialized (the handle's stream is set per call).
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "../cuda_backend.hpp"
#include "../decode_backend.hpp"
#include "check.cuh"
#include "cublas.cuh"
#include "dynlib.hpp"

namespace fp4::cuda {
namespace {

using Handle = void *;
using CreateFn = int (*)(Handle *);
using SetStreamFn = int (*)(Handle, cudaStream_t);
using SetWorkspaceFn = int (*)(Handle, void *, size_t);
using GemmExFn = int (*)(Handle, int, int, int, int, int, const void *, const void *, int, int,
                         const void *, int, int, const void *, void *, int, int, int, int);
// cublasOperation_t, cudaDataType, cublasComputeType_t, cublasGemmAlgo_t (cublas_api.h, CUDA 13).
constexpr int kOpN = 0, kOpT = 1, kR32F = 0, kR16BF = 14, kCompute32F = 68, kGemmDefault = -1;
constexpr size_t kWorkspace = size_t(32) << 20;

struct Api {
  bool loaded = false;
  std::string where;
  CreateFn create = nullptr;
  SetStreamFn set_stream = nullptr;
  SetWorkspaceFn set_workspace = nullptr;
  GemmExFn gemm_ex = nullptr;
  std::mutex mu;
  Handle handle = nullptr;
  void *workspace = nullptr;
};

void load(Api &api) {
  const char *env = std::getenv("FP4LAB_CUBLAS");
  if (env && std::strcmp(env, "off") == 0) {
    api.where = "cuBLAS disabled by FP4LAB_CUBLAS=off";
    return;
  }
  const DynLib lib = open_nvidia_library("cublas", "FP4LAB_CUBLAS",
                                         {"libcublas.so.13", "libcublas.so.12"}, {"libcublasLt"});
  api.where = lib.where;
  if (!lib.handle) return;
  api.create = reinterpret_cast<CreateFn>(dlsym(lib.handle, "cublasCreate_v2"));
  api.set_stream = reinterpret_cast<SetStreamFn>(dlsym(lib.handle, "cublasSetStream_v2"));
  api.set_workspace = reinterpret_cast<SetWorkspaceFn>(dlsym(lib.handle, "cublasSetWorkspace_v2"));
  api.gemm_ex = reinterpret_cast<GemmExFn>(dlsym(lib.handle, "cublasGemmEx"));
  if (!(api.create && api.set_stream && api.set_workspace && api.gemm_ex)) {
    api.where = "cuBLAS not loaded: " + lib.where + " lacks cublasGemmEx or its helpers";
    return;
  }
  api.loaded = true;
}

Api &api() { return loaded_once<Api, load>(); }

// Creates the handle and its workspace on first use (not while recording a graph: the first
// call of a decode engine is its prefill, which runs unrecorded).
fp4_status ready(Api &a) {
  if (a.handle) return FP4_OK;
  Handle h = nullptr;
  if (int s = a.create(&h)) return fail(FP4_ERR_CUDA, "cublasCreate failed with status %d", s);
  FP4_CU(cudaMalloc(&a.workspace, kWorkspace));
  if (int s = a.set_workspace(h, a.workspace, kWorkspace))
    return fail(FP4_ERR_CUDA, "cublasSetWorkspace failed with status %d", s);
  a.handle = h;
  return FP4_OK;
}

}  // namespace

bool cublas_loaded(std::string *where) {
  Api &a = api();
  if (where) *where = a.where;
  return a.loaded;
}

fp4_status cublas_linear_bf16(const void *x, const void *w, void *y, int32_t y_dtype,
                              int64_t rows, int64_t n, int64_t k, cudaStream_t stream) {
  Api &a = api();
  if (!a.loaded) return fail(FP4_ERR_CUDA, "%s", a.where.c_str());
  FP4_REQUIRE(rows <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX,
              "cuBLAS linear: [%lld, %lld] x [%lld, %lld] exceeds 32-bit sizes", (long long)rows,
              (long long)k, (long long)n, (long long)k);
  std::lock_guard<std::mutex> lock(a.mu);
  if (fp4_status s = ready(a)) return s;
  if (int s = a.set_stream(a.handle, stream))
    return fail(FP4_ERR_CUDA, "cublasSetStream failed with status %d", s);
  const float alpha = 1.0f, beta = 0.0f;
  // Row-major y[rows, n] = x[rows, k] w[n, k]^T is, column-major, y^T = (w^T)^T x^T.
  const int yt = y_dtype == FP4_DTYPE_F32 ? kR32F : kR16BF;
  if (int s = a.gemm_ex(a.handle, kOpT, kOpN, int(n), int(rows), int(k), &alpha, w, kR16BF,
                        int(k), x, kR16BF, int(k), &beta, y, yt, int(n), kCompute32F,
                        kGemmDefault))
    return fail(FP4_ERR_CUDA, "cublasGemmEx failed with status %d", s);
  return FP4_OK;
}

int32_t cublas_status(char *buf, int32_t cap) {
  std::string where;
  const bool ok = cublas_loaded(&where);
  if (buf && cap > 0) std::snprintf(buf, size_t(cap), "%s", where.c_str());
  return ok ? 1 : 0;
}

}  // namespace fp4::cuda
