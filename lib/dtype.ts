/**
 * Tensor element types, their sizes and host storage, and the exact conversions between the
 * 16-bit float storage types (bf16, f16) and f32.
 *
 * @module
 */

/** Element types a {@linkcode Tensor} can hold. 16-bit floats are stored as raw bits. */
export type DType = "f32" | "f64" | "f16" | "bf16" | "u8" | "i8" | "i16" | "i32" | "i64";

/** The host array type backing each dtype. */
export type HostArray<D extends DType = DType> = {
  f32: Float32Array;
  f64: Float64Array;
  f16: Uint16Array;
  bf16: Uint16Array;
  u8: Uint8Array;
  i8: Int8Array;
  i16: Int16Array;
  i32: Int32Array;
  i64: BigInt64Array;
}[D];

interface DTypeInfo {
  itemSize: number;
  abi: number; // FP4_DTYPE_* in cuda/include/fp4lab/core.h
  make: (buffer: ArrayBuffer, offset: number, length: number) => HostArray;
}

const INFO: Record<DType, DTypeInfo> = {
  f32: { itemSize: 4, abi: 0, make: (b, o, n) => new Float32Array(b, o, n) },
  f16: { itemSize: 2, abi: 1, make: (b, o, n) => new Uint16Array(b, o, n) },
  bf16: { itemSize: 2, abi: 2, make: (b, o, n) => new Uint16Array(b, o, n) },
  u8: { itemSize: 1, abi: 3, make: (b, o, n) => new Uint8Array(b, o, n) },
  i32: { itemSize: 4, abi: 4, make: (b, o, n) => new Int32Array(b, o, n) },
  i8: { itemSize: 1, abi: 5, make: (b, o, n) => new Int8Array(b, o, n) },
  i16: { itemSize: 2, abi: 6, make: (b, o, n) => new Int16Array(b, o, n) },
  i64: { itemSize: 8, abi: 7, make: (b, o, n) => new BigInt64Array(b, o, n) },
  f64: { itemSize: 8, abi: 8, make: (b, o, n) => new Float64Array(b, o, n) },
};

/** All dtype names, in ABI order of definition. */
export const DTYPES: readonly DType[] = Object.keys(INFO) as DType[];

/**
 * Throws unless `name` is a known dtype; returns it typed.
 *
 * @example
 * ```ts
 * import { parseDType } from "./dtype.ts";
 * console.assert(parseDType("bf16") === "bf16");
 * ```
 */
export function parseDType(name: string): DType {
  if (name in INFO) return name as DType;
  throw new Error(`unknown dtype "${name}"; expected one of ${DTYPES.join(", ")}`);
}

/**
 * Bytes per element.
 *
 * @example
 * ```ts
 * import { itemSize } from "./dtype.ts";
 * console.assert(itemSize("bf16") === 2);
 * ```
 */
export function itemSize(dtype: DType): number {
  return INFO[dtype].itemSize;
}

/**
 * The dtype's code in the C ABI (`FP4_DTYPE_*`).
 *
 * @example
 * ```ts
 * import { abiDType } from "./dtype.ts";
 * console.assert(abiDType("f32") === 0);
 * ```
 */
export function abiDType(dtype: DType): number {
  return INFO[dtype].abi;
}

/**
 * A host array of `length` elements of `dtype` viewing `buffer` from byte `offset`
 * (a fresh zeroed buffer when none is given).
 *
 * @example
 * ```ts
 * import { hostArray } from "./dtype.ts";
 * console.assert(hostArray("i32", 3) instanceof Int32Array);
 * ```
 */
export function hostArray<D extends DType>(
  dtype: D,
  length: number,
  buffer?: ArrayBuffer,
  offset = 0,
): HostArray<D> {
  const b = buffer ?? new ArrayBuffer(length * INFO[dtype].itemSize);
  return INFO[dtype].make(b, offset, length) as HostArray<D>;
}

/**
 * The dtype whose host array type matches `array`'s (f16/bf16 are ambiguous as Uint16Array
 * and resolve to bf16).
 *
 * @example
 * ```ts
 * import { dtypeOfArray } from "./dtype.ts";
 * console.assert(dtypeOfArray(new Float32Array(1)) === "f32");
 * ```
 */
export function dtypeOfArray(array: HostArray): DType {
  if (array instanceof Float32Array) return "f32";
  if (array instanceof Float64Array) return "f64";
  if (array instanceof Uint16Array) return "bf16";
  if (array instanceof Uint8Array) return "u8";
  if (array instanceof Int8Array) return "i8";
  if (array instanceof Int16Array) return "i16";
  if (array instanceof Int32Array) return "i32";
  if (array instanceof BigInt64Array) return "i64";
  throw new Error(`unsupported array type ${(array as object).constructor.name}`);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * Rounds an f32 value to bf16 bits (round to nearest, ties to even; NaN stays NaN).
 *
 * @example
 * ```ts
 * import { f32ToBf16 } from "./dtype.ts";
 * console.assert(f32ToBf16(1) === 0x3f80);
 * ```
 */
export function f32ToBf16(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x40) & 0xffff; // quiet NaN
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * The f32 value of bf16 bits (exact).
 *
 * @example
 * ```ts
 * import { bf16ToF32 } from "./dtype.ts";
 * console.assert(bf16ToF32(0x3f80) === 1);
 * ```
 */
export function bf16ToF32(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

/**
 * The f32 value of IEEE binary16 bits (exact).
 *
 * @example
 * ```ts
 * import { f16ToF32 } from "./dtype.ts";
 * console.assert(f16ToF32(0x3c00) === 1);
 * ```
 */
export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const man = bits & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/**
 * Rounds an f32 value to IEEE binary16 bits (round to nearest, ties to even; overflow to
 * infinity, as IEEE conversion does).
 *
 * @example
 * ```ts
 * import { f32ToF16 } from "./dtype.ts";
 * console.assert(f32ToF16(1) === 0x3c00);
 * ```
 */
export function f32ToF16(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const man = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    // Subnormal: shift the full significand, round to nearest even on the dropped bits.
    const full = man | 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = full & ((1 << shift) - 1);
    let out = full >>> shift;
    if (rest > half || (rest === half && (out & 1))) out++;
    return sign | out;
  }
  let out = (e << 10) | (man >>> 13);
  const rest = man & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (out & 1))) out++; // may carry into the exponent: correct
  return sign | out;
}

/**
 * Converts a host array of any float dtype to a new Float32Array (exact for f16/bf16).
 *
 * @example
 * ```ts
 * import { toFloat32 } from "./dtype.ts";
 * console.assert(toFloat32(new Uint16Array([0x3f80]), "bf16")[0] === 1);
 * ```
 */
export function toFloat32(array: HostArray, dtype: DType): Float32Array {
  const out = new Float32Array(array.length);
  if (dtype === "bf16") {
    const bits = new Uint32Array(out.buffer);
    const src = array as Uint16Array;
    for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  } else if (dtype === "f16") {
    const src = array as Uint16Array;
    for (let i = 0; i < src.length; i++) out[i] = f16ToF32(src[i]);
  } else if (dtype === "i64") {
    const src = array as BigInt64Array;
    for (let i = 0; i < src.length; i++) out[i] = Number(src[i]);
  } else {
    out.set(array as Exclude<HostArray, BigInt64Array>);
  }
  return out;
}

/**
 * Rounds a Float32Array to a new host array of `dtype` (f32, f16 or bf16).
 *
 * @example
 * ```ts
 * import { fromFloat32 } from "./dtype.ts";
 * console.assert(fromFloat32(new Float32Array([1]), "bf16")[0] === 0x3f80);
 * ```
 */
export function fromFloat32(array: Float32Array, dtype: "f32" | "f16" | "bf16"): HostArray {
  if (dtype === "f32") return array.slice();
  const out = new Uint16Array(array.length);
  const conv = dtype === "bf16" ? f32ToBf16 : f32ToF16;
  for (let i = 0; i < array.length; i++) out[i] = conv(array[i]);
  return out;
}
