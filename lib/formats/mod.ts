/**
 * Number formats: the executable specification (docs/FORMATS.md) of FP4/FP6/FP8 minifloats,
 * integer elements, scale formats, group quantization, Philox and block Hadamard rotations.
 *
 * @example
 * ```ts
 * import { dequantize, quantize } from "./mod.ts";
 * const x = new Float32Array(64).map(() => Math.random() - 0.5);
 * const q = quantize(x, [2, 32], "nvfp4");
 * const y = dequantize(q);
 * console.assert(y.length === 64 && q.codes.length === 32);
 * ```
 *
 * @module
 */
export * from "./minifloat.ts";
export * from "./integer.ts";
export * from "./scales.ts";
export * from "./spec.ts";
export * from "./philox.ts";
export * from "./quantize.ts";
export * from "./hadamard.ts";
