// Group quantization: presets and validation, scale rules, the NVFP4/MXFP4 pipelines recomputed
// from their textbook formulas, error bounds, MSE search, stochastic rounding, packing, errors.
import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  decodeE4M3,
  decodeMinifloat,
  dequantize,
  describeSpec,
  E2M1,
  elementFormat,
  encodeE2M1,
  encodeE4M3,
  encodeMinifloat,
  fakeQuantize,
  floorLog2,
  groupScales,
  isIntFormat,
  type MinifloatFormat,
  philoxWord0,
  quantize,
  type Quantized,
  resolveSpec,
  seedKey,
  type SpecInput,
  unpackCodes,
} from "../lib/formats/mod.ts";

const fround = Math.fround;

/** Random normal-ish data with outliers, so groups differ in range by orders of magnitude. */
function randomMatrix(rows: number, cols: number): Float32Array {
  const x = new Float32Array(rows * cols);
  for (let i = 0; i < x.length; i++) {
    const u = Math.random() + Math.random() + Math.random() - 1.5;
    const scale = 2 ** Math.floor(Math.random() * 12 - 6);
    x[i] = u * scale * (Math.random() < 0.02 ? 20 : 1);
  }
  return x;
}

Deno.test("presets resolve to the documented formats; modifiers override them", () => {
  const nv = resolveSpec("nvfp4");
  assertEquals(
    [nv.element, nv.scaleFormat, nv.groupSize, nv.scaleRule, nv.tensorScale],
    ["e2m1", "e4m3", 16, "absmax", "amax"],
  );
  assertEquals(resolveSpec("mxfp6").element, "e2m3");
  assertEquals(resolveSpec("mxfp6_e3m2").element, "e3m2");
  assertEquals(resolveSpec("mxint8").element, "mxint8");
  assertEquals(resolveSpec("int4").groupSize, 128);
  assertEquals(resolveSpec("int4:g64").groupSize, 64);
  assertEquals(resolveSpec("int8").groupSize, "channel");
  assertEquals(resolveSpec("fp8").groupSize, "tensor");
  const s = resolveSpec("mxfp4:rule=mr-gptq:mse:sr:seed=12");
  assertEquals([s.scaleRule, s.rounding, s.seed, s.mse?.candidates], [
    "mr-gptq",
    "stochastic",
    12n,
    100,
  ]);
  assertEquals(resolveSpec("nvfp4:mse=16,0.6,2").mse, { candidates: 16, minShrink: 0.6, norm: 2 });
  assertEquals(resolveSpec("nvfp4:mse=8").mse, { candidates: 8, minShrink: 0.2, norm: 2.4 });
  assertEquals(resolveSpec("int4:scale=bf16").scaleFormat, "bf16");
  assertEquals(resolveSpec({ preset: "mxfp4", groupSize: 64 }).groupSize, 64);
  const o = resolveSpec({
    element: "e4m3",
    scaleFormat: "ue5m3",
    groupSize: 8,
    tensorScale: "amax",
  });
  assertEquals(o.scaleRule, "absmax");
  assert(describeSpec(o).includes("ue5m3"));
});

Deno.test("nonsense specs are rejected with an error naming the problem", () => {
  const bad: [SpecInput, string][] = [
    ["mxfp5", 'unknown quantization preset "mxfp5"'],
    ["int4:g0", "group size must be a positive integer"],
    ["int4:banana", 'unknown modifier "banana"'],
    ["mxfp4:rule=absmax", 'scale rule "absmax" does not apply to e8m0'],
    ["nvfp4:rule=ocp", 'scale rule "ocp" needs e8m0'],
    ["uint4:scale=e8m0", "zero point"],
    [
      { element: "uint4", scaleFormat: "f16", groupSize: 8, scaleRule: "absmax" },
      'must be "minmax"',
    ],
    [
      { element: "e2m1", scaleFormat: "bf16", groupSize: 8, tensorScale: "amax" },
      "needs e4m3 or ue5m3",
    ],
    [{ element: "e2m1", scaleFormat: "bf16" }, '"groupSize" is required'],
    [
      { element: "e9m9" as never, scaleFormat: "bf16", groupSize: 8 },
      'unknown element format "e9m9"',
    ],
    [
      { element: "e2m1", scaleFormat: "e7m7" as never, groupSize: 8 },
      'unknown scale format "e7m7"',
    ],
    [{ preset: "mxfp4", groupSize: 2.5 }, "group size must be a positive integer"],
    [{ preset: "mxfp4", rounding: "up" as never }, "rounding must be"],
    [{ preset: "mxfp4", seed: -1 }, "seed must be in [0, 2^64)"],
    [{ preset: "mxfp4", mse: { candidates: 0 } }, "mse.candidates"],
    [{ preset: "mxfp4", mse: { minShrink: 0 } }, "mse.minShrink"],
    [{ preset: "mxfp4", mse: { norm: NaN } }, "mse.norm"],
    ["nvfp4:mse=16,x", 'bad "mse=16,x"'],
    ["nvfp4:mse=1,2,3,4", 'bad "mse=1,2,3,4"'],
    ["nvfp4:mse=16,4.5", "mse.minShrink"],
    ["nvfp4:ts=0", "finite float32 > 0"],
    ["nvfp4:ts=-2", "finite float32 > 0"],
    ["nvfp4:ts=1e-50", "out of float32 range"],
    ["nvfp4:ts=1e300", "out of float32 range"],
    ["nvfp4:ts=big", 'bad "ts=big"'],
    [{ preset: "nvfp4", tensorScale: NaN }, "finite float32 > 0"],
    [{ preset: "nvfp4", tensorScale: "max" as never }, 'tensorScale must be "none", "amax"'],
    ["mxfp4:ts=0.5", "a given tensorScale needs e4m3 or ue5m3"],
    [{ preset: "uint4", scaleFormat: "e4m3", scaleRule: "minmax", tensorScale: 0.5 }, "asymmetric"],
  ];
  for (const [spec, msg] of bad) assertThrows(() => resolveSpec(spec), Error, msg);
});

Deno.test("bad tensors: non-finite values are named by (row, col); shape and group errors", () => {
  const x = randomMatrix(3, 32);
  x[1 * 32 + 7] = NaN;
  assertThrows(() => quantize(x, [3, 32], "mxfp4"), Error, "NaN at (row 1, col 7)");
  x[1 * 32 + 7] = 0;
  x[2 * 32 + 31] = -Infinity;
  assertThrows(() => quantize(x, [3, 32], "nvfp4"), Error, "-Infinity at (row 2, col 31)");
  assertThrows(
    () => quantize(new Float32Array(48), [2, 24], "mxfp4"),
    Error,
    "group size 32 does not divide the 24",
  );
  assertThrows(() => quantize(new Float32Array(0), [0, 32], "mxfp4"), Error, "empty tensor");
  assertThrows(
    () => quantize(new Float32Array(10), [2, 4], "mxfp4:g2"),
    Error,
    "needs 8 elements, got 10",
  );
  assertThrows(
    () => quantize(new Float32Array(8), [8], "mxfp4:g2"),
    Error,
    "shape must be [rows, cols]",
  );
});

Deno.test("mxfp4 equals the OCP recipe recomputed by hand, codes packed low nibble first", () => {
  const rows = 8;
  const cols = 96;
  const x = randomMatrix(rows, cols);
  const q = quantize(x, [rows, cols], "mxfp4");
  assertEquals(q.scaleShape, [rows, 3]);
  assertEquals(q.tensorScale, null);
  const want = new Uint8Array(rows * cols / 2);
  for (let g = 0; g < rows * 3; g++) {
    let amax = 0;
    for (let i = g * 32; i < g * 32 + 32; i++) amax = Math.max(amax, Math.abs(x[i]));
    let e = Math.floor(Math.log2(amax));
    if (2 ** e > amax) e--; // guard log2 rounding
    if (2 ** (e + 1) <= amax) e++;
    const X = 2 ** (e - 2);
    assertEquals(q.scales[g], e - 2 + 127);
    for (let i = g * 32; i < g * 32 + 32; i++) {
      const c = encodeE2M1(x[i] / X); // exact: power-of-two division
      want[i >> 1] |= (i & 1) ? c << 4 : c;
    }
  }
  assertEquals(q.codes, want);
});

Deno.test("nvfp4 equals the DESIGN.md formula: s_t = amax/2688, e4m3 block scale, S = s_b * s_t", () => {
  const rows = 6;
  const cols = 64;
  const x = randomMatrix(rows, cols);
  const q = quantize(x, [rows, cols], "nvfp4");
  const amaxT = x.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const sT = fround(amaxT / 2688);
  assertEquals(q.tensorScale, sT);
  const codes = unpackCodes(q.codes, 4, rows * cols);
  for (let g = 0; g < rows * 4; g++) {
    let amax = 0;
    for (let i = g * 16; i < g * 16 + 16; i++) amax = Math.max(amax, Math.abs(x[i]));
    const sb = encodeE4M3(fround(fround(amax / 6) / sT));
    assertEquals(q.scales[g], sb, `group ${g}`);
    const S = fround(decodeE4M3(sb) * sT);
    for (let i = g * 16; i < g * 16 + 16; i++) {
      assertEquals(codes[i], S === 0 ? 0 : encodeE2M1(fround(x[i] / S)), `element ${i}`);
    }
  }
  // The largest block scale lands on (or next to) the top of E4M3.
  assert(Math.max(...q.scales) >= 0x7d, `max block scale ${Math.max(...q.scales)}`);
});

Deno.test("a given tensor scale: the amax result when equal to amax/2688, else the formula with it, clipping at the top", () => {
  const rows = 5;
  const cols = 64;
  const x = randomMatrix(rows, cols);
  const amax = quantize(x, [rows, cols], "nvfp4");
  const given = quantize(x, [rows, cols], `nvfp4:ts=${amax.tensorScale}`);
  assertEquals(given.tensorScale, amax.tensorScale);
  assertEquals([...given.codes], [...amax.codes]);
  assertEquals([...given.scales], [...amax.scales]);
  assertEquals(resolveSpec("nvfp4:ts=0.1").tensorScale, fround(0.1));
  // A scale 64x too small for the data: the largest blocks saturate their E4M3 scale at 448 and
  // their elements at +-6 * 448 * s_t; every block follows the DESIGN.md formula with the given s_t.
  const sT = fround(amax.tensorScale! / 64);
  const q = quantize(x, [rows, cols], { preset: "nvfp4", tensorScale: sT });
  assertEquals(q.tensorScale, sT);
  const y = dequantize(q);
  const codes = unpackCodes(q.codes, 4, rows * cols);
  let saturated = 0;
  for (let g = 0; g < rows * 4; g++) {
    let m = 0;
    for (let i = g * 16; i < g * 16 + 16; i++) m = Math.max(m, Math.abs(x[i]));
    const sb = encodeE4M3(fround(fround(m / 6) / sT));
    assertEquals(q.scales[g], sb, `group ${g}`);
    if (sb === 0x7e) saturated++;
    const S = fround(decodeE4M3(sb) * sT);
    for (let i = g * 16; i < g * 16 + 16; i++) {
      assertEquals(codes[i], S === 0 ? 0 : encodeE2M1(fround(x[i] / S)), `element ${i}`);
      assert(Math.abs(y[i]) <= fround(6 * fround(448 * sT)), `element ${i} beyond the clip`);
    }
  }
  assert(saturated > 0, "no block saturated with a 64x smaller tensor scale");
  // Idempotent like every format: the dequantized tensor quantizes to itself.
  assertEquals([...dequantize(quantize(y, [rows, cols], q.spec))], [...y]);
});

/** Half the grid spacing around v (already divided by the scale), in element units. */
function halfStep(v: number, spec: ReturnType<typeof resolveSpec>): number {
  const f = elementFormat(spec.element);
  if (isIntFormat(f)) return f.step / 2;
  const a = Math.abs(v);
  const e = a === 0 ? f.emin : Math.max(floorLog2(a), f.emin);
  return 2 ** (e - f.mbits) / 2;
}

const SPECS: string[] = [
  "mxfp4",
  "nvfp4",
  "mxfp6_e2m3",
  "mxfp6_e3m2",
  "mxfp8",
  "mxfp8_e5m2",
  "mxint8",
  "int4:g32",
  "uint4:g32",
  "int8",
  "uint8",
  "fp8",
  "fp8_e5m2",
  "mxfp4:rule=ceil",
  "mxfp4:rule=round",
  "mxfp4:rule=mr-gptq",
  "nvfp4:scale=ue5m3:rule=absmax",
  "int4:g32:scale=bf16",
];

Deno.test("every format: non-clipped elements are within half a grid step of the input", () => {
  const rows = 4;
  const cols = 128;
  for (const name of SPECS) {
    const x = randomMatrix(rows, cols);
    const q = quantize(x, [rows, cols], name);
    const y = dequantize(q);
    const S = groupScales(q);
    const f = elementFormat(q.spec.element);
    const glen = rows * cols / S.length;
    let checked = 0;
    for (let i = 0; i < x.length; i++) {
      const s = S[Math.floor(i / glen)];
      if (s === 0) continue;
      const v = fround(x[i] / s);
      const zero = q.zeros ? q.zeros[Math.floor(i / glen)] : 0;
      const inRange = isIntFormat(f)
        ? v / f.step + zero >= f.qmin && v / f.step + zero <= f.qmax
        : Math.abs(v) <= f.maxFinite;
      if (!inRange) continue;
      checked++;
      const bound = halfStep(v, q.spec) * s * (1 + 2 ** -20) + Math.abs(x[i]) * 2 ** -22;
      assert(
        Math.abs(x[i] - y[i]) <= bound,
        `${name} element ${i}: x=${x[i]} y=${y[i]} S=${s} bound=${bound}`,
      );
    }
    assert(checked > x.length / 2, `${name}: only ${checked} elements in range`);
    assertEquals(fakeQuantize(x, [rows, cols], name), y);
  }
});

/** Largest |x / S| over the tensor, with S per group. */
function maxRatio(x: Float32Array, q: Quantized): number {
  const S = groupScales(q);
  const glen = x.length / S.length;
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]) / S[Math.floor(i / glen)]);
  return m;
}

Deno.test("scale rules: ocp can clip, ceil and mr-gptq never clip, round is nearest in log2", () => {
  // A block whose max has mantissa 1.75: OCP puts it at 7 > 6 (clipped to 6).
  const k = Math.floor(Math.random() * 10 - 5);
  const clip = new Float32Array(32).map(() => (Math.random() - 0.5) * 2 ** (k + 1));
  clip[5] = 7 * 2 ** k;
  const ocp = quantize(clip, [1, 32], "mxfp4");
  assertEquals(maxRatio(clip, ocp), 7);
  assertEquals(dequantize(ocp)[5], clip[5] * 6 / 7);

  const x = randomMatrix(16, 256);
  assert(maxRatio(x, quantize(x, [16, 256], "mxfp4:rule=ceil")) <= 6);
  const mr = quantize(x, [16, 256], "mxfp4:rule=mr-gptq");
  assert(maxRatio(x, mr) < 6);
  assertEquals(mr.tensorScale, fround(4 / 3));
  // Same scales as the FP-Quant reference: 2^(floor(log2 amax) - 2) / (3/4).
  const S = groupScales(mr);
  for (let g = 0; g < S.length; g++) {
    const amax = x.slice(g * 32, g * 32 + 32).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const ref = 2 ** (floorLog2(amax) - 2) / 0.75;
    assert(Math.abs(S[g] - ref) <= ref * 2 ** -23, `group ${g}: ${S[g]} vs ${ref}`);
  }
  const rq = quantize(x, [16, 256], "mxfp4:rule=round");
  const rs = groupScales(rq);
  for (let g = 0; g < rs.length; g++) {
    const amax = x.slice(g * 32, g * 32 + 32).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    assert(Math.abs(Math.log2(rs[g]) - Math.log2(amax / 6)) <= 0.5 + 1e-12, `round group ${g}`);
  }
  // ceil is the smallest power of two that does not clip: half of it would.
  const cs = groupScales(quantize(x, [16, 256], "mxfp4:rule=ceil"));
  for (let g = 0; g < cs.length; g++) {
    const amax = x.slice(g * 32, g * 32 + 32).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    assert(amax / (cs[g] / 2) > 6, `ceil group ${g} is not minimal`);
  }
});

function groupErrors(x: Float32Array, q: Quantized, norm: number): number[] {
  const y = dequantize(q);
  const n = q.scales.length /
    (q.scales.BYTES_PER_ELEMENT *
      (q.spec.scaleFormat === "f32"
        ? 4
        : q.spec.scaleFormat === "bf16" || q.spec.scaleFormat === "f16"
        ? 2
        : 1));
  const glen = x.length / n;
  const out = new Array(n).fill(0);
  for (let i = 0; i < x.length; i++) out[Math.floor(i / glen)] += Math.abs(x[i] - y[i]) ** norm;
  return out;
}

Deno.test("a growing search (factors above 1) is never worse than the plain rule, and does grow", () => {
  // nvfp4: the block max mapped to 6 or to 4; mxfp4: the OCP exponent or the one above it.
  for (const [name, grown] of [["nvfp4:mse=2,2,2", 1.5], ["mxfp4:mse=2,3,2", 2]] as const) {
    const base = name.split(":")[0];
    const x = randomMatrix(16, 128);
    const plainQ = quantize(x, [16, 128], base);
    const q = quantize(x, [16, 128], name);
    const plain = groupErrors(x, plainQ, 2);
    const searched = groupErrors(x, q, 2);
    const plainS = groupScales(plainQ), searchedS = groupScales(q);
    let larger = 0;
    for (let g = 0; g < plain.length; g++) {
      assert(searched[g] <= plain[g] * (1 + 1e-9), `${name} group ${g}`);
      const a = plainS[g], b = searchedS[g];
      assert(b === a || b > a * (grown * 0.85), `${name} group ${g}: scale ${b} vs ${a}`);
      if (b > a) larger++;
    }
    assert(larger > 0, `${name}: no group took the larger scale`);
  }
});

Deno.test("MSE scale search is never worse than the plain rule, group by group", () => {
  for (const name of ["mxfp4", "nvfp4", "int4:g32", "uint4:g32", "mxfp8", "mxfp4:rule=mr-gptq"]) {
    const x = randomMatrix(8, 128);
    const plain = groupErrors(x, quantize(x, [8, 128], name), 2.4);
    const mse = groupErrors(x, quantize(x, [8, 128], name + ":mse"), 2.4);
    let better = 0;
    for (let g = 0; g < plain.length; g++) {
      assert(mse[g] <= plain[g] * (1 + 1e-9), `${name} group ${g}: ${mse[g]} > ${plain[g]}`);
      if (mse[g] < plain[g] * (1 - 1e-6)) better++;
    }
    // Power-of-two scales can only halve, which rarely pays; fine-grained scales must improve.
    if (name.startsWith("nvfp4") || name.startsWith("int4")) {
      assert(better > 0, `${name}: MSE search never improved on the plain rule`);
    }
  }
});

Deno.test("stochastic rounding is unbiased, reproducible, and follows the Philox counter rule", () => {
  const n = 64 * 1024;
  // Every group holds a 6 so S = 1 and the grid is E2M1's; the rest lie strictly inside (0, 6).
  const x = new Float32Array(n).map((
    _,
    i,
  ) => (i % 32 === 0 ? 6 : fround(Math.random() * 5.9 + 0.05)));
  const seed = BigInt(Math.floor(Math.random() * 2 ** 53));
  const spec = { preset: "mxfp4", rounding: "stochastic" as const, seed };
  const q = quantize(x, [n / 64, 64], spec);
  const y = dequantize(q);
  let sum = 0;
  let variance = 0;
  const [k0, k1] = seedKey(seed);
  for (let i = 0; i < n; i++) {
    const a = x[i];
    const e = Math.max(floorLog2(a), 0);
    const step = 2 ** (e - 1);
    const lo = Math.floor(a / step) * step;
    const frac = (a - lo) / step;
    assert(y[i] === lo || y[i] === lo + step, `element ${i}: ${y[i]} not a neighbour of ${a}`);
    const r = philoxWord0(i, 0, k0, k1);
    assertEquals(y[i], r < frac * 2 ** 32 ? lo + step : lo, `element ${i} ignores the Philox draw`);
    sum += y[i] - a;
    variance += step * step * frac * (1 - frac);
  }
  const z = sum / Math.sqrt(variance);
  assert(Math.abs(z) < 5, `mean error ${sum / n} is ${z} sigma from 0 (seed ${seed})`);
  assertEquals(quantize(x, [n / 64, 64], spec).codes, q.codes);
  const other = quantize(x, [n / 64, 64], { ...spec, seed: seed + 1n });
  assert(other.codes.some((c, i) => c !== q.codes[i]), "a different seed gave identical codes");
  // Integers too: unbiased around a fixed scale.
  const xi = new Float32Array(4096).map((_, i) => (i % 32 === 0 ? 7 : Math.random() * 6));
  const yi = dequantize(quantize(xi, [128, 32], "int4:g32:scale=f32:sr:seed=5"));
  const S = fround(7 / 7);
  let si = 0;
  for (let i = 0; i < xi.length; i++) si += yi[i] - xi[i];
  assert(Math.abs(si) < 5 * Math.sqrt(xi.length / 4) * S, `int4 stochastic bias ${si}`);
});

Deno.test("packing: nibbles low-first, bytes for 6/8-bit codes, little-endian scales, zero points", () => {
  const q = quantize(new Float32Array([0.5, 6, -1, 4]), [1, 4], "mxfp4:g2");
  assertEquals([...q.codes], [0x71, 0x6a]); // [1 | 7 << 4], [-1 = 0xa | 4 = 0x6 << 4]
  assertEquals([...q.scales], [127, 127]);
  const q8 = quantize(new Float32Array([127, -127, 1, -1]), [1, 4], "int8");
  assertEquals([...q8.codes], [127, 129, 1, 255]);
  assertEquals([...q8.scales], [0, 0, 0x80, 0x3f]); // f32 1.0 little-endian
  const q6 = quantize(new Float32Array([7.5, -7.5]), [1, 2], "mxfp6:g2");
  assertEquals([...q6.codes], [0x1f, 0x3f]);
  const qb = quantize(new Float32Array([7, 1]), [1, 2], "int4:g2:scale=bf16");
  assertEquals([...qb.scales], [0x80, 0x3f]);
  assertEquals([...qb.codes], [0x17]);
  const qu = quantize(new Float32Array([-1, 14]), [1, 2], "uint4:g2");
  assertEquals([...qu.zeros!], [1]);
  assertEquals([...qu.codes], [0xf0]);
  assertEquals([...dequantize(qu)], [-1, 14]);
  const odd = quantize(new Float32Array([1, 2, 3]), [1, 3], "mxfp4:channel");
  assertEquals(odd.codes.length, 2);
  assertEquals(odd.codes[1] >> 4, 0);
});

Deno.test("all-zero groups get scale bits 0 and zero codes; tensor and channel groups have one scale", () => {
  const x = randomMatrix(2, 64);
  x.fill(0, 0, 32);
  for (const name of ["mxfp4", "nvfp4:g32", "int4:g32", "uint4:g32"]) {
    const q = quantize(x, [2, 64], name);
    const y = dequantize(q);
    for (let i = 0; i < 32; i++) assertEquals(y[i], 0, `${name} ${i}`);
    assertEquals(q.scales[0], 0);
  }
  assertEquals(quantize(x, [2, 64], "fp8").scaleShape, [1, 1]);
  assertEquals(quantize(x, [2, 64], "int8").scaleShape, [2, 1]);
  assertEquals(quantize(new Float32Array(16), [1, 16], "nvfp4").tensorScale, 1);
});

Deno.test("a 1024x1024 NVFP4 quantization round trip stays fast", () => {
  const x = randomMatrix(1024, 1024);
  const t0 = performance.now();
  const y = fakeQuantize(x, [1024, 1024], "nvfp4");
  const ms = performance.now() - t0;
  assertEquals(y.length, x.length);
  assert(ms < 5000, `took ${ms} ms`);
});

Deno.test("minifloat decode of every E2M1 code is one of the DESIGN.md grid values", () => {
  const grid = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
  for (let c = 0; c < 16; c++) {
    const v = decodeMinifloat(c, E2M1 as MinifloatFormat);
    assertEquals(Math.abs(v), grid[c & 7]);
    assertEquals(encodeMinifloat(v, E2M1), c);
  }
});
