/**
 * Scale formats: E8M0 (power of two), E4M3 used unsigned, UE5M3, and FP32/BF16/FP16 scales
 * stored as raw little-endian bits. Specification: docs/FORMATS.md §4.
 *
 * @module
 */
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "../dtype.ts";
import { decodeMinifloat, encodeMinifloat, floorLog2, UE4M3, UE5M3 } from "./minifloat.ts";

/** Names of the scale formats. `"e4m3"` is E4M3 used unsigned (sign bit always 0). */
export type ScaleFormatName = "e8m0" | "e4m3" | "ue5m3" | "f32" | "bf16" | "f16";

/** All scale format names. */
export const SCALE_FORMATS: readonly ScaleFormatName[] = [
  "e8m0",
  "e4m3",
  "ue5m3",
  "f32",
  "bf16",
  "f16",
];

/**
 * Bytes one stored scale takes.
 *
 * @example
 * ```ts
 * import { scaleBytes } from "./scales.ts";
 * console.assert(scaleBytes("bf16") === 2);
 * ```
 */
export function scaleBytes(fmt: ScaleFormatName): number {
  return fmt === "f32" ? 4 : fmt === "bf16" || fmt === "f16" ? 2 : 1;
}

/**
 * Largest finite value of a scale format.
 *
 * @example
 * ```ts
 * import { scaleMax } from "./scales.ts";
 * console.assert(scaleMax("e4m3") === 448);
 * ```
 */
export function scaleMax(fmt: ScaleFormatName): number {
  switch (fmt) {
    case "e8m0":
      return 2 ** 127;
    case "e4m3":
      return UE4M3.maxFinite;
    case "ue5m3":
      return UE5M3.maxFinite;
    case "f32":
      return 3.4028234663852886e38;
    case "bf16":
      return bf16ToF32(0x7f7f);
    case "f16":
      return 65504;
  }
}

/** E8M0 bits of the NaN code. */
export const E8M0_NAN = 0xff;

/**
 * E8M0 bits of 2^e, with e clamped to [-127, 127] (0x00 .. 0xFE).
 *
 * @example
 * ```ts
 * import { e8m0FromExponent } from "./scales.ts";
 * console.assert(e8m0FromExponent(0) === 127 && e8m0FromExponent(-300) === 0);
 * ```
 */
export function e8m0FromExponent(e: number): number {
  return (e < -127 ? -127 : e > 127 ? 127 : e) + 127;
}

/**
 * Value of E8M0 bits: 2^(bits - 127); 0xFF is NaN.
 *
 * @example
 * ```ts
 * import { decodeE8M0 } from "./scales.ts";
 * console.assert(decodeE8M0(127) === 1 && decodeE8M0(0) === 2 ** -127);
 * ```
 */
export function decodeE8M0(bits: number): number {
  return bits === E8M0_NAN ? NaN : 2 ** (bits - 127);
}

/** Rounding of a value to E8M0: floor or ceil of log2, or round to nearest even like a float. */
export type E8M0Rounding = "floor" | "ceil" | "rne";

/**
 * E8M0 bits of `x`: 2^k with k = floor(log2 x) (`"floor"`), ceil(log2 x) (`"ceil"`), or the
 * nearest power of two as a float format with 0 mantissa bits rounds (`"rne"`: x = m * 2^k,
 * m in [1, 2): up iff m > 1.5, or m == 1.5 and k + 127 is odd, i.e. ties go to the even
 * exponent field). k is clamped to [-127, 127]; NaN gives 0xFF, +Inf 0xFE, x <= 0 gives 0x00.
 *
 * @example
 * ```ts
 * import { encodeE8M0 } from "./scales.ts";
 * console.assert(encodeE8M0(3, "floor") === 128 && encodeE8M0(3, "ceil") === 129);
 * console.assert(encodeE8M0(1.5, "rne") === 128); // tie: 127 is odd -> 128
 * ```
 */
export function encodeE8M0(x: number, rounding: E8M0Rounding = "rne"): number {
  if (x !== x) return E8M0_NAN;
  if (x <= 0) return 0;
  if (x === Infinity) return 0xfe;
  const k = floorLog2(x);
  const m = x / 2 ** k;
  let e = k;
  if (rounding === "ceil") {
    if (m > 1) e = k + 1;
  } else if (rounding === "rne") {
    if (m > 1.5 || (m === 1.5 && ((k + 127) & 1) === 1)) e = k + 1;
  }
  return e8m0FromExponent(e);
}

/**
 * Encodes a non-negative float32 scale value to `fmt` bits (not E8M0, whose rounding is a
 * scale rule): round to nearest even, saturating to the format's largest finite value; NaN
 * gives the format's NaN code; negative values are not scales and give +0 bits for the
 * unsigned formats.
 *
 * @example
 * ```ts
 * import { encodeScale } from "./scales.ts";
 * console.assert(encodeScale(1, "bf16") === 0x3f80 && encodeScale(1e9, "e4m3") === 0x7e);
 * ```
 */
export function encodeScale(value: number, fmt: Exclude<ScaleFormatName, "e8m0">): number {
  switch (fmt) {
    case "e4m3":
      return encodeMinifloat(value, UE4M3);
    case "ue5m3":
      return encodeMinifloat(value, UE5M3);
    case "f32":
      return f32Bits(value);
    case "bf16": {
      const b = f32ToBf16(value);
      return (b & 0x7fff) === 0x7f80 && value === value ? (b & 0x8000) | 0x7f7f : b;
    }
    case "f16": {
      const b = f32ToF16(value);
      return (b & 0x7fff) === 0x7c00 && value === value ? (b & 0x8000) | 0x7bff : b;
    }
  }
}

/**
 * The value of stored scale bits in `fmt` (exact; every value is a float32).
 *
 * @example
 * ```ts
 * import { decodeScale } from "./scales.ts";
 * console.assert(decodeScale(0x7e, "e4m3") === 448 && decodeScale(127, "e8m0") === 1);
 * ```
 */
export function decodeScale(bits: number, fmt: ScaleFormatName): number {
  switch (fmt) {
    case "e8m0":
      return decodeE8M0(bits);
    case "e4m3":
      return decodeMinifloat(bits, UE4M3);
    case "ue5m3":
      return decodeMinifloat(bits, UE5M3);
    case "f32":
      return f32FromBits(bits);
    case "bf16":
      return bf16ToF32(bits);
    case "f16":
      return f16ToF32(bits);
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * The IEEE binary32 bits of `x` rounded to float32.
 *
 * @example
 * ```ts
 * import { f32Bits } from "./scales.ts";
 * console.assert(f32Bits(1) === 0x3f800000);
 * ```
 */
export function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0];
}

/**
 * The float32 value of binary32 bits.
 *
 * @example
 * ```ts
 * import { f32FromBits } from "./scales.ts";
 * console.assert(f32FromBits(0x40000000) === 2);
 * ```
 */
export function f32FromBits(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0];
}

/**
 * Writes scale bits at scale index `i` of a byte buffer, little-endian, `scaleBytes(fmt)` bytes.
 *
 * @example
 * ```ts
 * import { readScaleBits, writeScaleBits } from "./scales.ts";
 * const b = new Uint8Array(4);
 * writeScaleBits(b, 1, 0x3f80, "bf16");
 * console.assert(b[2] === 0x80 && b[3] === 0x3f && readScaleBits(b, 1, "bf16") === 0x3f80);
 * ```
 */
export function writeScaleBits(
  buf: Uint8Array,
  i: number,
  bits: number,
  fmt: ScaleFormatName,
): void {
  const n = scaleBytes(fmt);
  const o = i * n;
  for (let k = 0; k < n; k++) buf[o + k] = (bits >>> (8 * k)) & 0xff;
}

/**
 * Reads the scale bits at scale index `i` (little-endian).
 *
 * @example
 * ```ts
 * import { readScaleBits } from "./scales.ts";
 * console.assert(readScaleBits(new Uint8Array([0x7f]), 0, "e8m0") === 0x7f);
 * ```
 */
export function readScaleBits(buf: Uint8Array, i: number, fmt: ScaleFormatName): number {
  const n = scaleBytes(fmt);
  const o = i * n;
  let bits = 0;
  for (let k = n - 1; k >= 0; k--) bits = bits * 256 + buf[o + k];
  return bits;
}
