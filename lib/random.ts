/**
 * Seeded pseudo-random numbers for tests, synthetic data, random models and notebooks: the same
 * seed gives the same sequence everywhere, so a failing case can be replayed from its seed.
 * (Stochastic rounding and sampling use Philox from `lib/formats/philox.ts`, which the native
 * backends reproduce; these generators are for host-side data only.)
 *
 * @module
 */

/**
 * A seeded generator (mulberry32) of uniforms in [0, 1).
 *
 * @example
 * ```ts
 * import { seededRandom } from "./random.ts";
 * const a = seededRandom(7), b = seededRandom(7);
 * console.assert(a() === b());
 * ```
 */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A standard normal sampler driven by `rand` (Box-Muller).
 *
 * @example
 * ```ts
 * import { gaussian, seededRandom } from "./random.ts";
 * const g = gaussian(seededRandom(1));
 * console.assert(Number.isFinite(g()));
 * ```
 */
export function gaussian(rand: () => number): () => number {
  return () => {
    const u = 1 - rand();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  };
}
