// Error reporting shared by every translation unit of the native library.
#pragma once
#include <cstdarg>
#include <exception>
#include <new>
#include "fp4lab.h"

namespace fp4 {

// Records the message for fp4_last_error and returns `code`, so call sites read
// `return fail(FP4_ERR_INVALID_ARGUMENT, "...")`.
fp4_status fail(fp4_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace fp4

// Wraps an entry point's body: C++ exceptions never cross the C ABI.
#define FP4_GUARD(body)                                                      \
  try {                                                                      \
    body                                                                     \
  } catch (const std::bad_alloc &) {                                         \
    return fp4::fail(FP4_ERR_OUT_OF_MEMORY, "out of host memory");           \
  } catch (const std::exception &e) {                                        \
    return fp4::fail(FP4_ERR_INTERNAL, "internal error: %s", e.what());      \
  } catch (...) {                                                            \
    return fp4::fail(FP4_ERR_INTERNAL, "internal error: unknown exception"); \
  }

#define FP4_REQUIRE(cond, ...) \
  do {                         \
    if (!(cond)) return fp4::fail(FP4_ERR_INVALID_ARGUMENT, __VA_ARGS__); \
  } while (0)

// Dispatches to the CUDA backend, or reports that this build has none.
#ifdef FP4LAB_WITH_CUDA
#define FP4_CUDA_ONLY(expr) expr
#else
#define FP4_CUDA_ONLY(expr) \
  return fp4::fail(FP4_ERR_NO_CUDA_BUILD, "this fp4lab library was built without CUDA (nvcc was not found at build time)")
#endif
