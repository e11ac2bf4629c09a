// cuSOLVER at run time: this library links no cuSOLVER (the build machines have neither its
// headers nor its libraries), so the few entry points the GPU factorization needs are declared
// here (cusolverDn.h of CUDA 12/13: the 64-bit "X" API) and resolved with dlopen/dlsym once per
// process. The library stays loaded and the handle lives until exit: unloading cuSOLVER while
// the runtime holds its kernels is unsafe.
//
// Where it is looked for: $FP4LAB_CUSOLVER (a path to libcusolver.so.*) only, when set; else
// where dynlib.hpp looks.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../gptq_backend.hpp"
#include "check.cuh"
#include "dynlib.hpp"

namespace fp4::cuda {

namespace {

using Handle = void *;
using Params = void *;
// cublasFillMode_t, cublasDiagType_t and cudaDataType values (cublas_api.h, library_types.h).
constexpr int kFillUpper = 1, kDiagNonUnit = 0, kR64F = 1;

using CreateFn = int (*)(Handle *);
using CreateParamsFn = int (*)(Params *);
using PotrfSizeFn = int (*)(Handle, Params, int, int64_t, int, const void *, int64_t, int, size_t *,
                            size_t *);
using PotrfFn = int (*)(Handle, Params, int, int64_t, int, void *, int64_t, int, void *, size_t,
                        void *, size_t, int *);
using TrtriSizeFn = int (*)(Handle, int, int, int64_t, int, void *, int64_t, size_t *, size_t *);
using TrtriFn = int (*)(Handle, int, int, int64_t, int, void *, int64_t, void *, size_t, void *,
                        size_t, int *);

struct Api {
  bool loaded = false;
  std::string where;  // the library's path, or why it could not be loaded
  CreateFn create = nullptr;
  CreateParamsFn create_params = nullptr;
  PotrfSizeFn potrf_size = nullptr;
  PotrfFn potrf = nullptr;
  TrtriSizeFn trtri_size = nullptr;
  TrtriFn trtri = nullptr;
  std::mutex mu;  // guards the lazily created handle and params, and serializes calls on them
  Handle handle = nullptr;
  Params params = nullptr;
};

void load(Api &api) {
  const DynLib lib = open_nvidia_library("cusolver", "FP4LAB_CUSOLVER",
                                         {"libcusolver.so.12", "libcusolver.so.13",
                                          "libcusolver.so.11"},
                                         {"libnvJitLink", "libcublasLt", "libcublas",
                                          "libcusparse"});
  api.where = lib.where;
  if (!lib.handle) return;
  const std::string &path = lib.where;
  void *h = lib.handle;
  api.create = reinterpret_cast<CreateFn>(dlsym(h, "cusolverDnCreate"));
  api.create_params = reinterpret_cast<CreateParamsFn>(dlsym(h, "cusolverDnCreateParams"));
  api.potrf_size = reinterpret_cast<PotrfSizeFn>(dlsym(h, "cusolverDnXpotrf_bufferSize"));
  api.potrf = reinterpret_cast<PotrfFn>(dlsym(h, "cusolverDnXpotrf"));
  api.trtri_size = reinterpret_cast<TrtriSizeFn>(dlsym(h, "cusolverDnXtrtri_bufferSize"));
  api.trtri = reinterpret_cast<TrtriFn>(dlsym(h, "cusolverDnXtrtri"));
  if (!(api.create && api.create_params && api.potrf_size && api.potrf && api.trtri_size &&
        api.trtri)) {
    api.where = "cuSOLVER not loaded: " + path + " lacks cusolverDnXpotrf or cusolverDnXtrtri";
    return;
  }
  api.loaded = true;
}

Api &api() { return loaded_once<Api, load>(); }

}  // namespace

int32_t cusolver_status(char *buf, int32_t cap) {
  Api &a = api();
  if (buf && cap > 0) std::snprintf(buf, size_t(cap), "%s", a.where.c_str());
  return a.loaded ? 1 : 0;
}

fp4_status lower_inverse_of_cholesky(double *b, int64_t n, bool *pd) {
  Api &a = api();
  if (!a.loaded) return fp4::fail(FP4_ERR_CUDA, "%s", a.where.c_str());
  std::lock_guard<std::mutex> lock(a.mu);
  if (!a.handle) {
    Handle h = nullptr;
    Params p = nullptr;
    if (int s = a.create(&h))
      return fp4::fail(FP4_ERR_CUDA, "cusolverDnCreate failed with status %d", s);
    if (int s = a.create_params(&p))
      return fp4::fail(FP4_ERR_CUDA, "cusolverDnCreateParams failed with status %d", s);
    a.handle = h;
    a.params = p;
  }
  // Column-major "upper" is row-major lower: potrf(upper) leaves R with B = R^T R in the
  // column-major upper triangle, i.e. L = R^T in the row-major lower one; trtri(upper) turns R
  // into R^-1, i.e. L^-1 row-major lower.
  size_t dev_potrf = 0, host_potrf = 0, dev_trtri = 0, host_trtri = 0;
  if (int s = a.potrf_size(a.handle, a.params, kFillUpper, n, kR64F, b, n, kR64F, &dev_potrf,
                           &host_potrf))
    return fp4::fail(FP4_ERR_CUDA, "cusolverDnXpotrf_bufferSize failed with status %d", s);
  if (int s = a.trtri_size(a.handle, kFillUpper, kDiagNonUnit, n, kR64F, b, n, &dev_trtri,
                           &host_trtri))
    return fp4::fail(FP4_ERR_CUDA, "cusolverDnXtrtri_bufferSize failed with status %d", s);
  const size_t dev_bytes = std::max(dev_potrf, dev_trtri);
  std::vector<char> host(std::max<size_t>(std::max(host_potrf, host_trtri), 1));
  void *work = nullptr;
  FP4_CU(cudaMalloc(&work, std::max<size_t>(dev_bytes, 1) + 16));
  int *info_d = reinterpret_cast<int *>(static_cast<char *>(work) + ((dev_bytes + 7) / 8) * 8);
  auto release = [&](fp4_status s) {
    cudaFree(work);
    return s;
  };
  int info = 0;
  cudaError_t e = sync_library();  // b was written by this library's kernels
  if (e != cudaSuccess)
    return release(fp4::fail(FP4_ERR_CUDA, "cusolver: %s", cudaGetErrorString(e)));
  if (int s = a.potrf(a.handle, a.params, kFillUpper, n, kR64F, b, n, kR64F, work, dev_potrf,
                      host.data(), host_potrf, info_d))
    return release(fp4::fail(FP4_ERR_CUDA, "cusolverDnXpotrf failed with status %d", s));
  e = cudaMemcpy(&info, info_d, sizeof(int), cudaMemcpyDeviceToHost);
  if (e != cudaSuccess)
    return release(fp4::fail(FP4_ERR_CUDA, "cusolver: %s", cudaGetErrorString(e)));
  if (info < 0) return release(fp4::fail(FP4_ERR_INTERNAL, "cusolverDnXpotrf: parameter %d", -info));
  if (info > 0) {
    *pd = false;
    return release(FP4_OK);
  }
  if (int s = a.trtri(a.handle, kFillUpper, kDiagNonUnit, n, kR64F, b, n, work, dev_trtri,
                      host.data(), host_trtri, info_d))
    return release(fp4::fail(FP4_ERR_CUDA, "cusolverDnXtrtri failed with status %d", s));
  e = cudaMemcpy(&info, info_d, sizeof(int), cudaMemcpyDeviceToHost);
  if (e != cudaSuccess)
    return release(fp4::fail(FP4_ERR_CUDA, "cusolver: %s", cudaGetErrorString(e)));
  if (info < 0) return release(fp4::fail(FP4_ERR_INTERNAL, "cusolverDnXtrtri: parameter %d", -info));
  *pd = info == 0;
  return release(FP4_OK);
}

}  // namespace fp4::cuda
