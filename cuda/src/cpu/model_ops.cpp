// CPU backend of the transformer building blocks (fp4lab/model.h).
//
// The linear layer dominates the forward pass (about 2 * params FLOPs per token), so it is the
// one kernel tuned here: register-blocked dot products written with GCC vector extensions,
// compiled twice (x86-64-v3 = AVX2 + FMA, and the baseline) and dispatched at load time by
// target_clones, tiled for L2 and spread over cores with OpenMP. FMA contraction is enabled
// for that kernel only; the rest of the library keeps -ffp-contract=off because the formats
// must round exactly like the TypeScript reference, and nothing here feeds a rounding rule.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../cuda_backend.hpp"
#include "../error.hpp"

// Vector types in signatures of inline helpers trigger an ABI note on the baseline target;
// none of them crosses a translation unit.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace {

typedef float v8f __attribute__((vector_size(32)));

constexpr int kLanes = 8;

inline float bf16_to_f32(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline v8f load8(const float *p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float hsum(const v8f &v) {
  float s = 0;
  for (int l = 0; l < kLanes; l++) s += v[l];
  return s;
}

// One MR x NR tile of y = x w^T: MR rows of x against NR rows of w (f32, row stride k_in),
// each dot product over the full K in kLanes-wide accumulators (3 x 4 tiles keep 12
// accumulators, 3 x-vectors and one w-vector in the 16 AVX2 registers). Per k-step it loads
// MR + NR vectors (32 bytes each) for MR * NR FMAs.
template <int MR, int NR>
__attribute__((always_inline)) inline void micro_tile(const float *x, const float *w, float *y,
                                                      int64_t n_out, int64_t k_in) {
  v8f acc[MR][NR];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) acc[i][j] = v8f{};
  int64_t k = 0;
  for (; k + kLanes <= k_in; k += kLanes) {
    v8f xv[MR];
    for (int i = 0; i < MR; i++) xv[i] = load8(x + i * k_in + k);
    for (int j = 0; j < NR; j++) {
      v8f wv = load8(w + j * k_in + k);
      for (int i = 0; i < MR; i++) acc[i][j] += xv[i] * wv;
    }
  }
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) {
      float s = hsum(acc[i][j]);
      for (int64_t kk = k; kk < k_in; kk++) s += x[i * k_in + kk] * w[j * k_in + kk];
      y[i * n_out + j] = s;
    }
}

template <int MR>
__attribute__((always_inline)) inline void micro_rows(const float *x, const float *w, float *y,
                                                      int nr, int64_t n_out, int64_t k_in) {
  switch (nr) {
    case 4: micro_tile<MR, 4>(x, w, y, n_out, k_in); break;
    case 3: micro_tile<MR, 3>(x, w, y, n_out, k_in); break;
    case 2: micro_tile<MR, 2>(x, w, y, n_out, k_in); break;
    default: micro_tile<MR, 1>(x, w, y, n_out, k_in); break;
  }
}

constexpr int kMR = 3, kNR = 4;
// One block: 96 rows of x (96 * K * 4 bytes) against 64 weight rows, sized for a 1 MB L2 at
// K = 1536 with the weights streamed.
constexpr int64_t kBlockRows = 96, kBlockOut = 64;

// One (rows m0..m1) x (outputs n0..n1) block. Each quad of weight rows is widened to f32 once
// into `wq` (NR * K floats, in L1 for K <= 1536) and reused by every row of the block, so the
// inner loop does no conversions.
template <typename W>
__attribute__((always_inline)) inline void linear_block(const float *x, const W *w, float *y,
                                                        float *wq, int64_t m0, int64_t m1,
                                                        int64_t n0, int64_t n1, int64_t n_out,
                                                        int64_t k_in) {
  for (int64_t n = n0; n < n1; n += kNR) {
    const int nr = int(n1 - n < kNR ? n1 - n : kNR);
    const float *wp;
    if constexpr (std::is_same_v<W, float>) {
      wp = w + n * k_in;
    } else {
      const uint16_t *src = w + n * k_in;
      for (int64_t i = 0; i < nr * k_in; i++) wq[i] = bf16_to_f32(src[i]);
      wp = wq;
    }
    for (int64_t m = m0; m < m1; m += kMR) {
      const int mr = int(m1 - m < kMR ? m1 - m : kMR);
      const float *xp = x + m * k_in;
      float *yp = y + m * n_out + n;
      if (mr == 3) micro_rows<3>(xp, wp, yp, nr, n_out, k_in);
      else if (mr == 2) micro_rows<2>(xp, wp, yp, nr, n_out, k_in);
      else micro_rows<1>(xp, wp, yp, nr, n_out, k_in);
    }
  }
}

__attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=fast"))) void
linear_block_bf16(const float *x, const uint16_t *w, float *y, float *wq, int64_t m0, int64_t m1,
                  int64_t n0, int64_t n1, int64_t n_out, int64_t k_in) {
  linear_block(x, w, y, wq, m0, m1, n0, n1, n_out, k_in);
}

__attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=fast"))) void
linear_block_f32(const float *x, const float *w, float *y, int64_t m0, int64_t m1, int64_t n0,
                 int64_t n1, int64_t n_out, int64_t k_in) {
  linear_block(x, w, y, nullptr, m0, m1, n0, n1, n_out, k_in);
}

// One query row of causal attention: scores against keys 0..t (row stride kv_stride), softmax
// with the running max subtracted and the sum in f64, then the weighted sum of values.
// Bytes moved: (t + 1) * head_dim * 8 of keys and values per query.
__attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=fast"))) void
attend_one(const float *qv, const float *k, const float *v, float *out, float *p, int64_t t,
           int64_t kv_stride, int64_t head_dim, float scale) {
  float mx = -INFINITY;
  for (int64_t s = 0; s <= t; s++) {
    const float *kv = k + s * kv_stride;
    v8f acc = v8f{};
    int64_t d = 0;
    for (; d + kLanes <= head_dim; d += kLanes) acc += load8(qv + d) * load8(kv + d);
    float dot = hsum(acc);
    for (; d < head_dim; d++) dot += qv[d] * kv[d];
    p[s] = dot * scale;
    mx = std::max(mx, p[s]);
  }
  double sum = 0;
  for (int64_t s = 0; s <= t; s++) {
    p[s] = std::exp(p[s] - mx);
    sum += p[s];
  }
  const float inv = float(1.0 / sum);
  for (int64_t d = 0; d < head_dim; d++) out[d] = 0;
  for (int64_t s = 0; s <= t; s++) {
    const float *vv = v + s * kv_stride;
    const float ps = p[s] * inv;
    for (int64_t d = 0; d < head_dim; d++) out[d] += ps * vv[d];
  }
}

fp4_status require_cpu(int32_t device, const char *fn) {
  if (device == FP4_DEVICE_CPU) return FP4_OK;
  if (device == FP4_DEVICE_CUDA)
    return fp4::fail(FP4_ERR_INVALID_ARGUMENT, "%s: the CUDA backend has no model kernels yet", fn);
  return fp4::fail(FP4_ERR_INVALID_ARGUMENT, "%s: unknown device id %d (0 = cpu, 1 = cuda)", fn,
                   device);
}

fp4_status require_weight_dtype(int32_t dtype, const char *fn) {
  if (dtype == FP4_DTYPE_F32 || dtype == FP4_DTYPE_BF16) return FP4_OK;
  return fp4::fail(FP4_ERR_INVALID_ARGUMENT, "%s: weight dtype %d is not f32 (0) or bf16 (2)", fn,
                   dtype);
}

float weight_at(const void *w, int32_t dtype, int64_t i) {
  return dtype == FP4_DTYPE_BF16 ? bf16_to_f32(static_cast<const uint16_t *>(w)[i])
                                 : static_cast<const float *>(w)[i];
}

// OpenMP regions live outside FP4_GUARD: a pragma cannot sit inside a macro argument.

void linear_parallel(const float *x, const void *w, int32_t w_dtype, float *y, int64_t rows,
                     int64_t out_features, int64_t in_features) {
  const int64_t mb = (rows + kBlockRows - 1) / kBlockRows;
  const int64_t nb = (out_features + kBlockOut - 1) / kBlockOut;
#pragma omp parallel
  {
    std::vector<float> wq(w_dtype == FP4_DTYPE_BF16 ? size_t(kNR * in_features) : 0);
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t bn = 0; bn < nb; bn++)
      for (int64_t bm = 0; bm < mb; bm++) {
        const int64_t m0 = bm * kBlockRows, m1 = std::min(rows, m0 + kBlockRows);
        const int64_t n0 = bn * kBlockOut, n1 = std::min(out_features, n0 + kBlockOut);
        if (w_dtype == FP4_DTYPE_BF16)
          linear_block_bf16(x, static_cast<const uint16_t *>(w), y, wq.data(), m0, m1, n0, n1,
                            out_features, in_features);
        else
          linear_block_f32(x, static_cast<const float *>(w), y, m0, m1, n0, n1, out_features,
                           in_features);
      }
  }
}

void rmsnorm_rows(const float *x, const void *w, int32_t w_dtype, float *y, int64_t rows,
                  int64_t dim, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * dim;
    float *yr = y + r * dim;
    double ss = 0;
    for (int64_t d = 0; d < dim; d++) ss += double(xr[d]) * xr[d];
    // As transformers does in f32: x * rsqrt(mean + eps), then times the weight.
    const float inv = float(1.0 / std::sqrt(double(float(ss / double(dim))) + double(eps)));
    for (int64_t d = 0; d < dim; d++) yr[d] = weight_at(w, w_dtype, d) * (xr[d] * inv);
  }
}

void rope_rows(float *x, const float *cos, const float *sin, int64_t tokens, int64_t heads,
               int64_t head_dim) {
  const int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; t++)
    for (int64_t h = 0; h < heads; h++) {
      float *v = x + (t * heads + h) * head_dim;
      const float *c = cos + t * half, *s = sin + t * half;
      for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
}

void attention_rows(const float *q, const float *k, const float *v, float *out, int64_t tokens,
                    int64_t heads, int64_t kv_heads, int64_t head_dim, float scale) {
  const int64_t group = heads / kv_heads;
  const int64_t q_stride = heads * head_dim, kv_stride = kv_heads * head_dim;
#pragma omp parallel
  {
    std::vector<float> p(static_cast<size_t>(tokens));
    // Later queries see more keys: hand out (query, head) pairs dynamically.
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int64_t t = 0; t < tokens; t++)
      for (int64_t h = 0; h < heads; h++)
        attend_one(q + t * q_stride + h * head_dim, k + (h / group) * head_dim,
                   v + (h / group) * head_dim, out + t * q_stride + h * head_dim, p.data(), t,
                   kv_stride, head_dim, scale);
  }
}

void silu_mul_all(const float *gate, const float *up, float *out, uint64_t n) {
#pragma omp parallel for schedule(static)
  for (uint64_t i = 0; i < n; i++) {
    const float g = gate[i];
    out[i] = (g / (1.0f + std::exp(-g))) * up[i];
  }
}

void nll_rows(const float *logits, const int32_t *targets, float *nll, int64_t rows,
              int64_t vocab) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float *l = logits + r * vocab;
    float mx = -INFINITY;
    for (int64_t i = 0; i < vocab; i++) mx = std::max(mx, l[i]);
    double sum = 0;
    for (int64_t i = 0; i < vocab; i++) sum += std::exp(double(l[i]) - double(mx));
    nll[r] = float(std::log(sum) + double(mx) - double(l[targets[r]]));
  }
}

}  // namespace

FP4_API fp4_status fp4_linear(int32_t device, const float *x, const void *w, int32_t w_dtype,
                              float *y, int64_t rows, int64_t out_features, int64_t in_features) {
  FP4_GUARD({
    if (fp4_status s = require_cpu(device, "fp4_linear")) return s;
    if (fp4_status s = require_weight_dtype(w_dtype, "fp4_linear")) return s;
    FP4_REQUIRE(rows >= 0 && out_features >= 0 && in_features >= 0,
                "fp4_linear: negative size (rows %lld, out %lld, in %lld)", (long long)rows,
                (long long)out_features, (long long)in_features);
    if (rows == 0 || out_features == 0) return FP4_OK;
    FP4_REQUIRE(x && w && y, "fp4_linear: null pointer");
    linear_parallel(x, w, w_dtype, y, rows, out_features, in_features);
    return FP4_OK;
  })
}

FP4_API fp4_status fp4_embedding(int32_t device, const int32_t *ids, const void *table,
                                 int32_t table_dtype, float *y, int64_t tokens, int64_t vocab,
                                 int64_t dim) {
  FP4_GUARD({
    if (fp4_status s = require_cpu(device, "fp4_embedding")) return s;
    if (fp4_status s = require_weight_dtype(table_dtype, "fp4_embedding")) return s;
    FP4_REQUIRE(tokens >= 0 && vocab > 0 && dim > 0, "fp4_embedding: bad sizes");
    if (tokens == 0) return FP4_OK;
    FP4_REQUIRE(ids && table && y, "fp4_embedding: null pointer");
    for (int64_t t = 0; t < tokens; t++)
      FP4_REQUIRE(ids[t] >= 0 && ids[t] < vocab,
                  "fp4_embedding: token id %d at position %lld is outside the vocabulary [0, %lld)",
                  ids[t], (long long)t, (long long)vocab);
    for (int64_t t = 0; t < tokens; t++)
      for (int64_t d = 0; d < dim; d++)
        y[t * dim + d] = weight_at(table, table_dtype, int64_t(ids[t]) * dim + d);
    return FP4_OK;
  })
}

FP4_API fp4_status fp4_rmsnorm(int32_t device, const float *x, const void *w, int32_t w_dtype,
                               float *y, int64_t rows, int64_t dim, float eps) {
  FP4_GUARD({
    if (fp4_status s = require_cpu(device, "fp4_rmsnorm")) return s;
    if (fp4_status s = require_weight_dtype(w_dtype, "fp4_rmsnorm")) return s;
    FP4_REQUIRE(rows >= 0 && dim > 0, "fp4_rmsnorm: bad sizes (rows %lld, dim %lld)",
                (long long)rows, (long long)dim);
    FP4_REQUIRE(eps >= 0 && std::isfinite(eps), "fp4_rmsnorm: eps must be finite and >= 0");
    if (rows == 0) return FP4_OK;
    FP4_REQUIRE(x && w && y, "fp4_rmsnorm: null pointer");
    rmsnorm_rows(x, w, w_dtype, y, rows, dim, eps);
    return FP4_OK;
  })
}

FP4_API fp4_status fp4_rope(int32_t device, float *x, const float *cos, const float *sin,
                            int64_t tokens, int64_t heads, int64_t head_dim) {
  FP4_GUARD({
    if (fp4_status s = require_cpu(device, "fp4_rope")) return s;
    FP4_REQUIRE(tokens >= 0 && heads > 0 && head_dim > 0 && head_dim % 2 == 0,
                "fp4_rope: bad sizes (tokens %lld, heads %lld, head_dim %lld must be even)",
                (long long)tokens, (long long)heads, (long long)head_dim);
    if (tokens == 0) return FP4_OK;
    FP4_REQUIRE(x && cos && sin, "fp4_rope: null pointer");
    rope_rows(x, cos, sin, tokens, heads, head_dim);
    return FP4_OK;
  })
}

FP4_API fp4_status fp4_attention(int32_t device, const float *q, const float *k, const float *v,
                                 float *out, int64_t tokens, int64_t heads, int64_t kv_heads,
                                 int64_t head_dim, float scale) {
  FP4_GUARD({
    if (fp4_status s = require_cpu(device, "fp4_attention")) return s;
    FP4_REQUIRE(tokens >= 0 && heads > 0 && kv_heads > 0 && head_dim > 0,
                "fp4_attention: bad sizes (tokens %lld, heads %lld, kv_heads %lld, head_dim %lld)",
                (long long)tokens, (long long)heads, (long long)kv_heads, (long long)head_dim);
    FP4_REQUIRE(heads % kv_heads == 0, "fp4_attention: heads %lld not a multiple of kv_heads %lld",
                (long long)heads, (long long)kv_heads);
    if (tokens == 0) return FP4_OK;
    FP4_REQUIRE(q && k && v && out, "fp4_attention: null pointer");
    attention_rows(q, k, v, out, tokens, heads, kv_heads, head_dim, scale);
    return FP4_OK;
  })
}

FP4_API fp4_status fp4_silu_mul(int32_t device, const float *gate, const float *up, float *out,
                                uint64_t n) {
  FP4_GUARD({
    if (fp4_status s = require_cpu(device, "fp4_silu_mul")) return s;
    if (n == 0) return FP4_OK;
    FP4_REQUIRE(gate && up && out, "fp4_silu_mul: null pointer");
    silu_mul_all(gate, up, out, n);
    return FP4_OK;
  })
}

FP4_API fp4_status fp4_add_inplace(int32_t device, float *y, const float *x, uint64_t n) {
  FP4_GUARD({
    if (fp4_status s = require_cpu(device, "fp4_add_inplace")) return s;
    if (n == 0) return FP4_OK;
    FP4_REQUIRE(y && x, "fp4_add_inplace: null pointer");
    for (uint64_t i = 0; i < n; i++) y[i] += x[i];
    return FP4_OK;
  })
}

FP4_API fp4_status fp4_nll(int32_t device, const float *logits, const int32_t *targets,
                           float *nll, int64_t rows, int64_t vocab) {
  FP4_GUARD({
    FP4_REQUIRE(device == FP4_DEVICE_CPU || device == FP4_DEVICE_CUDA,
                "fp4_nll: unknown device id %d (0 = cpu, 1 = cuda)", device);
    FP4_REQUIRE(rows >= 0 && vocab > 0, "fp4_nll: bad sizes (rows %lld, vocab %lld)",
                (long long)rows, (long long)vocab);
    if (rows == 0) return FP4_OK;
    FP4_REQUIRE(logits && targets && nll, "fp4_nll: null pointer");
    if (device == FP4_DEVICE_CUDA) {
      FP4_CUDA_ONLY(return fp4::cuda::nll(logits, targets, nll, rows, vocab));
    }
    for (int64_t r = 0; r < rows; r++)
      FP4_REQUIRE(targets[r] >= 0 && targets[r] < vocab,
                  "fp4_nll: target %d of row %lld is outside the vocabulary [0, %lld)", targets[r],
                  (long long)r, (long long)vocab);
    nll_rows(logits, targets, nll, rows, vocab);
    return FP4_OK;
  })
}
