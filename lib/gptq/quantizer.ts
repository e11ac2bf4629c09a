/**
 * What GPTQ needs from a number format, taken from lib/formats (docs/FORMATS.md is the one
 * definition of every rule): the group scale choice of a weight matrix (`chooseGroupScales`:
 * scale rule, tensor scale, MSE search) and the element rounding of one value given its
 * group's effective scale S (`elementCodec`: round to nearest even on the element grid).
 * GPTQ fixes the scales, then rounds one column at a time with error feedback; with no error
 * feedback this is exactly lib/formats `quantize` (tests/gptq_layer_test.ts pins that).
 *
 * @module
 */
import {
  chooseGroupScales,
  type ElementCodec,
  elementCodec,
  type GroupScaleChoice,
} from "../formats/quantize.ts";
import { describeSpec, elementFormat, isIntFormat, resolveSpec } from "../formats/spec.ts";
import type { QuantSpec, SpecInput } from "../formats/spec.ts";

/** A format as GPTQ uses it. */
export interface GroupQuantizer {
  /** The resolved spec (symmetric element, numeric group size, round to nearest even). */
  readonly spec: QuantSpec;
  /** One-line description for messages and tables (lib/formats `describeSpec`). */
  readonly name: string;
  /** Elements sharing one scale along the input dimension. */
  readonly groupSize: number;
  /** Element rounding given the effective scale. */
  readonly codec: ElementCodec;
  /**
   * Scales of every group of `w` (rows x cols, float32 values), exactly as lib/formats
   * `quantize` chooses them; `tensorScale` overrides an amax tensor scale (dynamic groups).
   */
  chooseScales(w: Float32Array, rows: number, cols: number, tensorScale?: number): GroupScaleChoice;
}

/**
 * The GPTQ view of a lib/formats spec (a preset such as `"mxfp4"`, `"nvfp4:mse"`,
 * `"int4:g32"`, or a spec object). GPTQ rounds with feedback, so the spec must use round to
 * nearest even, a symmetric element (no zero points) and a numeric group size.
 *
 * @example
 * ```ts
 * import { groupQuantizer } from "./quantizer.ts";
 * const q = groupQuantizer("mxfp4:rule=mr-gptq");
 * const s = q.chooseScales(new Float32Array(32).fill(6), 1, 32);
 * console.assert(s.effective[0] === Math.fround(4 / 3) * 4 && q.codec.encode(4.4) === 6);
 * ```
 */
export function groupQuantizer(spec: SpecInput | QuantSpec): GroupQuantizer {
  const s = resolveSpec(spec);
  const f = elementFormat(s.element);
  if (isIntFormat(f) && f.asymmetric) {
    throw new Error(`GPTQ needs a symmetric element format; ${s.element} has zero points`);
  }
  if (typeof s.groupSize !== "number") {
    throw new Error(`GPTQ needs a numeric group size, got "${s.groupSize}"`);
  }
  if (s.rounding !== "rne") {
    throw new Error("GPTQ rounds to nearest even; stochastic rounding is not supported");
  }
  return {
    spec: s,
    name: describeSpec(s),
    groupSize: s.groupSize,
    codec: elementCodec(s),
    chooseScales: (w, rows, cols, tensorScale) =>
      chooseGroupScales(
        w,
        [rows, cols],
        s,
        tensorScale === undefined ? {} : { tensorScale },
      ),
  };
}
