/**
 * The narrow interface GPTQ needs from a number format: the element grid (every representable
 * element value with its code), a per-tensor scale, and a rule that chooses group scales for a
 * slice of a weight matrix. GPTQ quantizes one value at a time with a fixed scale, so it rounds
 * `x / scale` to the nearest grid level itself ({@linkcode roundToLevel}); ties go to the level
 * with the even code, which is round-half-to-even for both the E2M1 grid (even code = even
 * mantissa) and two's-complement integer grids.
 *
 * Formats plug in through {@linkcode formatQuantizer} (lib/gptq/formats.ts); tests also use
 * {@linkcode uniformQuantizer}, a plain symmetric integer grid with absmax scales.
 *
 * @module
 */

/** The element grid: representable values in ascending order and the code of each. */
export interface ElementLevels {
  /** Representable element values, strictly ascending. */
  readonly values: Float64Array;
  /** `codes[i]` is the stored code of `values[i]`. */
  readonly codes: Uint8Array;
}

/** Group scales chosen for `groups` consecutive groups of every row of a matrix slice. */
export interface GroupScales {
  /** Block scale values (as stored, decoded to numbers), row-major rows x groups. */
  readonly block: Float64Array;
}

/** What GPTQ needs from a number format. */
export interface GroupQuantizer {
  /** A short name, e.g. `"mxfp4"`, for messages and tables. */
  readonly name: string;
  /** Elements sharing one block scale along the input dimension. */
  readonly groupSize: number;
  /** The element grid. */
  readonly levels: ElementLevels;
  /**
   * The per-tensor scale for the whole (rotated) weight matrix `w` (rows x cols, row-major);
   * 1 for formats without one. Effective scale of an element = block scale * tensor scale.
   */
  tensorScale(w: Float64Array, rows: number, cols: number): number;
  /**
   * Block scales for the groups of columns `[col0, col0 + groups * groupSize)` of every row of
   * `w` (rows x cols), with the format's scale rule (including any MSE search); never 0.
   */
  chooseScales(
    w: Float64Array,
    rows: number,
    cols: number,
    col0: number,
    groups: number,
    tensorScale: number,
  ): GroupScales;
}

/**
 * Index into `levels` of the level nearest to `v`; ties go to the level with the even code.
 * Values beyond the grid saturate to its ends; NaN throws.
 *
 * @example
 * ```ts
 * import { roundToLevel, uniformQuantizer } from "./quantizer.ts";
 * const { levels } = uniformQuantizer(4, 8);
 * console.assert(levels.values[roundToLevel(levels, 2.5)] === 2);
 * console.assert(levels.values[roundToLevel(levels, 100)] === 7);
 * ```
 */
export function roundToLevel(levels: ElementLevels, v: number): number {
  const vals = levels.values;
  if (Number.isNaN(v)) throw new Error("cannot round NaN to a grid level");
  let lo = 0;
  let hi = vals.length - 1;
  if (v <= vals[lo]) return lo;
  if (v >= vals[hi]) return hi;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (vals[mid] <= v) lo = mid;
    else hi = mid;
  }
  const dl = v - vals[lo];
  const dh = vals[hi] - v;
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (levels.codes[lo] & 1) === 0 ? lo : hi;
}

/**
 * A symmetric integer grid `-(2^(bits-1) - 1) .. 2^(bits-1) - 1` (codes in two's complement)
 * with absmax block scales and no tensor scale: a format-independent stand-in for tests.
 *
 * @example
 * ```ts
 * import { uniformQuantizer } from "./quantizer.ts";
 * const q = uniformQuantizer(4, 2);
 * const s = q.chooseScales(new Float64Array([1, -7, 0, 0]), 1, 4, 0, 2, 1);
 * console.assert(s.block[0] === 1 && s.block[1] === 1);
 * ```
 */
export function uniformQuantizer(bits: number, groupSize: number): GroupQuantizer {
  const qmax = 2 ** (bits - 1) - 1;
  const n = 2 * qmax + 1;
  const values = new Float64Array(n);
  const codes = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    values[i] = i - qmax;
    codes[i] = (i - qmax) & ((1 << bits) - 1);
  }
  return {
    name: `int${bits}-uniform`,
    groupSize,
    levels: { values, codes },
    tensorScale: () => 1,
    chooseScales(w, rows, cols, col0, groups) {
      const block = new Float64Array(rows * groups);
      for (let r = 0; r < rows; r++) {
        for (let g = 0; g < groups; g++) {
          let amax = 0;
          const c0 = r * cols + col0 + g * groupSize;
          for (let c = 0; c < groupSize; c++) amax = Math.max(amax, Math.abs(w[c0 + c]));
          block[r * groups + g] = amax > 0 ? amax / qmax : 1;
        }
      }
      return { block };
    },
  };
}
