/**
 * Group quantization and dequantization of a 2-D float32 tensor to any {@linkcode QuantSpec}:
 * scale rules, tensor scale, MSE scale search, stochastic rounding and packing, exactly as
 * docs/FORMATS.md §5–6 specify (every operation float32 unless stated; the native twin must
 * produce the same bytes).
 *
 * @module
 */
import {
  decodeTable,
  encodeMinifloat,
  encodeMinifloatStochastic,
  floorLog2,
  type MinifloatFormat,
} from "./minifloat.ts";
import {
  encodeIntStochastic,
  encodeIntZero,
  intCodeBits,
  type IntFormat,
  intFromBits,
} from "./integer.ts";
import {
  decodeScale,
  e8m0FromExponent,
  encodeScale,
  readScaleBits,
  scaleBytes,
  scaleMax,
  writeScaleBits,
} from "./scales.ts";
import { philoxWord0, seedKey } from "./philox.ts";
import { elementFormat, isIntFormat, type QuantSpec, resolveSpec, type SpecInput } from "./spec.ts";

const fround = Math.fround;

/** A quantized 2-D tensor: packed codes, raw scale bits and the spec that produced them. */
export interface Quantized {
  /** The resolved spec. */
  readonly spec: QuantSpec;
  /** [rows, cols] of the original tensor. */
  readonly shape: readonly [number, number];
  /** Element codes, packed (docs/FORMATS.md §6): 4-bit codes two per byte, others a byte each. */
  readonly codes: Uint8Array;
  /** Raw scale bits, row-major [scaleShape], little-endian, `scaleBytes(spec.scaleFormat)` each. */
  readonly scales: Uint8Array;
  /** [rows, groups per row], or [1, 1] for one tensor-wide group. */
  readonly scaleShape: readonly [number, number];
  /** Zero points (one byte per group, like scales) for asymmetric elements, else null. */
  readonly zeros: Uint8Array | null;
  /** The float32 tensor scale s_t (NVFP4 amax scale, or the mr-gptq constant), else null. */
  readonly tensorScale: number | null;
}

/** Everything the per-group loops need about a spec, computed once. */
interface Plan {
  spec: QuantSpec;
  mini: MinifloatFormat | null;
  int: IntFormat | null;
  asym: boolean;
  codeBits: number;
  table: Float32Array; // storage bits -> element value (asymmetric: the code itself)
  M: number;
  emax: number;
  qmax: number;
}

function plan(spec: QuantSpec): Plan {
  const f = elementFormat(spec.element);
  if (isIntFormat(f)) {
    const table = new Float32Array(1 << f.bits);
    for (let b = 0; b < table.length; b++) {
      table[b] = intFromBits(b, f) * (f.asymmetric ? 1 : f.step);
    }
    return {
      spec,
      mini: null,
      int: f,
      asym: f.asymmetric,
      codeBits: f.bits,
      table,
      M: f.maxFinite,
      emax: f.emax,
      qmax: f.qmax,
    };
  }
  return {
    spec,
    mini: f,
    int: null,
    asym: false,
    codeBits: f.bits,
    table: decodeTable(f),
    M: f.maxFinite,
    emax: f.emax,
    qmax: 0,
  };
}

/** Storage bits of v = x / S with round to nearest even (zero point z for asymmetric ints). */
function encodeRne(p: Plan, v: number, z: number): number {
  if (p.mini) return encodeMinifloat(v, p.mini);
  const f = p.int as IntFormat;
  return intCodeBits(encodeIntZero(v, f, z), f);
}

function encodeSr(p: Plan, v: number, r: number, z: number): number {
  if (p.mini) return encodeMinifloatStochastic(v, p.mini, r);
  const f = p.int as IntFormat;
  return intCodeBits(encodeIntStochastic(v, f, r, z), f);
}

/** Smallest e with a <= M * 2^e (a > 0, exact comparisons). */
function ceilExponent(a: number, M: number): number {
  let e = floorLog2(a) - floorLog2(M) - 1;
  while (a > M * 2 ** e) e++;
  return e;
}

/** Stored scale bits for a candidate group amax `A` (symmetric rules). */
function scaleBitsFor(p: Plan, A: number, sT: number | null): number {
  const s = p.spec;
  switch (s.scaleRule) {
    case "ocp":
    case "mr-gptq":
      return A === 0 ? 0 : e8m0FromExponent(floorLog2(A) - p.emax);
    case "ceil":
      return A === 0 ? 0 : e8m0FromExponent(ceilExponent(A, p.M));
    case "round": {
      if (A === 0) return 0;
      const t = A / p.M; // float64 division (spec)
      const k = floorLog2(t);
      return e8m0FromExponent(k + (t / 2 ** k > Math.SQRT2 ? 1 : 0));
    }
    default: {
      let raw = fround(A / p.M);
      if (sT !== null && s.tensorScale !== "none") raw = fround(raw / sT);
      return encodeScale(raw, s.scaleFormat as Exclude<typeof s.scaleFormat, "e8m0">);
    }
  }
}

function effectiveScale(p: Plan, bits: number, sT: number | null): number {
  const d = decodeScale(bits, p.spec.scaleFormat);
  return sT === null ? d : fround(d * sT);
}

/** Zero point of an asymmetric group for scale S and (shrunk) minimum lo. */
function zeroPoint(p: Plan, S: number, lo: number): number {
  if (S === 0) return 0;
  const t = fround(-lo / S);
  const f = Math.floor(t);
  const r = t - f;
  const z = r > 0.5 || (r === 0.5 && (f & 1) === 1) ? f + 1 : f;
  return z < 0 ? 0 : z > p.qmax ? p.qmax : z;
}

/** Sum over the group of |x - dq|^norm in float64, element order, round to nearest even. */
function groupError(
  p: Plan,
  x: Float32Array,
  start: number,
  len: number,
  S: number,
  z: number,
  norm: number,
): number {
  let err = 0;
  for (let i = start; i < start + len; i++) {
    let dq: number;
    if (S === 0) dq = 0;
    else {
      const b = encodeRne(p, fround(x[i] / S), z);
      dq = p.asym ? fround((p.table[b] - z) * S) : fround(p.table[b] * S);
    }
    const d = Math.abs(x[i] - dq);
    err += norm === 2 ? d * d : norm === 1 ? d : Math.pow(d, norm);
  }
  return err;
}

/** The tensor scale s_t of docs/FORMATS.md §5.4, or null. */
function tensorScaleOf(p: Plan, amaxT: number): number | null {
  const s = p.spec;
  if (s.scaleRule === "mr-gptq") return fround(2 ** (p.emax + 1) / p.M);
  if (typeof s.tensorScale === "number") return s.tensorScale;
  if (s.tensorScale !== "amax") return null;
  if (amaxT === 0) return 1;
  return fround(amaxT / fround(p.M * scaleMax(s.scaleFormat)));
}

function checkShape(x: Float32Array, shape: readonly number[]): [number, number] {
  if (shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(
      `quantize: shape must be [rows, cols] of non-negative integers, got [${shape.join(", ")}]`,
    );
  }
  const [rows, cols] = shape;
  if (rows * cols !== x.length) {
    throw new Error(
      `quantize: shape [${rows}, ${cols}] needs ${rows * cols} elements, got ${x.length}`,
    );
  }
  if (rows * cols === 0) throw new Error(`quantize: empty tensor [${rows}, ${cols}]`);
  return [rows, cols];
}

function groupLayout(
  spec: QuantSpec,
  rows: number,
  cols: number,
): { len: number; shape: [number, number] } {
  const g = spec.groupSize;
  if (g === "tensor") return { len: rows * cols, shape: [1, 1] };
  if (g === "channel") return { len: cols, shape: [rows, 1] };
  if (cols % g !== 0) {
    throw new Error(`quantize: group size ${g} does not divide the ${cols} columns`);
  }
  return { len: g, shape: [rows, cols / g] };
}

/**
 * Packs storage bits (one per element) into the code layout of docs/FORMATS.md §6: 4-bit codes
 * two per byte (element 2j in the low nibble of byte j), wider codes one byte each.
 *
 * @example
 * ```ts
 * import { packCodes } from "./quantize.ts";
 * console.assert(packCodes(new Uint8Array([0x1, 0xf, 0x3]), 4).join() === "241,3");
 * ```
 */
export function packCodes(bits: Uint8Array, codeBits: number): Uint8Array {
  if (codeBits !== 4) return bits.slice();
  const out = new Uint8Array((bits.length + 1) >> 1);
  for (let i = 0; i < bits.length; i += 2) {
    out[i >> 1] = (bits[i] & 0xf) | (i + 1 < bits.length ? (bits[i + 1] & 0xf) << 4 : 0);
  }
  return out;
}

/**
 * Unpacks `n` storage codes from the packed layout.
 *
 * @example
 * ```ts
 * import { unpackCodes } from "./quantize.ts";
 * console.assert(unpackCodes(new Uint8Array([241, 3]), 4, 3).join() === "1,15,3");
 * ```
 */
export function unpackCodes(packed: Uint8Array, codeBits: number, n: number): Uint8Array {
  if (codeBits !== 4) return packed.slice(0, n);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (packed[i >> 1] >> ((i & 1) * 4)) & 0xf;
  return out;
}

/** The group scales of a tensor, chosen without quantizing its elements. */
export interface GroupScaleChoice {
  /** Raw scale bits, as {@linkcode Quantized.scales}. */
  readonly scales: Uint8Array;
  /** [rows, groups per row], or [1, 1] for one tensor-wide group. */
  readonly scaleShape: readonly [number, number];
  /** Zero points of asymmetric elements, else null. */
  readonly zeros: Uint8Array | null;
  /** The float32 tensor scale s_t, else null. */
  readonly tensorScale: number | null;
  /** Effective scale S of every group (decoded scale times s_t), in scale order. */
  readonly effective: Float32Array;
}

/**
 * Chooses every group's scale (docs/FORMATS.md §5.2–5.5 and the §5.7 MSE search) exactly as
 * {@linkcode quantize} does, without encoding the elements: for algorithms (GPTQ) that fix the
 * scales first and round elements later with {@linkcode elementCodec}. `tensorScale` replaces
 * the spec's tensor scale s_t (amax or given; e.g. to choose one slice's scales with the whole
 * tensor's s_t); it is ignored by specs without a tensor scale.
 *
 * @example
 * ```ts
 * import { chooseGroupScales } from "./quantize.ts";
 * const c = chooseGroupScales(new Float32Array(32).fill(3), [1, 32], "mxfp4");
 * console.assert(c.scales[0] === 126 && c.effective[0] === 0.5);
 * ```
 */
export function chooseGroupScales(
  x: Float32Array,
  shape: readonly number[],
  spec: SpecInput | QuantSpec,
  options: { tensorScale?: number } = {},
): GroupScaleChoice {
  const s = resolveSpec(spec);
  const [rows, cols] = checkShape(x, shape);
  const { len, shape: scaleShape } = groupLayout(s, rows, cols);
  const p = plan(s);
  const n = x.length;

  let amaxT = 0;
  for (let i = 0; i < n; i++) {
    const v = x[i];
    if (v - v !== 0) {
      throw new Error(
        `quantize: non-finite value ${v} at (row ${Math.floor(i / cols)}, col ${i % cols})`,
      );
    }
    const a = Math.abs(v);
    if (a > amaxT) amaxT = a;
  }
  let sT = tensorScaleOf(p, amaxT);
  if (options.tensorScale !== undefined && s.tensorScale !== "none") {
    sT = fround(options.tensorScale);
  }

  const nGroups = n / len;
  const scales = new Uint8Array(nGroups * scaleBytes(s.scaleFormat));
  const zeros = p.asym ? new Uint8Array(nGroups) : null;
  const effective = new Float32Array(nGroups);
  const mse = s.mse;

  for (let g = 0; g < nGroups; g++) {
    const start = g * len;
    let amax = 0;
    let lo = 0;
    let hi = 0;
    for (let i = start; i < start + len; i++) {
      const v = x[i];
      const a = Math.abs(v);
      if (a > amax) amax = a;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }

    let bits = 0;
    let z = 0;
    const K = mse ? mse.candidates : 1;
    let best = Infinity;
    let lastBits = -1;
    let lastZ = -1;
    for (let k = 0; k < K; k++) {
      const pk = mse ? fround(1 - (k * (1 - mse.minShrink)) / K) : 1;
      let cb: number;
      let cz = 0;
      if (p.asym) {
        const lk = fround(lo * pk);
        const hk = fround(hi * pk);
        const rawScale = fround(fround(hk - lk) / p.qmax);
        cb = encodeScale(rawScale, s.scaleFormat as Exclude<typeof s.scaleFormat, "e8m0">);
        cz = zeroPoint(p, effectiveScale(p, cb, sT), lk);
      } else {
        cb = scaleBitsFor(p, fround(amax * pk), sT);
      }
      if (!mse) {
        bits = cb;
        z = cz;
        break;
      }
      // Candidates shrink monotonically, so equal (bits, zero) repeat consecutively; an equal
      // pair reconstructs identically and cannot win a strict comparison: skip it.
      if (cb === lastBits && cz === lastZ) continue;
      lastBits = cb;
      lastZ = cz;
      const err = groupError(p, x, start, len, effectiveScale(p, cb, sT), cz, mse.norm);
      if (err < best) {
        best = err;
        bits = cb;
        z = cz;
      }
    }

    writeScaleBits(scales, g, bits, s.scaleFormat);
    if (zeros) zeros[g] = z;
    effective[g] = effectiveScale(p, bits, sT);
  }
  return { scales, scaleShape, zeros, tensorScale: sT, effective };
}

/**
 * The {@linkcode GroupScaleChoice} that a quantization's own scale bits and tensor scale stand
 * for (symmetric elements): what {@linkcode chooseGroupScales} returns for the same input, when
 * `q` came from {@linkcode quantize} or its native twins.
 *
 * @example
 * ```ts
 * import { groupScalesOf, quantize } from "./quantize.ts";
 * const q = quantize(new Float32Array(32).fill(3), [1, 32], "mxfp4");
 * console.assert(groupScalesOf(q).effective[0] === 0.5);
 * ```
 */
export function groupScalesOf(q: Quantized): GroupScaleChoice {
  const p = plan(q.spec);
  if (p.asym) throw new Error("groupScalesOf: asymmetric elements also need their zero points");
  const effective = groupScales(q);
  return {
    scales: q.scales,
    scaleShape: q.scaleShape,
    zeros: null,
    tensorScale: q.tensorScale,
    effective,
  };
}

/** Round-to-nearest-even element encoding of a spec, for callers that fix scales themselves. */
export interface ElementCodec {
  /** Storage width of one code in bits (4-bit codes pack two per byte). */
  readonly codeBits: number;
  /**
   * Storage bits of v = x / S, the value already divided by its group's effective scale
   * (docs/FORMATS.md §5.6, round to nearest even; `zero` is the zero point of asymmetric
   * elements). A group with S = 0 has no v: its codes are `zero` (0 for symmetric elements).
   */
  encode(v: number, zero?: number): number;
  /** The element value of storage bits before scaling (asymmetric: the code itself). */
  value(bits: number): number;
}

/**
 * The element codec of a spec: the §5.6 rounding that {@linkcode quantize} applies to
 * fround(x / S), so that `fround(codec.value(codec.encode(fround(x / S))) * S)` is exactly the
 * dequantized element of `quantize` (symmetric elements).
 *
 * @example
 * ```ts
 * import { elementCodec } from "./quantize.ts";
 * const c = elementCodec("mxfp4");
 * console.assert(c.encode(2.5) === 4 && c.value(4) === 2 && c.encode(-0.1) === 8);
 * ```
 */
export function elementCodec(spec: SpecInput | QuantSpec): ElementCodec {
  const p = plan(resolveSpec(spec));
  const t = p.table;
  return {
    codeBits: p.codeBits,
    encode: (v, zero = 0) => encodeRne(p, v, zero),
    value: (bits) => t[bits],
  };
}

/**
 * Quantizes a row-major [rows, cols] float32 tensor to `spec` (a preset name such as
 * `"nvfp4"` or `"int4:g64"`, or a spec object). Throws on non-finite input (naming the first
 * such element), empty tensors, and group sizes that do not divide `cols`.
 *
 * @example
 * ```ts
 * import { dequantize, quantize } from "./quantize.ts";
 * const x = new Float32Array(32).map((_, i) => i / 4 - 4);
 * const q = quantize(x, [2, 16], "nvfp4");
 * console.assert(q.codes.length === 16 && q.scales.length === 2);
 * console.assert(dequantize(q).length === 32);
 * ```
 */
export function quantize(
  x: Float32Array,
  shape: readonly number[],
  spec: SpecInput | QuantSpec,
): Quantized {
  const s = resolveSpec(spec);
  const { scales, scaleShape, zeros, tensorScale, effective } = chooseGroupScales(x, shape, s);
  const [rows, cols] = shape as [number, number];
  const p = plan(s);
  const n = x.length;
  const len = n / effective.length;
  const raw = new Uint8Array(n);
  const stochastic = s.rounding === "stochastic";
  const [k0, k1] = seedKey(s.seed);

  for (let g = 0; g < effective.length; g++) {
    const start = g * len;
    const z = zeros ? zeros[g] : 0;
    const S = effective[g];
    if (S === 0) {
      for (let i = start; i < start + len; i++) raw[i] = z;
      continue;
    }
    if (stochastic) {
      for (let i = start; i < start + len; i++) {
        const r = philoxWord0(i >>> 0, Math.floor(i / 4294967296), k0, k1);
        raw[i] = encodeSr(p, fround(x[i] / S), r, z);
      }
    } else {
      for (let i = start; i < start + len; i++) raw[i] = encodeRne(p, fround(x[i] / S), z);
    }
  }

  return Object.freeze({
    spec: s,
    shape: Object.freeze([rows, cols] as [number, number]),
    codes: packCodes(raw, p.codeBits),
    scales,
    scaleShape: Object.freeze(scaleShape),
    zeros,
    tensorScale,
  });
}

/**
 * The effective float32 scale S of every group (decoded scale times the tensor scale), in
 * scale order.
 *
 * @example
 * ```ts
 * import { groupScales, quantize } from "./quantize.ts";
 * const q = quantize(new Float32Array(32).fill(3), [1, 32], "mxfp4");
 * console.assert(groupScales(q)[0] === 0.5); // 2^(floor(log2 3) - 2)
 * ```
 */
export function groupScales(q: Quantized): Float32Array {
  const p = plan(q.spec);
  const bytes = scaleBytes(q.spec.scaleFormat);
  const n = q.scales.length / bytes;
  if (bytes === 1) {
    // Each of the 256 bit patterns is decoded once.
    const table = Float32Array.from({ length: 256 }, (_, b) => effectiveScale(p, b, q.tensorScale));
    const out = new Float32Array(n);
    for (let g = 0; g < n; g++) out[g] = table[q.scales[g]];
    return out;
  }
  const out = new Float32Array(n);
  for (let g = 0; g < n; g++) {
    out[g] = effectiveScale(p, readScaleBits(q.scales, g, q.spec.scaleFormat), q.tensorScale);
  }
  return out;
}

/**
 * Reconstructs the float32 tensor of a {@linkcode Quantized}: fround(value * S) per element
 * (asymmetric: fround((code - zero) * S)).
 *
 * @example
 * ```ts
 * import { dequantize, quantize } from "./quantize.ts";
 * const y = dequantize(quantize(new Float32Array([1, 2, 3, 6]), [1, 4], "mxfp4:g4"));
 * console.assert(y.join() === "1,2,3,6");
 * ```
 */
export function dequantize(q: Quantized): Float32Array {
  const p = plan(q.spec);
  const [rows, cols] = q.shape;
  const n = rows * cols;
  const { len } = groupLayout(q.spec, rows, cols);
  const bits = unpackCodes(q.codes, p.codeBits, n);
  const S = groupScales(q);
  const out = new Float32Array(n);
  const t = p.table;
  for (let g = 0; g < S.length; g++) {
    const sg = S[g];
    const start = g * len;
    if (q.zeros) {
      const z = q.zeros[g];
      for (let i = start; i < start + len; i++) out[i] = fround((t[bits[i]] - z) * sg);
    } else {
      for (let i = start; i < start + len; i++) out[i] = fround(t[bits[i]] * sg);
    }
  }
  return out;
}

/**
 * `dequantize(quantize(x, shape, spec))`: the tensor as the format represents it.
 *
 * @example
 * ```ts
 * import { fakeQuantize } from "./quantize.ts";
 * const y = fakeQuantize(new Float32Array([0.3, 5.1]), [1, 2], "mxfp4:g2");
 * console.assert(y[0] === 0.5 && y[1] === 6); // scale 2^(floor(log2 5.1) - 2) = 1
 * ```
 */
export function fakeQuantize(
  x: Float32Array,
  shape: readonly number[],
  spec: SpecInput | QuantSpec,
): Float32Array {
  return dequantize(quantize(x, shape, spec));
}
