/**
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
 * counter-based generator also behind cuRAND's `curand_Philox4x32_10`: the same (key, counter)
 * gives the same four words on every backend, so stochastic rounding and random Hadamard signs
 * are reproducible bit for bit. Specification: docs/FORMATS.md §7.
 *
 * @module
 */

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

/** High 32 bits of the 64-bit product of two u32 (exact, through 16-bit halves). */
function mulhi(a: number, b: number): number {
  const t1 = a * (b & 0xffff); // < 2^48: exact
  const t2 = a * (b >>> 16); // < 2^48: exact
  const t2h = Math.floor(t2 / 65536);
  const t2l = t2 - t2h * 65536;
  return (t2h + Math.floor((t2l * 65536 + t1) / 4294967296)) >>> 0;
}

/**
 * The four output words of Philox4x32-10 for a 128-bit counter (c0..c3) and 64-bit key
 * (k0, k1), written to `out` (a fresh array when none is given).
 *
 * @example
 * ```ts
 * import { philox4x32 } from "./philox.ts";
 * const w = philox4x32(0, 0, 0, 0, 0, 0);
 * console.assert(w[0] === 0x6627e8d5); // Random123 known-answer vector
 * ```
 */
export function philox4x32(
  c0: number,
  c1: number,
  c2: number,
  c3: number,
  k0: number,
  k1: number,
  out: Uint32Array = new Uint32Array(4),
): Uint32Array {
  c0 >>>= 0;
  c1 >>>= 0;
  c2 >>>= 0;
  c3 >>>= 0;
  k0 >>>= 0;
  k1 >>>= 0;
  for (let round = 0; round < 10; round++) {
    const hi0 = mulhi(M0, c0);
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1, c2);
    const lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
  return out;
}

/**
 * Word 0 of Philox4x32-10 for counter (c0, c1, 0, 0) and key (k0, k1): the uniform 32-bit
 * integer that stochastic rounding and random signs draw per element.
 *
 * @example
 * ```ts
 * import { philoxWord0 } from "./philox.ts";
 * console.assert(philoxWord0(0, 0, 0, 0) === 0x6627e8d5);
 * ```
 */
export function philoxWord0(c0: number, c1: number, k0: number, k1: number): number {
  return philox4x32(c0, c1, 0, 0, k0, k1, scratch)[0];
}

// Reused by philoxWord0 so the per-element path allocates nothing.
const scratch = new Uint32Array(4);

/**
 * Splits a 64-bit seed (a non-negative safe integer or a bigint below 2^64) into the Philox key
 * words [low 32 bits, high 32 bits].
 *
 * @example
 * ```ts
 * import { seedKey } from "./philox.ts";
 * console.assert(seedKey(2n ** 32n + 5n)[1] === 1);
 * ```
 */
export function seedKey(seed: number | bigint): [number, number] {
  const s = BigInt(seed);
  if (s < 0n || s >= 1n << 64n) throw new Error(`seed ${seed} is not in [0, 2^64)`);
  return [Number(s & 0xffffffffn), Number(s >> 32n)];
}
