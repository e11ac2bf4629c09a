/**
 * GPTQ quantizers for the FP4 formats and the INT4 baseline, following docs/FORMATS.md §5
 * (scale rules, tensor scale, MSE search) on the element and scale primitives of lib/formats.
 * Only the part GPTQ needs lives here: the element grid and the group scale rule; elements are
 * rounded by lib/gptq/quantizer.ts `roundToLevel` (ties to the even code = RNE for E2M1/INT4).
 *
 * - `mxfp4`: E2M1, E8M0 scales per 32; rule `"ocp"` (2^(floor(log2 amax) - 2), clips above
 *   1.5 x that power) or `"mr-gptq"` (same E8M0 bits, effective scale times the constant
 *   fround(4/3): 2^floor(log2 amax) / 3 as in FP-Quant, never clips).
 * - `nvfp4`: E2M1, E4M3 scales per 16, tensor scale amax / (6 * 448) of the whole (rotated)
 *   matrix; block scale = e4m3(amax_block / 6 / s_t) (after the optional MSE search).
 * - `int4`: symmetric -7..7 with absmax f32 scales (group 32 by default here).
 *
 * @module
 */
import { decodeE2M1, decodeE4M3, encodeE4M3, floorLog2 } from "../formats/minifloat.ts";
import type { GroupQuantizer } from "./quantizer.ts";
import { roundToLevel } from "./quantizer.ts";

/** Formats GPTQ knows. */
export type GptqFormat = "mxfp4" | "nvfp4" | "int4";
/** MXFP4 scale rules. */
export type MxScaleRule = "ocp" | "mr-gptq";

/** Options of {@linkcode formatQuantizer}. */
export interface FormatQuantizerOptions {
  /** Elements per scale; default: 32 (mxfp4, int4) or 16 (nvfp4). */
  groupSize?: number;
  /** MXFP4 scale rule; default `"ocp"`. */
  rule?: MxScaleRule;
  /** MSE scale search (FP-Quant's: 100 shrink factors down to 0.2, |err|^2.4); default off. */
  mse?: boolean;
}

const E2M1_CODES = [15, 14, 13, 12, 11, 10, 9, 0, 1, 2, 3, 4, 5, 6, 7];
const fround = Math.fround;

function e2m1Levels() {
  // -0 (code 8) is left out: +0 represents zero.
  return {
    values: Float64Array.from(E2M1_CODES, (c) => decodeE2M1(c)),
    codes: Uint8Array.from(E2M1_CODES),
  };
}

/**
 * The GPTQ quantizer of a format.
 *
 * @example
 * ```ts
 * import { formatQuantizer } from "./formats.ts";
 * const q = formatQuantizer("mxfp4", { rule: "mr-gptq" });
 * const s = q.chooseScales(new Float64Array(32).fill(6), 1, 32, 0, 1, q.tensorScale(new Float64Array(1), 1, 1));
 * console.assert(s.block[0] === 1);
 * ```
 */
export function formatQuantizer(
  format: GptqFormat,
  options: FormatQuantizerOptions = {},
): GroupQuantizer {
  const gs = options.groupSize ?? (format === "nvfp4" ? 16 : 32);
  const rule = options.rule ?? "ocp";
  const levels = format === "int4"
    ? {
      values: Float64Array.from({ length: 15 }, (_, i) => i - 7),
      codes: Uint8Array.from({ length: 15 }, (_, i) => (i - 7) & 15),
    }
    : e2m1Levels();
  const M = format === "int4" ? 7 : 6;
  const candidates = options.mse ? 100 : 1;
  const shrink = Float64Array.from({ length: candidates }, (_, k) => fround(1 - (k * 0.8) / 100));

  // Block scale value for a shrunk group amax `a`.
  const blockScale = (a: number, st: number): number => {
    if (format === "mxfp4") return a === 0 ? 2 ** -127 : 2 ** (floorLog2(a) - 2);
    if (format === "nvfp4") return decodeE4M3(encodeE4M3(fround(fround(a / M) / st)));
    return fround(a / M);
  };
  const tensorScale = (w: Float64Array): number => {
    if (format === "mxfp4") return rule === "mr-gptq" ? fround(4 / 3) : 1;
    if (format === "int4") return 1;
    let amax = 0;
    for (let i = 0; i < w.length; i++) amax = Math.max(amax, Math.abs(fround(w[i])));
    return amax === 0 ? 1 : fround(amax / fround(6 * 448));
  };
  return {
    name: format === "mxfp4" ? `mxfp4(${rule})` : format,
    groupSize: gs,
    levels,
    tensorScale: (w) => tensorScale(w),
    chooseScales(w, rows, cols, col0, groups, st) {
      const block = new Float64Array(rows * groups);
      const x = new Float64Array(gs);
      for (let r = 0; r < rows; r++) {
        for (let g = 0; g < groups; g++) {
          let amax = 0;
          for (let i = 0; i < gs; i++) {
            x[i] = fround(w[r * cols + col0 + g * gs + i]);
            amax = Math.max(amax, Math.abs(x[i]));
          }
          let best = Infinity;
          let bestScale = 0;
          for (const p of shrink) {
            const b = blockScale(fround(amax * p), st);
            const s = fround(b * st);
            if (!(s > 0)) continue;
            let err = 0;
            for (let i = 0; i < gs && candidates > 1; i++) {
              const li = roundToLevel(levels, fround(x[i] / s));
              err += Math.abs(x[i] - fround(levels.values[li] * s)) ** 2.4;
            }
            if (err < best) [best, bestScale] = [err, b];
          }
          // An all-zero NVFP4/INT4 group has scale 0; any positive scale quantizes it exactly.
          block[r * groups + g] = bestScale > 0 ? bestScale : 1;
        }
      }
      return { block };
    },
  };
}
