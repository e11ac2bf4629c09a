/*
 * fp4lab C ABI: the one interface between the Deno module (ffi/) and the native library.
 *
 * Rules every entry point follows:
 *   - returns an fp4_status (0 = FP4_OK); on failure the message is kept for fp4_last_error;
 *   - never aborts, never throws across the boundary: shapes, sizes, devices and pointers are
 *     validated first and C++ exceptions are caught at the boundary;
 *   - `device` is FP4_DEVICE_CPU or FP4_DEVICE_CUDA; data pointers are host memory for CPU
 *     and device memory for CUDA (allocated with fp4_alloc).
 *
 * The per-concern declarations live in fp4lab/<concern>.h and are all included here, so the
 * FFI symbol table (the files in ffi/symbols/) is checked against this header by
 * tests/ffi_header_test.ts.
 */
#ifndef FP4LAB_H
#define FP4LAB_H

#include "fp4lab/core.h"
#include "fp4lab/formats.h"
#include "fp4lab/gemm.h"
#include "fp4lab/gptq.h"
#include "fp4lab/model.h"
#include "fp4lab/decode.h"
#include "fp4lab/linalg.h"
#include "fp4lab/graph.h"

#endif
