/**
 * Generic small floating-point formats (ExMy): descriptors, exact decoding, and encoding by
 * round to nearest, ties to even (also in subnormals), saturating to the largest finite value.
 * This is the executable specification of docs/FORMATS.md §2; the native twin must match it bit
 * for bit.
 *
 * @module
 */

/**
 * How a format spends its top codes: `"none"` every code is finite (E2M1, E2M3, E3M2);
 * `"fn"` only the all-ones magnitude is NaN (E4M3, UE5M3); `"ieee"` the all-ones exponent holds
 * infinity (mantissa 0) and NaNs (E5M2).
 */
export type Specials = "none" | "fn" | "ieee";

/** A small binary floating-point format. Values are exact in float32 for every format here. */
export interface MinifloatFormat {
  /** Short lower-case name, e.g. `"e2m1"`. */
  readonly name: string;
  /** Exponent field width. */
  readonly ebits: number;
  /** Mantissa field width. */
  readonly mbits: number;
  /** Exponent bias: a normal value is 2^(E - bias) * (1 + M / 2^mbits). */
  readonly bias: number;
  /** Whether the top bit is a sign bit (false: unsigned, negatives encode as +0). */
  readonly signed: boolean;
  /** Use of the top codes. */
  readonly specials: Specials;
  /** Total width in bits. */
  readonly bits: number;
  /** Smallest normal exponent, 1 - bias (subnormals share it). */
  readonly emin: number;
  /** Largest finite value. */
  readonly maxFinite: number;
  /** Magnitude code (sign bit clear) of `maxFinite`. */
  readonly maxCode: number;
  /** floor(log2(maxFinite)): the "emax" of the OCP MX scale rule. */
  readonly emax: number;
  /** Code returned for NaN input: the canonical NaN, or `maxCode` when the format has no NaN. */
  readonly nanInputCode: number;
}

/**
 * Builds a format descriptor from its field widths, bias, signedness and specials.
 *
 * @example
 * ```ts
 * import { minifloatFormat } from "./minifloat.ts";
 * const e3m4 = minifloatFormat("e3m4", 3, 4, 3, true, "none");
 * console.assert(e3m4.maxFinite === 15.5);
 * ```
 */
export function minifloatFormat(
  name: string,
  ebits: number,
  mbits: number,
  bias: number,
  signed: boolean,
  specials: Specials,
): MinifloatFormat {
  if (!(ebits >= 1 && mbits >= 0 && ebits + mbits + (signed ? 1 : 0) <= 16)) {
    throw new Error(`minifloat ${name}: unsupported widths e${ebits}m${mbits}`);
  }
  const topExp = (1 << ebits) - 1;
  const allMant = (1 << mbits) - 1;
  let maxCode: number;
  if (specials === "none") maxCode = (topExp << mbits) | allMant;
  else if (specials === "fn") maxCode = ((topExp << mbits) | allMant) - 1;
  else maxCode = ((topExp - 1) << mbits) | allMant;
  const maxExp = maxCode >> mbits;
  const maxFinite = 2 ** (maxExp - bias) * (1 + (maxCode & allMant) / (1 << mbits));
  let nanInputCode = maxCode;
  if (specials === "fn") nanInputCode = (topExp << mbits) | allMant;
  if (specials === "ieee") nanInputCode = (topExp << mbits) | (1 << Math.max(mbits - 1, 0));
  return Object.freeze({
    name,
    ebits,
    mbits,
    bias,
    signed,
    specials,
    bits: ebits + mbits + (signed ? 1 : 0),
    emin: 1 - bias,
    maxFinite,
    maxCode,
    emax: maxExp - bias,
    nanInputCode,
  });
}

/** FP4 E2M1 (OCP MX): grid 0, 0.5, 1, 1.5, 2, 3, 4, 6; no Inf, no NaN. */
export const E2M1: MinifloatFormat = minifloatFormat("e2m1", 2, 1, 1, true, "none");
/** FP6 E2M3 (OCP MX): max 7.5; no Inf, no NaN. */
export const E2M3: MinifloatFormat = minifloatFormat("e2m3", 2, 3, 1, true, "none");
/** FP6 E3M2 (OCP MX): max 28; no Inf, no NaN. */
export const E3M2: MinifloatFormat = minifloatFormat("e3m2", 3, 2, 3, true, "none");
/** FP8 E4M3 "fn": max 448, no Inf, NaN = S.1111.111. */
export const E4M3: MinifloatFormat = minifloatFormat("e4m3", 4, 3, 7, true, "fn");
/** FP8 E5M2: IEEE-like, max 57344, Inf = S.11111.00, NaN = S.11111.xx (xx != 0). */
export const E5M2: MinifloatFormat = minifloatFormat("e5m2", 5, 2, 15, true, "ieee");
/** E4M3 used as an unsigned scale (NVFP4): the E4M3 byte with the sign bit always 0. */
export const UE4M3: MinifloatFormat = minifloatFormat("ue4m3", 4, 3, 7, false, "fn");
/** UE5M3: unsigned 8-bit scale, 5 exponent bits (bias 15), 3 mantissa bits; 0xFF = NaN. */
export const UE5M3: MinifloatFormat = minifloatFormat("ue5m3", 5, 3, 15, false, "fn");

const f64 = new Float64Array(1);
const u32of64 = new Uint32Array(f64.buffer);

/**
 * floor(log2(a)) for finite a > 0, exactly (read from the binary64 exponent field).
 *
 * @example
 * ```ts
 * import { floorLog2 } from "./minifloat.ts";
 * console.assert(floorLog2(6) === 2 && floorLog2(0.25) === -2);
 * ```
 */
export function floorLog2(a: number): number {
  f64[0] = a;
  const e = (u32of64[1] >>> 20) & 0x7ff;
  if (e !== 0) return e - 1023;
  f64[0] = a * 2 ** 64; // binary64 subnormal: rescale exactly
  return ((u32of64[1] >>> 20) & 0x7ff) - 1023 - 64;
}

/** Whether the value has its sign bit set (true for -0). */
function signBit(x: number): boolean {
  return x < 0 || Object.is(x, -0);
}

/**
 * Splits a finite magnitude `0 <= a < maxFinite` into its grid neighbourhood: returns the
 * grid spacing q of the binade of `a` (clamped to the subnormal binade) and writes nothing else;
 * `a / q` is then exact and the neighbours are floor(a/q)*q and that plus q.
 */
function spacing(a: number, fmt: MinifloatFormat): number {
  const e = a === 0 ? fmt.emin : Math.max(floorLog2(a), fmt.emin);
  return 2 ** (e - fmt.mbits);
}

/** Magnitude code of the grid value n * q, where q = spacing of binade e (n <= 2^(mbits+1)). */
function magnitudeCode(n: number, q: number, fmt: MinifloatFormat): number {
  const one = 1 << fmt.mbits;
  if (n === 0) return 0;
  let e = floorLog2(q) + fmt.mbits; // exponent of the binade q belongs to
  if (n < one) return n; // subnormal: exponent field 0, mantissa n (only when e == emin)
  if (n === 2 * one) {
    n = one;
    e += 1;
  }
  return ((e + fmt.bias) << fmt.mbits) | (n - one);
}

/**
 * Encodes `x` to `fmt` bits: round to nearest, ties to even mantissa (also in subnormals);
 * |x| >= maxFinite and ±Inf saturate to ±maxFinite; NaN gives `fmt.nanInputCode`; -0 and
 * negative values rounding to zero keep the sign bit (signed formats); unsigned formats encode
 * every negative value (and -0) as +0.
 *
 * @example
 * ```ts
 * import { E2M1, encodeMinifloat } from "./minifloat.ts";
 * console.assert(encodeMinifloat(2.5, E2M1) === 0x4); // tie -> even mantissa: 2
 * console.assert(encodeMinifloat(-100, E2M1) === 0xf); // saturates to -6
 * ```
 */
export function encodeMinifloat(x: number, fmt: MinifloatFormat): number {
  if (x !== x) return fmt.nanInputCode;
  const neg = signBit(x);
  if (neg && !fmt.signed) return 0;
  const sign = neg ? 1 << (fmt.bits - 1) : 0;
  const a = Math.abs(x);
  if (a >= fmt.maxFinite) return sign | fmt.maxCode;
  const q = spacing(a, fmt);
  const t = a / q; // exact: power-of-two scaling of a value inside the format's range
  let n = Math.floor(t);
  const r = t - n;
  if (r > 0.5 || (r === 0.5 && (n & 1) === 1)) n += 1;
  return sign | magnitudeCode(n, q, fmt);
}

/**
 * Encodes `x` with stochastic rounding driven by the uniform 32-bit integer `r`: between the
 * neighbouring grid values lo <= |x| < hi the magnitude rounds up iff r < frac * 2^32 with
 * frac = (|x| - lo) / (hi - lo) (exact). Saturation, NaN and sign rules are as in
 * {@linkcode encodeMinifloat}.
 *
 * @example
 * ```ts
 * import { E2M1, encodeMinifloatStochastic } from "./minifloat.ts";
 * console.assert(encodeMinifloatStochastic(2.5, E2M1, 0) === 0x5); // r = 0 < 0.5 * 2^32: up to 3
 * ```
 */
export function encodeMinifloatStochastic(x: number, fmt: MinifloatFormat, r: number): number {
  if (x !== x) return fmt.nanInputCode;
  const neg = signBit(x);
  if (neg && !fmt.signed) return 0;
  const sign = neg ? 1 << (fmt.bits - 1) : 0;
  const a = Math.abs(x);
  if (a >= fmt.maxFinite) return sign | fmt.maxCode;
  const q = spacing(a, fmt);
  const t = a / q;
  let n = Math.floor(t);
  if (r < (t - n) * 4294967296) n += 1;
  return sign | magnitudeCode(n, q, fmt);
}

/**
 * The exact value of `bits` in `fmt` (NaN codes give NaN, E5M2 infinity codes ±Infinity).
 *
 * @example
 * ```ts
 * import { decodeMinifloat, E4M3 } from "./minifloat.ts";
 * console.assert(decodeMinifloat(0x7e, E4M3) === 448);
 * console.assert(Number.isNaN(decodeMinifloat(0xff, E4M3)));
 * ```
 */
export function decodeMinifloat(bits: number, fmt: MinifloatFormat): number {
  const magBits = fmt.ebits + fmt.mbits;
  const mag = bits & ((1 << magBits) - 1);
  const neg = fmt.signed && ((bits >> magBits) & 1) === 1;
  const e = mag >> fmt.mbits;
  const m = mag & ((1 << fmt.mbits) - 1);
  const topExp = (1 << fmt.ebits) - 1;
  let v: number;
  if (fmt.specials === "fn" && mag === (1 << magBits) - 1) return NaN;
  if (fmt.specials === "ieee" && e === topExp) {
    if (m !== 0) return NaN;
    v = Infinity;
  } else if (e === 0) v = m * 2 ** (fmt.emin - fmt.mbits);
  else v = (2 ** fmt.mbits + m) * 2 ** (e - fmt.bias - fmt.mbits);
  return neg ? -v : v;
}

/**
 * The value of every code of `fmt`, indexed by code (length 2^bits).
 *
 * @example
 * ```ts
 * import { decodeTable, E2M1 } from "./minifloat.ts";
 * console.assert(decodeTable(E2M1)[7] === 6);
 * ```
 */
export function decodeTable(fmt: MinifloatFormat): Float32Array {
  const t = new Float32Array(1 << fmt.bits);
  for (let c = 0; c < t.length; c++) t[c] = decodeMinifloat(c, fmt);
  return t;
}

/**
 * E2M1 code (4 bits, sign in bit 3) of `x`; see {@linkcode encodeMinifloat}.
 *
 * @example
 * ```ts
 * import { encodeE2M1 } from "./minifloat.ts";
 * console.assert(encodeE2M1(0.75) === 0x2); // tie between 0.5 and 1 -> 1 (even)
 * ```
 */
export function encodeE2M1(x: number): number {
  return encodeMinifloat(x, E2M1);
}

/**
 * Value of an E2M1 code.
 *
 * @example
 * ```ts
 * import { decodeE2M1 } from "./minifloat.ts";
 * console.assert(decodeE2M1(0xf) === -6);
 * ```
 */
export function decodeE2M1(code: number): number {
  return decodeMinifloat(code, E2M1);
}

/**
 * E4M3 (fn) byte of `x`; see {@linkcode encodeMinifloat}.
 *
 * @example
 * ```ts
 * import { encodeE4M3 } from "./minifloat.ts";
 * console.assert(encodeE4M3(1) === 0x38 && encodeE4M3(Infinity) === 0x7e);
 * ```
 */
export function encodeE4M3(x: number): number {
  return encodeMinifloat(x, E4M3);
}

/**
 * Value of an E4M3 (fn) byte.
 *
 * @example
 * ```ts
 * import { decodeE4M3 } from "./minifloat.ts";
 * console.assert(decodeE4M3(0x38) === 1);
 * ```
 */
export function decodeE4M3(bits: number): number {
  return decodeMinifloat(bits, E4M3);
}

/**
 * E5M2 byte of `x`; see {@linkcode encodeMinifloat} (±Inf saturates to ±57344).
 *
 * @example
 * ```ts
 * import { encodeE5M2 } from "./minifloat.ts";
 * console.assert(encodeE5M2(1) === 0x3c && encodeE5M2(NaN) === 0x7e);
 * ```
 */
export function encodeE5M2(x: number): number {
  return encodeMinifloat(x, E5M2);
}

/**
 * Value of an E5M2 byte.
 *
 * @example
 * ```ts
 * import { decodeE5M2 } from "./minifloat.ts";
 * console.assert(decodeE5M2(0x7c) === Infinity);
 * ```
 */
export function decodeE5M2(bits: number): number {
  return decodeMinifloat(bits, E5M2);
}
