/**
 * Integer element formats: symmetric two's-complement INT4/INT8, asymmetric UINT4/UINT8 (used
 * with a zero point) and the OCP MX INT8 element (two's complement with an implicit 2^-6).
 * Specification: docs/FORMATS.md §3.
 *
 * @module
 */

/** An integer element format: value = code * step for code in [qmin, qmax]. */
export interface IntFormat {
  /** Short lower-case name, e.g. `"int4"`. */
  readonly name: string;
  /** Storage width in bits (4 or 8). */
  readonly bits: number;
  /** Smallest code used (symmetric formats leave -2^(bits-1) unused). */
  readonly qmin: number;
  /** Largest code. */
  readonly qmax: number;
  /** Implicit power-of-two step (1, or 2^-6 for the MX INT8 element). */
  readonly step: number;
  /** Whether the format is used with a zero point (asymmetric). */
  readonly asymmetric: boolean;
  /** Largest representable magnitude, qmax * step. */
  readonly maxFinite: number;
  /** floor(log2(maxFinite)): the "emax" of the OCP MX scale rule. */
  readonly emax: number;
}

function intFormat(
  name: string,
  bits: number,
  qmin: number,
  qmax: number,
  step: number,
  asymmetric: boolean,
): IntFormat {
  const maxFinite = qmax * step;
  return Object.freeze({
    name,
    bits,
    qmin,
    qmax,
    step,
    asymmetric,
    maxFinite,
    emax: Math.floor(Math.log2(maxFinite)),
  });
}

/** INT4 symmetric: codes -7..7 (two's-complement nibble; -8 is never produced). */
export const INT4: IntFormat = intFormat("int4", 4, -7, 7, 1, false);
/** INT8 symmetric: codes -127..127 (two's-complement byte; -128 is never produced). */
export const INT8: IntFormat = intFormat("int8", 8, -127, 127, 1, false);
/** UINT4 with zero point: codes 0..15. */
export const UINT4: IntFormat = intFormat("uint4", 4, 0, 15, 1, true);
/** UINT8 with zero point: codes 0..255. */
export const UINT8: IntFormat = intFormat("uint8", 8, 0, 255, 1, true);
/** OCP MX INT8 element: codes -127..127 times 2^-6 (max 1.984375). */
export const MXINT8: IntFormat = intFormat("mxint8", 8, -127, 127, 2 ** -6, false);

/**
 * Rounds to the nearest integer, ties to even.
 *
 * @example
 * ```ts
 * import { roundHalfEven } from "./integer.ts";
 * console.assert(roundHalfEven(2.5) === 2 && roundHalfEven(-3.5) === -4);
 * ```
 */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const r = x - f;
  if (r > 0.5 || (r === 0.5 && (f & 1) === 1)) return f + 1;
  return f;
}

/**
 * Integer code of `x` (already divided by the scale, zero point not yet added): round half to
 * even of x / step, clamped to [qmin, qmax]; NaN gives 0, ±Inf saturate. For asymmetric
 * formats the caller adds the zero point before clamping, see {@linkcode encodeIntZero}.
 *
 * @example
 * ```ts
 * import { encodeInt, INT4 } from "./integer.ts";
 * console.assert(encodeInt(6.5, INT4) === 6 && encodeInt(-100, INT4) === -7);
 * ```
 */
export function encodeInt(x: number, fmt: IntFormat): number {
  if (x !== x) return 0;
  const n = roundHalfEven(x / fmt.step);
  return n < fmt.qmin ? fmt.qmin : n > fmt.qmax ? fmt.qmax : n;
}

/**
 * Asymmetric code: clamp(roundHalfEven(x / step) + zero, qmin, qmax); NaN gives `zero`.
 *
 * @example
 * ```ts
 * import { encodeIntZero, UINT4 } from "./integer.ts";
 * console.assert(encodeIntZero(-2.4, UINT4, 5) === 3);
 * ```
 */
export function encodeIntZero(x: number, fmt: IntFormat, zero: number): number {
  if (x !== x) return zero;
  const n = roundHalfEven(x / fmt.step) + zero;
  return n < fmt.qmin ? fmt.qmin : n > fmt.qmax ? fmt.qmax : n;
}

/**
 * Stochastic twin of {@linkcode encodeInt}: with t = x / step, rounds up iff
 * r < (t - floor(t)) * 2^32, r a uniform 32-bit integer; then clamps.
 *
 * @example
 * ```ts
 * import { encodeIntStochastic, INT8 } from "./integer.ts";
 * console.assert(encodeIntStochastic(1.25, INT8, 0) === 2);
 * ```
 */
export function encodeIntStochastic(x: number, fmt: IntFormat, r: number, zero = 0): number {
  if (x !== x) return zero;
  const t = x / fmt.step;
  let n = Math.floor(t);
  if (r < (t - n) * 4294967296) n += 1;
  n += zero;
  return n < fmt.qmin ? fmt.qmin : n > fmt.qmax ? fmt.qmax : n;
}

/**
 * The storage bits of a code: two's complement in `bits` bits for signed formats.
 *
 * @example
 * ```ts
 * import { INT4, intCodeBits } from "./integer.ts";
 * console.assert(intCodeBits(-1, INT4) === 0xf);
 * ```
 */
export function intCodeBits(code: number, fmt: IntFormat): number {
  return code & ((1 << fmt.bits) - 1);
}

/**
 * The integer code stored in `bits` (sign-extended for signed formats).
 *
 * @example
 * ```ts
 * import { INT4, intFromBits } from "./integer.ts";
 * console.assert(intFromBits(0xf, INT4) === -1);
 * ```
 */
export function intFromBits(bits: number, fmt: IntFormat): number {
  const b = bits & ((1 << fmt.bits) - 1);
  if (fmt.asymmetric) return b;
  return b >= 1 << (fmt.bits - 1) ? b - (1 << fmt.bits) : b;
}
