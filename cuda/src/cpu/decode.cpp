// Decode-step building blocks (fp4lab/decode.h): argument checks, device dispatch, and the CPU
// twins of the CUDA kernels in cuda/src/cuda/decode_*.cu.
//
// With f32 activations and an f32 cache these compute what the whole-window ops of
// fp4lab/model.h compute (the linear layer is fp4_linear itself, RMSNorm and RoPE use the same
// f32 expressions, attention the same f64 softmax sum), so a KV-cache decode reproduces the
// full forward pass to within summation order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../decode_backend.hpp"
#include "../error.hpp"

namespace {

using fp4::dec::load;
using fp4::dec::store;

bool act_dtype(int32_t d) { return d == FP4_DTYPE_F32 || d == FP4_DTYPE_BF16; }

fp4_status check_device(int32_t device, const char *fn) {
  if (device == FP4_DEVICE_CPU || device == FP4_DEVICE_CUDA) return FP4_OK;
  return fp4::fail(FP4_ERR_INVALID_ARGUMENT, "%s: unknown device id %d (0 = cpu, 1 = cuda)", fn,
                   device);
}

fp4_status check_dtypes(const char *fn, std::initializer_list<int32_t> dtypes) {
  for (int32_t d : dtypes)
    FP4_REQUIRE(act_dtype(d), "%s: dtype %d is not f32 (0) or bf16 (2)", fn, d);
  return FP4_OK;
}

// The CPU twins read *pos here; CUDA kernels read it on the device.
fp4_status check_pos(const char *fn, const int32_t *pos, int64_t ctx, int64_t tokens) {
  FP4_REQUIRE(pos, "%s: pos is null", fn);
  FP4_REQUIRE(*pos >= 0 && int64_t(*pos) + tokens <= ctx,
              "%s: positions %d..%lld do not fit a cache of %lld rows", fn, *pos,
              (long long)(int64_t(*pos) + tokens - 1), (long long)ctx);
  return FP4_OK;
}

void rmsnorm_cpu(const float *x, const void *w, int32_t w_dtype, void *y, int32_t y_dtype,
                 int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * dim;
    double ss = 0;
    for (int64_t d = 0; d < dim; d++) ss += double(xr[d]) * xr[d];
    const float inv = float(1.0 / std::sqrt(double(float(ss / double(dim))) + double(eps)));
    for (int64_t d = 0; d < dim; d++) store(y, y_dtype, r * dim + d, load(w, w_dtype, d) * (xr[d] * inv));
  }
}

std::vector<float> widen(const void *x, int32_t dtype, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; i++) out[i] = load(x, dtype, int64_t(i));
  return out;
}

fp4_status linear_cpu(const void *x, int32_t x_dtype, const void *w, int32_t w_dtype, void *y,
                      int32_t y_dtype, int64_t rows, int64_t out_f, int64_t in_f) {
  // fp4_linear is the tuned kernel; bf16 activations are widened around it.
  std::vector<float> xs, ys;
  const float *xf = static_cast<const float *>(x);
  if (x_dtype == FP4_DTYPE_BF16) {
    xs = widen(x, x_dtype, size_t(rows * in_f));
    xf = xs.data();
  }
  float *yf = static_cast<float *>(y);
  if (y_dtype == FP4_DTYPE_BF16) {
    ys.resize(size_t(rows * out_f));
    yf = ys.data();
  }
  if (fp4_status s = fp4_linear(FP4_DEVICE_CPU, xf, w, w_dtype, yf, rows, out_f, in_f)) return s;
  if (y_dtype == FP4_DTYPE_BF16)
    for (int64_t i = 0; i < rows * out_f; i++) store(y, y_dtype, i, ys[size_t(i)]);
  return FP4_OK;
}

void rope_cpu(void *x, int32_t dtype, const float *cos, const float *sin, int64_t p0,
              int64_t tokens, int64_t heads, int64_t head_dim) {
  const int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; t++)
    for (int64_t h = 0; h < heads; h++) {
      const int64_t base = (t * heads + h) * head_dim;
      const float *c = cos + (p0 + t) * half, *s = sin + (p0 + t) * half;
      for (int64_t i = 0; i < half; i++) {
        float ra, rb;
        fp4::dec::rope_pair(load(x, dtype, base + i), load(x, dtype, base + i + half), c[i], s[i],
                            ra, rb);
        store(x, dtype, base + i, ra);
        store(x, dtype, base + i + half, rb);
      }
    }
}

// One query row against cache rows 0..last: scores in f32, softmax with the running max
// subtracted and its sum in f64, then the weighted sum of values in f32 (as attend_one in
// model_ops.cpp). Bytes moved: (last + 1) * head_dim * 2 * sizeof(cache element).
void attend_cached(const float *qv, const void *k, const void *v, int32_t cdt, float *out,
                   float *p, int64_t last, int64_t kv_stride, int64_t head_dim, float scale) {
  float mx = -INFINITY;
  for (int64_t s = 0; s <= last; s++) {
    float dot = 0;
    for (int64_t d = 0; d < head_dim; d++) dot += qv[d] * load(k, cdt, s * kv_stride + d);
    p[s] = dot * scale;
    mx = std::max(mx, p[s]);
  }
  double sum = 0;
  for (int64_t s = 0; s <= last; s++) {
    p[s] = std::exp(p[s] - mx);
    sum += p[s];
  }
  const float inv = float(1.0 / sum);
  for (int64_t d = 0; d < head_dim; d++) out[d] = 0;
  for (int64_t s = 0; s <= last; s++) {
    const float ps = p[s] * inv;
    for (int64_t d = 0; d < head_dim; d++) out[d] += ps * load(v, cdt, s * kv_stride + d);
  }
}

void attention_cpu(const void *q, int32_t q_dtype, const void *kc, const void *vc, int32_t cdt,
                   void *out, int32_t out_dtype, int64_t p0, int64_t tokens, int64_t heads,
                   int64_t kv_heads, int64_t head_dim, float scale) {
  const int64_t group = heads / kv_heads, kv_stride = kv_heads * head_dim;
  const size_t esize = cdt == FP4_DTYPE_BF16 ? 2 : 4;
#pragma omp parallel
  {
    std::vector<float> p(size_t(p0 + tokens)), qv(size_t{0} + size_t(head_dim)),
        o(size_t{0} + size_t(head_dim));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t t = 0; t < tokens; t++)
      for (int64_t h = 0; h < heads; h++) {
        const int64_t base = (t * heads + h) * head_dim;
        for (int64_t d = 0; d < head_dim; d++) qv[size_t(d)] = load(q, q_dtype, base + d);
        const size_t off = size_t((h / group) * head_dim) * esize;
        attend_cached(qv.data(), static_cast<const char *>(kc) + off,
                      static_cast<const char *>(vc) + off, cdt, o.data(), p.data(), p0 + t,
                      kv_stride, head_dim, scale);
        for (int64_t d = 0; d < head_dim; d++) store(out, out_dtype, base + d, o[size_t(d)]);
      }
  }
}

void embedding_cpu(const int32_t *ids, const void *table, int32_t dtype, float *y, int64_t tokens,
                   int64_t dim) {
  for (int64_t t = 0; t < tokens; t++)
    for (int64_t d = 0; d < dim; d++) y[t * dim + d] = load(table, dtype, int64_t(ids[t]) * dim + d);
}

void kv_store_cpu(const void *x, int32_t x_dtype, void *cache, int32_t cache_dtype, int64_t p0,
                  int64_t tokens, int64_t width) {
  for (int64_t i = 0; i < tokens * width; i++)
    store(cache, cache_dtype, p0 * width + i, load(x, x_dtype, i));
}

void silu_mul_cpu(const void *gate, const void *up, void *out, int32_t dtype, uint64_t n) {
  for (uint64_t i = 0; i < n; i++) {
    store(out, dtype, int64_t(i),
          fp4::dec::silu_mul(load(gate, dtype, int64_t(i)), load(up, dtype, int64_t(i))));
  }
}

void add_cpu(float *y, const void *x, int32_t x_dtype, uint64_t n) {
  for (uint64_t i = 0; i < n; i++) y[i] += load(x, x_dtype, int64_t(i));
}

void argmax_cpu(const float *x, int64_t rows, int64_t n, int32_t *out) {
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * n;
    int32_t best = 0;
    bool found = false;
    for (int64_t i = 0; i < n; i++)
      if (!std::isnan(xr[i]) && (!found || xr[i] > xr[best])) {
        best = int32_t(i);
        found = true;
      }
    out[r] = best;
  }
}

void argmax_feed_cpu(const float *x, int64_t n, int32_t *out, int32_t *pos, int32_t *history,
                     int64_t capacity) {
  argmax_cpu(x, 1, n, out);
  const int32_t p = *pos + 1;
  *pos = p;
  if (p < capacity) history[p] = out[0];
}

}  // namespace

// CPU work runs here; CUDA work is enqueued by the backend.
#define DEC_DISPATCH(cpu_call, cuda_call) \
  if (device == FP4_DEVICE_CPU) {         \
    cpu_call;                             \
    return FP4_OK;                        \
  }                                       \
  FP4_CUDA_ONLY(return cuda_call);

FP4_API fp4_status fp4_dec_embedding(int32_t device, const int32_t *ids, const void *table,
                                     int32_t table_dtype, float *y, int64_t tokens, int64_t vocab,
                                     int64_t dim) {
  FP4_GUARD({
    const char *fn = "fp4_dec_embedding";
    if (fp4_status s = check_device(device, fn)) return s;
    if (fp4_status s = check_dtypes(fn, {table_dtype})) return s;
    FP4_REQUIRE(tokens >= 0 && vocab > 0 && dim > 0, "%s: bad sizes", fn);
    if (tokens == 0) return FP4_OK;
    FP4_REQUIRE(ids && table && y, "%s: null pointer", fn);
    if (device == FP4_DEVICE_CPU) {
      for (int64_t t = 0; t < tokens; t++)
        FP4_REQUIRE(ids[t] >= 0 && ids[t] < vocab,
                    "%s: token id %d at position %lld is outside the vocabulary [0, %lld)", fn,
                    ids[t], (long long)t, (long long)vocab);
    }
    DEC_DISPATCH(embedding_cpu(ids, table, table_dtype, y, tokens, dim),
                 fp4::cuda::dec_embedding(ids, table, table_dtype, y, tokens, vocab, dim))
  })
}

FP4_API fp4_status fp4_dec_rmsnorm(int32_t device, const float *x, const void *w, int32_t w_dtype,
                                   void *y, int32_t y_dtype, int64_t rows, int64_t dim,
                                   float eps) {
  FP4_GUARD({
    const char *fn = "fp4_dec_rmsnorm";
    if (fp4_status s = check_device(device, fn)) return s;
    if (fp4_status s = check_dtypes(fn, {w_dtype, y_dtype})) return s;
    FP4_REQUIRE(rows >= 0 && dim > 0, "%s: bad sizes (rows %lld, dim %lld)", fn, (long long)rows,
                (long long)dim);
    FP4_REQUIRE(eps >= 0 && std::isfinite(eps), "%s: eps must be finite and >= 0", fn);
    if (rows == 0) return FP4_OK;
    FP4_REQUIRE(x && w && y, "%s: null pointer", fn);
    DEC_DISPATCH(rmsnorm_cpu(x, w, w_dtype, y, y_dtype, rows, dim, eps),
                 fp4::cuda::dec_rmsnorm(x, w, w_dtype, y, y_dtype, rows, dim, eps))
  })
}

FP4_API fp4_status fp4_dec_add_rmsnorm(int32_t device, float *x, const void *r, int32_t r_dtype,
                                       const void *w, int32_t w_dtype, void *y, int32_t y_dtype,
                                       int64_t rows, int64_t dim, float eps) {
  FP4_GUARD({
    const char *fn = "fp4_dec_add_rmsnorm";
    if (fp4_status s = check_device(device, fn)) return s;
    if (fp4_status s = check_dtypes(fn, {r_dtype, w_dtype, y_dtype})) return s;
    FP4_REQUIRE(rows >= 0 && dim > 0, "%s: bad sizes (rows %lld, dim %lld)", fn, (long long)rows,
                (long long)dim);
    FP4_REQUIRE(eps >= 0 && std::isfinite(eps), "%s: eps must be finite and >= 0", fn);
    if (rows == 0) return FP4_OK;
    FP4_REQUIRE(x && r && w && y, "%s: null pointer", fn);
    DEC_DISPATCH(add_cpu(x, r, r_dtype, uint64_t(rows * dim));
                 rmsnorm_cpu(x, w, w_dtype, y, y_dtype, rows, dim, eps),
                 fp4::cuda::dec_add_rmsnorm(x, r, r_dtype, w, w_dtype, y, y_dtype, rows, dim, eps))
  })
}

FP4_API fp4_status fp4_dec_linear(int32_t device, const void *x, int32_t x_dtype, const void *w,
                                  int32_t w_dtype, void *y, int32_t y_dtype, int64_t rows,
                                  int64_t out_features, int64_t in_features) {
  FP4_GUARD({
    const char *fn = "fp4_dec_linear";
    if (fp4_status s = check_device(device, fn)) return s;
    if (fp4_status s = check_dtypes(fn, {x_dtype, w_dtype, y_dtype})) return s;
    FP4_REQUIRE(rows >= 0 && out_features > 0 && in_features > 0,
                "%s: bad sizes (rows %lld, out %lld, in %lld)", fn, (long long)rows,
                (long long)out_features, (long long)in_features);
    if (rows == 0) return FP4_OK;
    FP4_REQUIRE(x && w && y, "%s: null pointer", fn);
    if (device == FP4_DEVICE_CPU)
      return linear_cpu(x, x_dtype, w, w_dtype, y, y_dtype, rows, out_features, in_features);
    FP4_CUDA_ONLY(return fp4::cuda::dec_linear(x, x_dtype, w, w_dtype, y, y_dtype, rows,
                                               out_features, in_features));
  })
}

FP4_API fp4_status fp4_dec_rope(int32_t device, void *x, int32_t x_dtype, const float *cos,
                                const float *sin, const int32_t *pos, int64_t ctx, int64_t tokens,
                                int64_t heads, int64_t head_dim) {
  FP4_GUARD({
    const char *fn = "fp4_dec_rope";
    if (fp4_status s = check_device(device, fn)) return s;
    if (fp4_status s = check_dtypes(fn, {x_dtype})) return s;
    FP4_REQUIRE(tokens >= 0 && ctx > 0 && heads > 0 && head_dim > 0 && head_dim % 2 == 0,
                "%s: bad sizes (ctx %lld, tokens %lld, heads %lld, head_dim %lld must be even)",
                fn, (long long)ctx, (long long)tokens, (long long)heads, (long long)head_dim);
    if (tokens == 0) return FP4_OK;
    FP4_REQUIRE(x && cos && sin && pos, "%s: null pointer", fn);
    if (device == FP4_DEVICE_CPU) {
      if (fp4_status s = check_pos(fn, pos, ctx, tokens)) return s;
    }
    DEC_DISPATCH(rope_cpu(x, x_dtype, cos, sin, *pos, tokens, heads, head_dim),
                 fp4::cuda::dec_rope(x, x_dtype, cos, sin, pos, ctx, tokens, heads, head_dim))
  })
}

FP4_API fp4_status fp4_dec_kv_store(int32_t device, const void *x, int32_t x_dtype, void *cache,
                                    int32_t cache_dtype, const int32_t *pos, int64_t ctx,
                                    int64_t tokens, int64_t width) {
  FP4_GUARD({
    const char *fn = "fp4_dec_kv_store";
    if (fp4_status s = check_device(device, fn)) return s;
    if (fp4_status s = check_dtypes(fn, {x_dtype, cache_dtype})) return s;
    FP4_REQUIRE(tokens >= 0 && ctx > 0 && width > 0, "%s: bad sizes", fn);
    if (tokens == 0) return FP4_OK;
    FP4_REQUIRE(x && cache && pos, "%s: null pointer", fn);
    if (device == FP4_DEVICE_CPU) {
      if (fp4_status s = check_pos(fn, pos, ctx, tokens)) return s;
    }
    DEC_DISPATCH(kv_store_cpu(x, x_dtype, cache, cache_dtype, *pos, tokens, width),
                 fp4::cuda::dec_kv_store(x, x_dtype, cache, cache_dtype, pos, ctx, tokens, width))
  })
}

FP4_API fp4_status fp4_dec_rope_kv_store(int32_t device, void *q, void *k, const void *v,
                                         int32_t x_dtype, const float *cos, const float *sin,
                                         const int32_t *pos, int64_t ctx, int64_t tokens,
                                         int64_t heads, int64_t kv_heads, int64_t head_dim,
                                         void *k_cache, void *v_cache, int32_t cache_dtype) {
  FP4_GUARD({
    const char *fn = "fp4_dec_rope_kv_store";
    if (fp4_status s = check_device(device, fn)) return s;
    if (fp4_status s = check_dtypes(fn, {x_dtype, cache_dtype})) return s;
    FP4_REQUIRE(tokens >= 0 && ctx > 0 && heads > 0 && kv_heads > 0 && head_dim > 0 &&
                    head_dim % 2 == 0,
                "%s: bad sizes (ctx %lld, tokens %lld, heads %lld, kv_heads %lld, head_dim %lld "
                "must be even)",
                fn, (long long)ctx, (long long)tokens, (long long)heads, (long long)kv_heads,
                (long long)head_dim);
    if (tokens == 0) return FP4_OK;
    FP4_REQUIRE(q && k && v && cos && sin && pos && k_cache && v_cache, "%s: null pointer", fn);
    const int64_t width = kv_heads * head_dim;
    if (device == FP4_DEVICE_CPU) {
      if (fp4_status s = check_pos(fn, pos, ctx, tokens)) return s;
    }
    DEC_DISPATCH(rope_cpu(q, x_dtype, cos, sin, *pos, tokens, heads, head_dim);
                 rope_cpu(k, x_dtype, cos, sin, *pos, tokens, kv_heads, head_dim);
                 kv_store_cpu(k, x_dtype, k_cache, cache_dtype, *pos, tokens, width);
                 kv_store_cpu(v, x_dtype, v_cache, cache_dtype, *pos, tokens, width),
                 fp4::cuda::dec_rope_kv_store(q, k, v, x_dtype, cos, sin, pos, ctx, tokens, heads,
                                              kv_heads, head_dim, k_cache, v_cache, cache_dtype))
  })
}

FP4_API fp4_status fp4_dec_attention(int32_t device, const void *q, int32_t q_dtype,
                                     const void *k_cache, const void *v_cache, int32_t cache_dtype,
                                     void *out, int32_t out_dtype, const int32_t *pos, int64_t ctx,
                                     int64_t tokens, int64_t heads, int64_t kv_heads,
                                     int64_t head_dim, float scale) {
  FP4_GUARD({
    const char *fn = "fp4_dec_attention";
    if (fp4_status s = check_device(device, fn)) return s;
    if (fp4_status s = check_dtypes(fn, {q_dtype, cache_dtype, out_dtype})) return s;
    FP4_REQUIRE(tokens >= 0 && ctx > 0 && heads > 0 && kv_heads > 0 && head_dim > 0,
                "%s: bad sizes (ctx %lld, tokens %lld, heads %lld, kv_heads %lld, head_dim %lld)",
                fn, (long long)ctx, (long long)tokens, (long long)heads, (long long)kv_heads,
                (long long)head_dim);
    FP4_REQUIRE(heads % kv_heads == 0, "%s: heads %lld not a multiple of kv_heads %lld", fn,
                (long long)heads, (long long)kv_heads);
    FP4_REQUIRE(head_dim <= 512, "%s: head_dim %lld > 512 is not supported", fn,
                (long long)head_dim);
    FP4_REQUIRE(std::isfinite(scale), "%s: scale must be finite", fn);
    if (tokens == 0) return FP4_OK;
    FP4_REQUIRE(q && k_cache && v_cache && out && pos, "%s: null pointer", fn);
    if (device == FP4_DEVICE_CPU) {
      if (fp4_status s = check_pos(fn, pos, ctx, tokens)) return s;
    }
    DEC_DISPATCH(attention_cpu(q, q_dtype, k_cache, v_cache, cache_dtype, out, out_dtype, *pos,
                               tokens, heads, kv_heads, head_dim, scale),
                 fp4::cuda::dec_attention(q, q_dtype, k_cache, v_cache, cache_dtype, out,
                                          out_dtype, pos, ctx, tokens, heads, kv_heads, head_dim,
                                          scale))
  })
}

FP4_API fp4_status fp4_dec_silu_mul(int32_t device, const void *gate, const void *up, void *out,
                                    int32_t dtype, uint64_t n) {
  FP4_GUARD({
    const char *fn = "fp4_dec_silu_mul";
    if (fp4_status s = check_device(device, fn)) return s;
    if (fp4_status s = check_dtypes(fn, {dtype})) return s;
    if (n == 0) return FP4_OK;
    FP4_REQUIRE(gate && up && out, "%s: null pointer", fn);
    DEC_DISPATCH(silu_mul_cpu(gate, up, out, dtype, n),
                 fp4::cuda::dec_silu_mul(gate, up, out, dtype, n))
  })
}

FP4_API fp4_status fp4_dec_add(int32_t device, float *y, const void *x, int32_t x_dtype,
                               uint64_t n) {
  FP4_GUARD({
    const char *fn = "fp4_dec_add";
    if (fp4_status s = check_device(device, fn)) return s;
    if (fp4_status s = check_dtypes(fn, {x_dtype})) return s;
    if (n == 0) return FP4_OK;
    FP4_REQUIRE(y && x, "%s: null pointer", fn);
    DEC_DISPATCH(add_cpu(y, x, x_dtype, n),
                 fp4::cuda::dec_add(y, x, x_dtype, n))
  })
}

FP4_API fp4_status fp4_dec_argmax_feed(int32_t device, const float *x, int64_t n, int32_t *out,
                                       int32_t *pos, int32_t *history, int64_t capacity) {
  FP4_GUARD({
    const char *fn = "fp4_dec_argmax_feed";
    if (fp4_status s = check_device(device, fn)) return s;
    FP4_REQUIRE(n > 0 && n < (int64_t(1) << 31) && capacity >= 0,
                "%s: bad sizes (n %lld, capacity %lld)", fn, (long long)n, (long long)capacity);
    FP4_REQUIRE(x && out && pos && (history || capacity == 0), "%s: null pointer", fn);
    DEC_DISPATCH(argmax_feed_cpu(x, n, out, pos, history, capacity),
                 fp4::cuda::dec_argmax_feed(x, n, out, pos, history, capacity))
  })
}

FP4_API fp4_status fp4_dec_argmax(int32_t device, const float *x, int64_t rows, int64_t n,
                                  int32_t *out) {
  FP4_GUARD({
    const char *fn = "fp4_dec_argmax";
    if (fp4_status s = check_device(device, fn)) return s;
    FP4_REQUIRE(rows >= 0 && n > 0 && n < (int64_t(1) << 31), "%s: bad sizes (rows %lld, n %lld)",
                fn, (long long)rows, (long long)n);
    if (rows == 0) return FP4_OK;
    FP4_REQUIRE(x && out, "%s: null pointer", fn);
    DEC_DISPATCH(argmax_cpu(x, rows, n, out),
                 fp4::cuda::dec_argmax(x, rows, n, out))
  })
}
