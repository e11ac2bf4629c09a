// CUDA GPTQ solve, the twin of solve() in cuda/src/cpu/gptq.cpp: the same float operations in
// the same order, so with the same U the codes equal the CPU's.
//
// Flow (W [rows, cols] f32 row-major, device): U (the upper Cholesky factor of the damped,
// permuted H^-1, f32 [n, n], processing order) is built on the GPU: the permuted, masked, damped
// f64 Hessian is written reversed (B = J Hd J, n^2 f64), cuSOLVER factors B = L L^T and inverts
// L in place (cusolver_runtime.cu), and U = J L^-1 J is read out rounded to f32; damping retries
// as on the CPU (same absolute damping: the mean diagonal is summed on the host in the CPU's
// order). Without cuSOLVER (or when it fails) the host copies H back and factors it in f64
// (fp4::gptq::factor, shared with the CPU) and uploads U. W is gathered into processing order
// (Wp). Then per block of B columns [c1, c2):
//  1. block_kernel: one warp per 32 rows, the rows' B columns staged in shared memory
//     (transposed, padded: conflict-free for both the coalesced load and the per-row loop);
//     each thread runs the column loop of its row with error feedback inside the block (reading
//     U[p, c1:c2] as broadcasts), writes codes and q back, and the scaled errors to
//     ErrT [B, rows] (coalesced along rows).
//  2. update_kernel: Wp[:, c2:] -= Err @ U[c1:c2, c2:], a tiled GEMM (64 x 64 tiles, 256 threads,
//     4 x 4 per thread, K in chunks of 16 through shared memory) that starts from Wp and
//     subtracts the block's products one k at a time, unfused, in k order: exactly the CPU's
//     `row[j] -= e * u[k][j]`. Bytes: reads rows * (n - c2) floats of Wp twice (read, write) and
//     the panels of ErrT and U once per tile; flops 2 * rows * (n - c2) * B.
// Finally D = W - Q (stored order), G = D^T D with the Hessian kernel, loss = sum H .* G (f64),
// and codes and q are scattered back to stored order.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <vector>

#include "../cuda_backend.hpp"
#include "../error.hpp"
#include "../gptq_backend.hpp"
#include "../cpu/linalg.hpp"
#include "check.cuh"

namespace fp4::cuda {

namespace {

constexpr int kRowsPerCta = 32;

// Device allocations released on every return path.
struct Buffers {
  std::vector<void *> ptrs;
  ~Buffers() {
    for (void *p : ptrs) cudaFree(p);
  }
  template <class T>
  cudaError_t alloc(T **out, size_t count) {
    void *p = nullptr;
    cudaError_t e = cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T));
    if (e == cudaSuccess) ptrs.push_back(p);
    *out = static_cast<T *>(p);
    return e;
  }
};

__global__ void gather_kernel(const float *w, int64_t rows, int64_t n, const int32_t *perm,
                              const char *dead, float *wp) {
  const int64_t total = rows * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, p = i % n;
    const int32_t c = perm[p];
    wp[i] = dead[c] ? 0.0f : w[r * n + c];
  }
}

__global__ void block_kernel(float *wp, uint8_t *codes_p, float *err_t, const float *u,
                             const float *scales, const int32_t *group_of_pos, int64_t rows,
                             int64_t n, int64_t groups, int64_t c1, int bw, int32_t element) {
  extern __shared__ float smem[];
  float *sw = smem;                                                  // [bw][33]
  uint8_t *sc = reinterpret_cast<uint8_t *>(smem + bw * (kRowsPerCta + 1));  // [bw][32]
  const int lane = threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.x) * kRowsPerCta;
  const int nr = int(std::min<int64_t>(kRowsPerCta, rows - r0));
  for (int rr = 0; rr < nr; rr++)
    for (int k = lane; k < bw; k += kRowsPerCta)
      sw[k * (kRowsPerCta + 1) + rr] = wp[(r0 + rr) * n + c1 + k];
  __syncwarp();
  if (lane < nr) {
    const int64_t r = r0 + lane;
    for (int k = 0; k < bw; k++) {
      const int64_t p = c1 + k;
      const float v = sw[k * (kRowsPerCta + 1) + lane];
      float q;
      const uint32_t bits = fp4::gptq::round_element(
          element, v, scales[r * groups + group_of_pos[p]], &q);
      sc[k * kRowsPerCta + lane] = uint8_t(bits);
      const float *up = u + p * n;
      const float err = (v - q) / up[p];
      err_t[int64_t(k) * rows + r] = err;
      sw[k * (kRowsPerCta + 1) + lane] = q;
      for (int j = k + 1; j < bw; j++) sw[j * (kRowsPerCta + 1) + lane] -= err * up[c1 + j];
    }
  }
  __syncwarp();
  for (int rr = 0; rr < nr; rr++)
    for (int k = lane; k < bw; k += kRowsPerCta) {
      wp[(r0 + rr) * n + c1 + k] = sw[k * (kRowsPerCta + 1) + rr];
      codes_p[(r0 + rr) * n + c1 + k] = sc[k * kRowsPerCta + rr];
    }
}

constexpr int kUT = 64, kUK = 16;

__global__ void __launch_bounds__(256)
    update_kernel(float *wp, const float *err_t, const float *u, int64_t rows, int64_t n,
                  int64_t c1, int bw, int64_t c2) {
  __shared__ float es[kUK][kUT];
  __shared__ float us[kUK][kUT];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t r0 = int64_t(blockIdx.y) * kUT, j0 = c2 + int64_t(blockIdx.x) * kUT;
  float acc[4][4];
#pragma unroll
  for (int m = 0; m < 4; m++)
#pragma unroll
    for (int q = 0; q < 4; q++) {
      const int64_t r = r0 + ty * 4 + m, j = j0 + tx * 4 + q;
      acc[m][q] = r < rows && j < n ? wp[r * n + j] : 0.0f;
    }
  for (int k0 = 0; k0 < bw; k0 += kUK) {
    for (int e = tid; e < kUK * kUT; e += 256) {
      const int k = e / kUT, c = e % kUT;
      const bool kin = k0 + k < bw;
      es[k][c] = kin && r0 + c < rows ? err_t[int64_t(k0 + k) * rows + r0 + c] : 0.0f;
      us[k][c] = kin && j0 + c < n ? u[(c1 + k0 + k) * n + j0 + c] : 0.0f;
    }
    __syncthreads();
    const int kn = bw - k0 < kUK ? bw - k0 : kUK;
    for (int k = 0; k < kn; k++) {
      float e4[4], u4[4];
#pragma unroll
      for (int m = 0; m < 4; m++) e4[m] = es[k][ty * 4 + m];
#pragma unroll
      for (int q = 0; q < 4; q++) u4[q] = us[k][tx * 4 + q];
#pragma unroll
      for (int m = 0; m < 4; m++)
#pragma unroll
        for (int q = 0; q < 4; q++) acc[m][q] -= e4[m] * u4[q];  // unfused (-fmad=false)
    }
    __syncthreads();
  }
#pragma unroll
  for (int m = 0; m < 4; m++)
#pragma unroll
    for (int q = 0; q < 4; q++) {
      const int64_t r = r0 + ty * 4 + m, j = j0 + tx * 4 + q;
      if (r < rows && j < n) wp[r * n + j] = acc[m][q];
    }
}

// D = W - Q in stored order; then w <- Q and codes in stored order.
__global__ void finish_kernel(float *w, uint8_t *codes, const float *wp, const uint8_t *codes_p,
                              const int32_t *perm, int64_t rows, int64_t n, float *d) {
  const int64_t total = rows * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, p = i % n;
    const int64_t c = r * n + perm[p];
    const float q = wp[i];
    d[c] = w[c] - q;
    w[c] = q;
    codes[c] = codes_p[i];
  }
}

// Partial sums of H .* G in f64, one per block.
__global__ void dot_kernel(const float *h, const float *g, int64_t count, double *partial) {
  __shared__ double s[256];
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x)
    acc += double(h[i]) * double(g[i]);
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int o = 128; o > 0; o >>= 1) {
    if (threadIdx.x < o) s[threadIdx.x] += s[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

unsigned grid_for(int64_t n) { return unsigned(std::min<int64_t>((n + 255) / 256, 65535 * 4)); }

// b[i][j] = Hd[n-1-i][n-1-j], Hd the permuted f64 Hessian with dead inputs masked (identity rows
// and columns) plus abs_damp on the diagonal: the CPU's factor() input, reversed. Reads of h are
// gathered through perm (rows of h stay in L2); writes are coalesced. Bytes: 12 n^2.
__global__ void damped_reversed_kernel(const float *h, int64_t n, const int32_t *perm,
                                       const char *dead, double abs_damp, double *b) {
  const int64_t total = n * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = n - 1 - i / n, q = n - 1 - i % n;
    const int64_t sp = perm[p], sq = perm[q];
    double v = dead[sp] || dead[sq] ? (p == q ? 1.0 : 0.0) : double(h[sp * n + sq]);
    if (p == q) v += abs_damp;
    b[i] = v;
  }
}

// b = J a J for f64 row-major a (the entry point's input). Bytes: 16 n^2.
__global__ void reversed_kernel(const double *a, int64_t n, double *b) {
  const int64_t total = n * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    b[i] = a[total - 1 - i];
}

// u = J L^-1 J with L^-1 in the row-major lower triangle of b (upper triangle of b ignored):
// u[i][j] = b[n-1-i][n-1-j] for j >= i, else 0; sets *bad on a non-finite value of u. Reads run
// backwards through b, still coalesced. Bytes: (8 + sizeof(T)) n^2.
template <class T>
__global__ void upper_from_reversed_kernel(const double *b, int64_t n, T *u, int *bad) {
  const int64_t total = n * n;
  int any = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const T v = i % n >= i / n ? T(b[total - 1 - i]) : T(0);
    if (!isfinite(v)) any = 1;
    u[i] = v;
  }
  if (__syncthreads_or(any) && threadIdx.x == 0) atomicOr(bad, 1);
}

template <class T>
fp4_status read_out_upper(const double *b, int64_t n, T *u, bool *finite) {
  int *bad = nullptr;
  FP4_CU(cudaMalloc(&bad, sizeof(int)));
  cudaError_t e = cudaMemset(bad, 0, sizeof(int));
  if (e == cudaSuccess) {
    upper_from_reversed_kernel<T><<<grid_for(n * n), 256>>>(b, n, u, bad);
    e = cudaGetLastError();
  }
  int host = 0;
  if (e == cudaSuccess) e = cudaMemcpy(&host, bad, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(bad);
  FP4_CU(e);
  *finite = host == 0;
  return FP4_OK;
}

// The GPU twin of fp4::gptq::factor writing U (f32, device) and dead (host; also uploaded to
// dead_d). FP4_ERR_NUMERIC for H with NaN/Inf or when every damping fails; any other failure
// status means the caller may factor on the host instead.
fp4_status factor_on_device(const float *h, int64_t n, const int32_t *perm, const int32_t *perm_d,
                            double damp, int32_t max_retries, float *u, std::vector<char> &dead,
                            char *dead_d, double *abs_damp_out) {
  bool bad = false;
  if (fp4_status s = any_bad(h, n * n, false, &bad)) return s;
  if (bad) return fp4::fail(FP4_ERR_NUMERIC, "fp4_gptq_solve: H has NaN or Inf values");
  std::vector<float> diag(n);
  FP4_CU(cudaMemcpy2D(diag.data(), sizeof(float), h, size_t(n + 1) * sizeof(float),
                      sizeof(float), size_t(n), cudaMemcpyDeviceToHost));
  dead.assign(size_t(n), 0);
  for (int64_t j = 0; j < n; j++) dead[j] = diag[j] == 0.0f;
  double mean_diag = 0;
  for (int64_t p = 0; p < n; p++) mean_diag += dead[perm[p]] ? 1.0 : double(diag[perm[p]]);
  mean_diag /= double(n);
  FP4_CU(cudaMemcpy(dead_d, dead.data(), n, cudaMemcpyHostToDevice));

  Buffers buf;
  double *b = nullptr;
  FP4_CU(buf.alloc(&b, size_t(n) * n));
  double rel = damp, abs_damp = 0;
  bool factored = false;
  for (int attempt = 0; attempt <= max_retries && !factored; attempt++) {
    if (attempt > 0) rel *= 10;
    abs_damp = rel * mean_diag;
    damped_reversed_kernel<<<grid_for(n * n), 256>>>(h, n, perm_d, dead_d, abs_damp, b);
    FP4_CU_LAUNCH();
    bool pd = false;
    if (fp4_status s = lower_inverse_of_cholesky(b, n, &pd)) return s;
    if (pd)
      if (fp4_status s = read_out_upper(b, n, u, &factored)) return s;
  }
  if (!factored)
    return fp4::fail(FP4_ERR_NUMERIC,
                     "fp4_gptq_solve: the Hessian is not positive definite even with damping "
                     "%g x mean diagonal (%d retries from %g)", rel, max_retries, damp);
  *abs_damp_out = abs_damp;
  return FP4_OK;
}

// Says once per process why the CUDA solve factors on the host (it is much slower there).
void note_host_factor(const char *why) {
  static std::once_flag once;
  std::call_once(once, [why] {
    std::fprintf(stderr, "fp4lab: %s; the CUDA GPTQ solve factors on the host\n", why);
  });
}

}  // namespace

fp4_status inverse_cholesky_upper(const double *a, int64_t n, double *u) {
  if (fp4_status s = ensure_device()) return s;
  const size_t count = size_t(n) * size_t(n);
  if (!cusolver_status(nullptr, 0)) {
    std::vector<double> ah(count), uh(count);
    FP4_CU(cudaMemcpy(ah.data(), a, count * sizeof(double), cudaMemcpyDeviceToHost));
    if (!fp4::cpu::upper_cholesky_of_inverse(ah.data(), n, uh.data()))
      return fp4::fail(FP4_ERR_NUMERIC,
                       "fp4_inverse_cholesky_upper: the matrix is not positive definite");
    FP4_CU(cudaMemcpy(u, uh.data(), count * sizeof(double), cudaMemcpyHostToDevice));
    return FP4_OK;
  }
  Buffers buf;
  double *b = nullptr;
  FP4_CU(buf.alloc(&b, count));
  reversed_kernel<<<grid_for(n * n), 256>>>(a, n, b);
  FP4_CU_LAUNCH();
  bool pd = false, finite = false;
  if (fp4_status s = lower_inverse_of_cholesky(b, n, &pd)) return s;
  if (pd)
    if (fp4_status s = read_out_upper(b, n, u, &finite)) return s;
  if (!pd || !finite)
    return fp4::fail(FP4_ERR_NUMERIC,
                     "fp4_inverse_cholesky_upper: the matrix is not positive definite");
  return FP4_OK;
}

fp4_status gptq_solve(float *w, const float *h, int64_t rows, int64_t cols, const float *scales,
                      int32_t group_size, int32_t element, const int32_t *perm, double damp,
                      int32_t block_size, int32_t max_retries, uint8_t *codes, double *info) {
  if (fp4_status s = ensure_device()) return s;
  const int64_t n = cols, groups = cols / group_size;
  const int bs = int(std::min<int64_t>(block_size, n));
  const size_t smem = size_t(bs) * (kRowsPerCta + 1) * sizeof(float) + size_t(bs) * kRowsPerCta;
  if (smem > 200 * 1024)
    return fp4::fail(FP4_ERR_INVALID_ARGUMENT,
                     "fp4_gptq_solve: block size %d is too large for the CUDA solver (at most "
                     "1024)", block_size);
  bool bad = false;
  if (fp4_status s = any_bad(w, rows * cols, false, &bad)) return s;
  if (bad) return fp4::fail(FP4_ERR_NUMERIC, "fp4_gptq_solve: W has NaN or Inf values");
  if (fp4_status s = any_bad(scales, rows * groups, true, &bad)) return s;
  if (bad)
    return fp4::fail(FP4_ERR_INVALID_ARGUMENT,
                     "fp4_gptq_solve: group scales must be finite and >= 0");

  const double t0 = fp4::gptq::now_seconds();
  Buffers buf;
  float *u = nullptr, *wp = nullptr, *err_t = nullptr, *d = nullptr, *g = nullptr;
  int32_t *perm_d = nullptr, *gpos_d = nullptr;
  char *dead_d = nullptr;
  uint8_t *codes_p = nullptr;
  double *partial = nullptr;
  FP4_CU(buf.alloc(&u, size_t(n) * n));
  FP4_CU(buf.alloc(&perm_d, n));
  FP4_CU(buf.alloc(&dead_d, n));
  FP4_CU(cudaMemcpy(perm_d, perm, n * sizeof(int32_t), cudaMemcpyHostToDevice));
  std::vector<char> dead;
  double abs_damp = 0;
  bool on_device = false;
  char why[512] = "";
  if (cusolver_status(why, sizeof why)) {
    const fp4_status s =
        factor_on_device(h, n, perm, perm_d, damp, max_retries, u, dead, dead_d, &abs_damp);
    if (s == FP4_ERR_NUMERIC) return s;
    on_device = s == FP4_OK;
    if (!on_device) fp4_last_error(why, sizeof why);
  }
  if (!on_device) {
    note_host_factor(why);
    std::vector<float> hh(size_t(n) * size_t(n));
    FP4_CU(cudaMemcpy(hh.data(), h, hh.size() * sizeof(float), cudaMemcpyDeviceToHost));
    std::vector<float> uh;
    if (fp4_status s =
            fp4::gptq::factor(hh.data(), n, perm, damp, max_retries, uh, dead, &abs_damp))
      return s;
    hh = std::vector<float>();
    FP4_CU(cudaMemcpy(u, uh.data(), uh.size() * sizeof(float), cudaMemcpyHostToDevice));
    FP4_CU(cudaMemcpy(dead_d, dead.data(), n, cudaMemcpyHostToDevice));
  }
  std::vector<int32_t> gpos(n);
  for (int64_t p = 0; p < n; p++) gpos[p] = perm[p] / group_size;
  FP4_CU(buf.alloc(&wp, size_t(rows) * n));
  FP4_CU(buf.alloc(&codes_p, size_t(rows) * n));
  FP4_CU(buf.alloc(&err_t, size_t(bs) * rows));
  FP4_CU(buf.alloc(&gpos_d, n));
  FP4_CU(cudaMemcpy(gpos_d, gpos.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice));
  FP4_CU(sync_library());
  const double t1 = fp4::gptq::now_seconds();

  gather_kernel<<<grid_for(rows * n), 256>>>(w, rows, n, perm_d, dead_d, wp);
  FP4_CU_LAUNCH();
  FP4_CU(cudaFuncSetAttribute(block_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              int(smem)));
  const unsigned row_ctas = unsigned((rows + kRowsPerCta - 1) / kRowsPerCta);
  for (int64_t c1 = 0; c1 < n; c1 += bs) {
    const int64_t c2 = std::min<int64_t>(n, c1 + bs);
    const int bw = int(c2 - c1);
    block_kernel<<<row_ctas, kRowsPerCta, smem>>>(wp, codes_p, err_t, u, scales, gpos_d, rows, n,
                                                  groups, c1, bw, element);
    FP4_CU_LAUNCH();
    if (c2 < n) {
      dim3 grid(unsigned((n - c2 + kUT - 1) / kUT), unsigned((rows + kUT - 1) / kUT));
      update_kernel<<<grid, 256>>>(wp, err_t, u, rows, n, c1, bw, c2);
      FP4_CU_LAUNCH();
    }
  }
  FP4_CU(buf.alloc(&d, size_t(rows) * n));
  finish_kernel<<<grid_for(rows * n), 256>>>(w, codes, wp, codes_p, perm_d, rows, n, d);
  FP4_CU_LAUNCH();
  FP4_CU(sync_library());
  const double t2 = fp4::gptq::now_seconds();

  // Proxy loss trace(D H D^T) = sum_ij H_ij (D^T D)_ij.
  FP4_CU(buf.alloc(&g, size_t(n) * n));
  if (fp4_status s = syrk_f32(d, rows, n, g, 1.0f, 0.0f)) return s;
  const unsigned pb = 1024;
  FP4_CU(buf.alloc(&partial, pb));
  dot_kernel<<<pb, 256>>>(h, g, n * n, partial);
  FP4_CU_LAUNCH();
  std::vector<double> ph(pb);
  FP4_CU(cudaMemcpy(ph.data(), partial, pb * sizeof(double), cudaMemcpyDeviceToHost));
  double loss = 0;
  for (double v : ph) loss += v;

  info[0] = abs_damp;
  info[1] = loss;
  info[2] = t1 - t0;
  info[3] = t2 - t1;
  return FP4_OK;
}

}  // namespace fp4::cuda
