/* Number formats: element conversion, group quantization, dequantization, block Hadamard
 * rotation and the fused rotate+quantize of activations. The normative definition is
 * docs/FORMATS.md (executable form: the TypeScript in lib/formats/); every entry point here reproduces it bit
 * for bit on both backends.
 *
 * Data pointers are host memory for FP4_DEVICE_CPU and device memory for FP4_DEVICE_CUDA (this
 * includes the one-float tensor scale); `spec` always points to host memory. */
#ifndef FP4LAB_FORMATS_H
#define FP4LAB_FORMATS_H

#include "core.h"

/* Codecs: element formats (0..11) and the E8M0 roundings (12..14). */
enum {
  FP4_CODEC_E2M1 = 0,
  FP4_CODEC_E2M3 = 1,
  FP4_CODEC_E3M2 = 2,
  FP4_CODEC_E4M3 = 3,
  FP4_CODEC_E5M2 = 4,
  FP4_CODEC_UE4M3 = 5,
  FP4_CODEC_UE5M3 = 6,
  FP4_CODEC_INT4 = 7,
  FP4_CODEC_INT8 = 8,
  FP4_CODEC_UINT4 = 9,
  FP4_CODEC_UINT8 = 10,
  FP4_CODEC_MXINT8 = 11,
  FP4_CODEC_E8M0_FLOOR = 12,
  FP4_CODEC_E8M0_CEIL = 13,
  FP4_CODEC_E8M0_RNE = 14
};

/* Scale formats (docs/FORMATS.md §4). */
enum {
  FP4_SCALE_E8M0 = 0,
  FP4_SCALE_E4M3 = 1,
  FP4_SCALE_UE5M3 = 2,
  FP4_SCALE_F32 = 3,
  FP4_SCALE_BF16 = 4,
  FP4_SCALE_F16 = 5
};

/* Scale rules (docs/FORMATS.md §5.5). */
enum {
  FP4_RULE_OCP = 0,
  FP4_RULE_CEIL = 1,
  FP4_RULE_ROUND = 2,
  FP4_RULE_MR_GPTQ = 3,
  FP4_RULE_ABSMAX = 4,
  FP4_RULE_MINMAX = 5
};

/* Special group sizes. */
enum { FP4_GROUP_CHANNEL = -1, FP4_GROUP_TENSOR = -2 };

/* A QuantSpec (lib/formats/spec.ts) as a 56-byte POD; lib/formats/native.ts packs it. */
typedef struct fp4_quant_spec {
  int32_t element;        /* FP4_CODEC_E2M1 .. FP4_CODEC_MXINT8 except UE4M3/UE5M3 */
  int32_t scale_format;   /* FP4_SCALE_* */
  int32_t group_size;     /* > 0, FP4_GROUP_CHANNEL or FP4_GROUP_TENSOR */
  int32_t scale_rule;     /* FP4_RULE_* */
  int32_t tensor_scale;   /* 0 none, 1 amax, 2 given (s_t = tensor_scale_value) */
  int32_t rounding;       /* 0 round to nearest even, 1 stochastic */
  int32_t mse_candidates; /* 0: no MSE search; else 1..10000 */
  float tensor_scale_value; /* tensor_scale 2: the fixed s_t (finite, > 0); else must be 0 */
  double mse_min_shrink;  /* (0, 4]; above 1 the candidates grow the scale */
  double mse_norm;        /* finite, > 0 */
  uint64_t seed;          /* Philox key of stochastic rounding */
} fp4_quant_spec;

/* codes[i] = storage bits of x[i] (n values) in `codec`; stochastic when `random` is non-null
 * (random[i] is the uniform word of element i). Integer codecs use zero point 0. */
FP4_API fp4_status fp4_encode(int32_t device, int32_t codec, const float *x, uint64_t n,
                              const uint32_t *random, uint8_t *codes);

/* out[i] = value of codes[i] in `codec` (integer codecs: code * step, zero point 0). */
FP4_API fp4_status fp4_decode(int32_t device, int32_t codec, const uint8_t *codes, uint64_t n,
                              float *out);

/* Bytes of the packed codes, the scales and the zero points of a [rows, cols] tensor. */
FP4_API fp4_status fp4_quant_sizes(const fp4_quant_spec *spec, uint64_t rows, uint64_t cols,
                                   uint64_t *code_bytes, uint64_t *scale_bytes,
                                   uint64_t *zero_bytes);

/* Quantizes x ([rows, cols], dtype f32 or bf16) by docs/FORMATS.md §5: packed codes (§6),
 * scale bits [rows, G], zero points (asymmetric elements; else may be null) and the float32
 * tensor scale (written when the spec has one: tensor_scale amax or given, or rule mr-gptq; else
 * may be null). A given tensor scale spares the amax pass over x (one read instead of two).
 * Non-finite input fails with FP4_ERR_NUMERIC naming the first bad (row, col). */
FP4_API fp4_status fp4_quantize(int32_t device, const fp4_quant_spec *spec, int32_t dtype,
                                const void *x, uint64_t rows, uint64_t cols, uint8_t *codes,
                                uint8_t *scales, uint8_t *zeros, float *tensor_scale);

/* The inverse: out ([rows, cols], dtype f32 or bf16) from the outputs of fp4_quantize. */
FP4_API fp4_status fp4_dequantize(int32_t device, const fp4_quant_spec *spec,
                                  const uint8_t *codes, const uint8_t *scales,
                                  const uint8_t *zeros, const float *tensor_scale, uint64_t rows,
                                  uint64_t cols, int32_t out_dtype, void *out);

/* Block Hadamard rotation (docs/FORMATS.md §8) of x [rows, cols] into out (may alias x),
 * blocks of `block` (power of two, 2..4096, dividing cols) along each row; random signs from
 * `seed` when has_seed. inverse = 1 applies the transpose. x and out dtypes: f32 or bf16
 * (computed in f32; a bf16 output is rounded to nearest even at the end). */
FP4_API fp4_status fp4_hadamard(int32_t device, int32_t dtype, const void *x, int32_t out_dtype,
                                void *out, uint64_t rows, uint64_t cols, int32_t block,
                                int32_t inverse, int32_t has_seed, uint64_t seed);

/* Fused rotate + quantize: the result of fp4_hadamard (f32 output) followed by fp4_quantize,
 * without the intermediate tensor. x: [rows, cols] f32 or bf16. */
FP4_API fp4_status fp4_rotate_quantize(int32_t device, const fp4_quant_spec *spec, int32_t dtype,
                                       const void *x, uint64_t rows, uint64_t cols,
                                       int32_t block, int32_t has_seed, uint64_t seed,
                                       uint8_t *codes, uint8_t *scales, uint8_t *zeros,
                                       float *tensor_scale);

/* Fake quantization of activations, the input a W4A4 GEMM sees: x [rows, cols] (f32 or bf16)
 * through fp4_rotate_quantize (block > 0) or fp4_quantize (block 0) into codes, scales, zeros and
 * tensor_scale (the caller's buffers, filled as those calls fill them), then fp4_dequantize into
 * out [rows, cols] (out_dtype f32 or bf16): bit for bit those three calls. On CUDA it only
 * enqueues the work, in order with the decode ops, and does not look for non-finite inputs
 * (their codes are unspecified), so a forward pass can call it per layer without waiting; the
 * CPU backend reports them as fp4_quantize does. */
FP4_API fp4_status fp4_fake_quantize(int32_t device, const fp4_quant_spec *spec, int32_t dtype,
                                     const void *x, uint64_t rows, uint64_t cols, int32_t block,
                                     int32_t has_seed, uint64_t seed, uint8_t *codes,
                                     uint8_t *scales, uint8_t *zeros, float *tensor_scale,
                                     int32_t out_dtype, void *out);

/* Benchmark timing (CUDA only): runs an operation `iters` times between CUDA events, after one
 * warm-up, and writes the mean seconds per run. op 0 = device-to-device copy of `rows * cols`
 * elements of dtype (x -> out), 1 = quantize, 2 = rotate+quantize; the input is not checked for
 * non-finite values (the benchmark fills it). Pointers as for the operations. */
FP4_API fp4_status fp4_bench_formats(int32_t device, int32_t op, const fp4_quant_spec *spec,
                                     int32_t dtype, const void *x, uint64_t rows, uint64_t cols,
                                     int32_t block, void *out, uint8_t *codes, uint8_t *scales,
                                     uint8_t *zeros, float *tensor_scale, int32_t iters,
                                     double *seconds);

#endif
