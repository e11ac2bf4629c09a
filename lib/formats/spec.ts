/**
 * {@linkcode QuantSpec}: the complete description of a group quantization format, the named
 * presets (mxfp4, nvfp4, ...), the `"preset:modifier"` string syntax, and validation.
 * Specification: docs/FORMATS.md §5.1.
 *
 * @module
 */
import { E2M1, E2M3, E3M2, E4M3, E5M2, type MinifloatFormat } from "./minifloat.ts";
import { INT4, INT8, type IntFormat, MXINT8, UINT4, UINT8 } from "./integer.ts";
import { SCALE_FORMATS, type ScaleFormatName } from "./scales.ts";

/** Element format names. */
export type ElementName =
  | "e2m1"
  | "e2m3"
  | "e3m2"
  | "e4m3"
  | "e5m2"
  | "int4"
  | "int8"
  | "uint4"
  | "uint8"
  | "mxint8";

/** How a group's scale is chosen from its values (docs/FORMATS.md §5.5). */
export type ScaleRule = "ocp" | "ceil" | "round" | "mr-gptq" | "absmax" | "minmax";

/**
 * MSE scale search: factors 1 - k (1 - minShrink) / candidates of the rule's scale, error sum
 * |d|^norm. A minShrink above 1 makes the factors grow instead (coarser grid, less clipping):
 * `{ candidates: 2, minShrink: 2 }` tries 1 and 1.5, i.e. an NVFP4 block's largest value mapped
 * to 6 or to 4.
 */
export interface MseSearch {
  /** Number of factors tried, k = 0..candidates-1. */
  readonly candidates: number;
  /** The factor approached by the last candidate (0 < minShrink <= 4; above 1 grows). */
  readonly minShrink: number;
  /** Exponent of the error norm. */
  readonly norm: number;
}

/** A complete, validated quantization format. */
export interface QuantSpec {
  /** Element format. */
  readonly element: ElementName;
  /** Format of the stored group scales. */
  readonly scaleFormat: ScaleFormatName;
  /** Elements per scale along a row, or one scale per row (`"channel"`) or per tensor. */
  readonly groupSize: number | "channel" | "tensor";
  /** Rule that picks a group's scale. */
  readonly scaleRule: ScaleRule;
  /**
   * An FP32 per-tensor scale s_t that every group scale is chosen relative to: `"amax"` derives
   * it from the tensor (the largest group scale lands at the scale format's max, one extra pass
   * over the data), a number fixes it (a calibrated s_t, e.g. of activations, so quantizing
   * reads the data once), `"none"` has none.
   */
  readonly tensorScale: "none" | "amax" | number;
  /** Round to nearest even, or stochastic (Philox keyed by `seed`). */
  readonly rounding: "rne" | "stochastic";
  /** 64-bit seed of stochastic rounding. */
  readonly seed: bigint;
  /** MSE scale search, or null for the plain rule. */
  readonly mse: MseSearch | null;
}

/** A spec given by the user: a preset string, or an object naming a preset or an element. */
export type SpecInput =
  | string
  | (Partial<Omit<QuantSpec, "seed" | "mse">> & {
    preset?: string;
    seed?: bigint | number;
    mse?: boolean | Partial<MseSearch> | null;
  });

/** The MR-GPTQ reference's MSE search: 100 candidates, down to 0.2, norm 2.4. */
export const DEFAULT_MSE: MseSearch = Object.freeze({ candidates: 100, minShrink: 0.2, norm: 2.4 });

const ELEMENTS: Record<ElementName, MinifloatFormat | IntFormat> = {
  e2m1: E2M1,
  e2m3: E2M3,
  e3m2: E3M2,
  e4m3: E4M3,
  e5m2: E5M2,
  int4: INT4,
  int8: INT8,
  uint4: UINT4,
  uint8: UINT8,
  mxint8: MXINT8,
};

const RULES: readonly ScaleRule[] = ["ocp", "ceil", "round", "mr-gptq", "absmax", "minmax"];

/** The fields a preset fixes; rounding, seed and MSE search are chosen per use. */
export type PresetSpec = Pick<
  QuantSpec,
  "element" | "scaleFormat" | "groupSize" | "scaleRule" | "tensorScale"
>;

function mx(element: ElementName): PresetSpec {
  return { element, scaleFormat: "e8m0", groupSize: 32, scaleRule: "ocp", tensorScale: "none" };
}

/** The named presets (docs/FORMATS.md §5.1). */
export const PRESETS: Readonly<Record<string, Readonly<PresetSpec>>> = Object.freeze({
  mxfp4: mx("e2m1"),
  nvfp4: {
    element: "e2m1",
    scaleFormat: "e4m3",
    groupSize: 16,
    scaleRule: "absmax",
    tensorScale: "amax",
  },
  mxfp6: mx("e2m3"),
  mxfp6_e2m3: mx("e2m3"),
  mxfp6_e3m2: mx("e3m2"),
  mxfp8: mx("e4m3"),
  mxfp8_e5m2: mx("e5m2"),
  mxint8: mx("mxint8"),
  int4: {
    element: "int4",
    scaleFormat: "f16",
    groupSize: 128,
    scaleRule: "absmax",
    tensorScale: "none",
  },
  uint4: {
    element: "uint4",
    scaleFormat: "f16",
    groupSize: 128,
    scaleRule: "minmax",
    tensorScale: "none",
  },
  int8: {
    element: "int8",
    scaleFormat: "f32",
    groupSize: "channel",
    scaleRule: "absmax",
    tensorScale: "none",
  },
  uint8: {
    element: "uint8",
    scaleFormat: "f32",
    groupSize: "channel",
    scaleRule: "minmax",
    tensorScale: "none",
  },
  fp8: {
    element: "e4m3",
    scaleFormat: "f32",
    groupSize: "tensor",
    scaleRule: "absmax",
    tensorScale: "none",
  },
  fp8_e5m2: {
    element: "e5m2",
    scaleFormat: "f32",
    groupSize: "tensor",
    scaleRule: "absmax",
    tensorScale: "none",
  },
});

/**
 * The element format descriptor of an element name.
 *
 * @example
 * ```ts
 * import { elementFormat } from "./spec.ts";
 * console.assert(elementFormat("e2m1").maxFinite === 6);
 * ```
 */
export function elementFormat(name: ElementName): MinifloatFormat | IntFormat {
  const f = ELEMENTS[name];
  if (!f) {
    throw new Error(
      `unknown element format "${name}"; expected one of ${Object.keys(ELEMENTS).join(", ")}`,
    );
  }
  return f;
}

/**
 * Whether an element format descriptor is an integer format.
 *
 * @example
 * ```ts
 * import { elementFormat, isIntFormat } from "./spec.ts";
 * console.assert(isIntFormat(elementFormat("int4")) && !isIntFormat(elementFormat("e2m1")));
 * ```
 */
export function isIntFormat(f: MinifloatFormat | IntFormat): f is IntFormat {
  return "qmax" in f;
}

function presetBase(name: string): PresetSpec {
  const p = PRESETS[name];
  if (!p) {
    throw new Error(
      `unknown quantization preset "${name}"; expected one of ${Object.keys(PRESETS).join(", ")}`,
    );
  }
  return { ...p };
}

function defaultRule(element: ElementName, scaleFormat: ScaleFormatName): ScaleRule {
  if (scaleFormat === "e8m0") return "ocp";
  return element === "uint4" || element === "uint8" ? "minmax" : "absmax";
}

// "16", "16,0.6" or "16,0.6,2": the search's fields in order; resolveMse checks the values.
function parseMse(text: string, spec: string): Partial<MseSearch> {
  const parts = text.split(",");
  if (parts.length > 3 || parts.some((p) => p.trim() === "" || !Number.isFinite(Number(p)))) {
    throw new Error(
      `bad "mse=${text}" in quantization spec "${spec}"; expected mse=<candidates>[,<minShrink>[,<norm>]]`,
    );
  }
  const [candidates, minShrink, norm] = parts.map(Number);
  return {
    candidates,
    ...(minShrink === undefined ? {} : { minShrink }),
    ...(norm === undefined ? {} : { norm }),
  };
}

// "none", "amax" or a number (resolveSpec checks its range).
function parseTensorScale(text: string, spec: string): "none" | "amax" | number {
  if (text === "none" || text === "amax") return text;
  const v = Number(text);
  if (text.trim() === "" || Number.isNaN(v)) {
    throw new Error(
      `bad "ts=${text}" in quantization spec "${spec}"; expected ts=none, ts=amax or ts=<number>`,
    );
  }
  return v;
}

function parseString(text: string): Record<string, unknown> {
  const [name, ...mods] = text.split(":");
  const out: Record<string, unknown> = { preset: name };
  for (const m of mods) {
    const g = /^g(\d+)$/.exec(m);
    if (g) out.groupSize = Number(g[1]);
    else if (m === "channel" || m === "tensor") out.groupSize = m;
    else if (m.startsWith("scale=")) out.scaleFormat = m.slice(6);
    else if (m.startsWith("rule=")) out.scaleRule = m.slice(5);
    else if (m === "mse") out.mse = true;
    else if (m.startsWith("mse=")) out.mse = parseMse(m.slice(4), text);
    else if (m === "sr") out.rounding = "stochastic";
    else if (/^seed=\d+$/.test(m)) out.seed = BigInt(m.slice(5));
    else if (m.startsWith("ts=")) out.tensorScale = parseTensorScale(m.slice(3), text);
    else {
      throw new Error(
        `unknown modifier "${m}" in quantization spec "${text}"; expected g<N>, channel, tensor, ` +
          `scale=<fmt>, rule=<rule>, mse, mse=<candidates>[,<minShrink>[,<norm>]], sr, seed=<n> or ` +
          `ts=<none|amax|number>`,
      );
    }
  }
  return out;
}

/**
 * Resolves a preset string (`"nvfp4"`, `"int4:g64"`, `"mxfp4:rule=mr-gptq:mse"`) or a spec
 * object to a complete, validated, frozen {@linkcode QuantSpec}. Objects either name a
 * `preset` and override fields, or give at least `element`, `scaleFormat` and `groupSize`.
 * Nonsense combinations throw an Error naming the problem.
 *
 * @example
 * ```ts
 * import { resolveSpec } from "./spec.ts";
 * const s = resolveSpec("int4:g64");
 * console.assert(s.groupSize === 64 && s.scaleFormat === "f16");
 * ```
 */
export function resolveSpec(input: SpecInput | QuantSpec): QuantSpec {
  const o: Record<string, unknown> = typeof input === "string" ? parseString(input) : { ...input };
  let base: Partial<PresetSpec>;
  if (o.preset !== undefined) base = presetBase(String(o.preset));
  else {
    for (const k of ["element", "scaleFormat", "groupSize"]) {
      if (o[k] === undefined) {
        throw new Error(`quantization spec: "${k}" is required when no preset is named`);
      }
    }
    base = {};
  }
  const element = (o.element ?? base.element) as ElementName;
  const fmt = elementFormat(element);
  const scaleFormat = (o.scaleFormat ?? base.scaleFormat) as ScaleFormatName;
  if (!SCALE_FORMATS.includes(scaleFormat)) {
    throw new Error(
      `unknown scale format "${scaleFormat}"; expected one of ${SCALE_FORMATS.join(", ")}`,
    );
  }
  const groupSize = (o.groupSize ?? base.groupSize) as QuantSpec["groupSize"];
  if (
    !(groupSize === "channel" || groupSize === "tensor" ||
      (Number.isInteger(groupSize) && groupSize > 0))
  ) {
    throw new Error(
      `group size must be a positive integer, "channel" or "tensor", got ${String(groupSize)}`,
    );
  }
  // A scale format override on a preset resets the preset's rule to the new format's default.
  const formatChanged = o.scaleFormat !== undefined && o.scaleFormat !== base.scaleFormat;
  const scaleRule = (o.scaleRule ?? (formatChanged ? undefined : base.scaleRule) ??
    defaultRule(element, scaleFormat)) as ScaleRule;
  if (!RULES.includes(scaleRule)) {
    throw new Error(`unknown scale rule "${scaleRule}"; expected one of ${RULES.join(", ")}`);
  }
  const asym = isIntFormat(fmt) && fmt.asymmetric;
  if (scaleFormat === "e8m0") {
    if (!["ocp", "ceil", "round", "mr-gptq"].includes(scaleRule)) {
      throw new Error(
        `scale rule "${scaleRule}" does not apply to e8m0 scales (use ocp, ceil, round or mr-gptq)`,
      );
    }
    if (asym) {
      throw new Error(
        `element ${element} needs a zero point, which e8m0 (power-of-two) scales do not support`,
      );
    }
  } else if (asym && scaleRule !== "minmax") {
    throw new Error(
      `element ${element} is asymmetric: its scale rule must be "minmax", got "${scaleRule}"`,
    );
  } else if (!asym && scaleRule !== "absmax") {
    throw new Error(
      `scale rule "${scaleRule}" needs e8m0 scales (or an asymmetric element for minmax); ${scaleFormat} scales use "absmax"`,
    );
  }
  let tensorScale =
    (o.tensorScale ?? (formatChanged ? "none" : base.tensorScale) ?? "none") as QuantSpec[
      "tensorScale"
    ];
  if (typeof tensorScale === "number") {
    const v = Math.fround(tensorScale);
    if (!(Number.isFinite(v) && v > 0)) {
      throw new Error(
        `a given tensorScale must be a finite float32 > 0, got ${tensorScale}` +
          (Number.isFinite(tensorScale) && tensorScale > 0 ? " (out of float32 range)" : ""),
      );
    }
    tensorScale = v;
  } else if (tensorScale !== "none" && tensorScale !== "amax") {
    throw new Error(`tensorScale must be "none", "amax" or a number, got "${tensorScale}"`);
  }
  const what = tensorScale === "amax" ? `tensorScale "amax"` : "a given tensorScale";
  if (tensorScale !== "none" && !(scaleFormat === "e4m3" || scaleFormat === "ue5m3")) {
    throw new Error(`${what} needs e4m3 or ue5m3 group scales, got ${scaleFormat}`);
  }
  if (tensorScale !== "none" && asym) {
    throw new Error(`${what} does not combine with the asymmetric element ${element}`);
  }
  const rounding = (o.rounding ?? "rne") as QuantSpec["rounding"];
  if (rounding !== "rne" && rounding !== "stochastic") {
    throw new Error(`rounding must be "rne" or "stochastic", got "${rounding}"`);
  }
  let seed: bigint;
  try {
    seed = BigInt((o.seed as bigint | number | undefined) ?? 0);
  } catch {
    throw new Error(`seed must be an integer in [0, 2^64), got ${String(o.seed)}`);
  }
  if (seed < 0n || seed >= 1n << 64n) throw new Error(`seed must be in [0, 2^64), got ${seed}`);
  const mse = resolveMse(o.mse as boolean | Partial<MseSearch> | null | undefined);
  return Object.freeze({
    element,
    scaleFormat,
    groupSize,
    scaleRule,
    tensorScale,
    rounding,
    seed,
    mse,
  });
}

function resolveMse(m: boolean | Partial<MseSearch> | null | undefined): MseSearch | null {
  if (m === undefined || m === null || m === false) return null;
  const r = { ...DEFAULT_MSE, ...(m === true ? {} : m) };
  if (!(Number.isInteger(r.candidates) && r.candidates >= 1 && r.candidates <= 10000)) {
    throw new Error(`mse.candidates must be an integer in 1..10000, got ${r.candidates}`);
  }
  if (!(r.minShrink > 0 && r.minShrink <= 4)) {
    throw new Error(`mse.minShrink must be in (0, 4], got ${r.minShrink}`);
  }
  if (!(Number.isFinite(r.norm) && r.norm > 0)) {
    throw new Error(`mse.norm must be finite and > 0, got ${r.norm}`);
  }
  return Object.freeze(r);
}

/**
 * Stable one-line description of a spec, e.g. for logs and checkpoint configs.
 *
 * @example
 * ```ts
 * import { describeSpec, resolveSpec } from "./spec.ts";
 * console.assert(describeSpec(resolveSpec("mxfp4")).startsWith("e2m1/e8m0"));
 * ```
 */
export function describeSpec(s: QuantSpec): string {
  let d = `${s.element}/${s.scaleFormat} g=${s.groupSize} rule=${s.scaleRule}`;
  if (s.tensorScale !== "none") d += ` tensor=${s.tensorScale}`;
  if (s.rounding === "stochastic") d += ` sr(seed=${s.seed})`;
  if (s.mse) d += ` mse(${s.mse.candidates},${s.mse.minShrink},${s.mse.norm})`;
  return d;
}
