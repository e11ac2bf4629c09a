// The native formats (C++ CPU backend, and CUDA when a GPU is usable) against the TypeScript
// reference of lib/formats, bit for bit: exhaustive element encoders, random quantizations of
// every preset and rule, Hadamard rotations, fused rotate+quantize, and bad-input errors.
// Random inputs use a fresh seed per run, printed in every failure message.
import { seededRandom as rng } from "../lib/random.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { cudaStatus, type Device } from "../lib/device.ts";
import { bf16ToF32, f16ToF32, f32ToBf16 } from "../lib/dtype.ts";
import { Tensor } from "../lib/tensor.ts";
import { NativeError } from "../ffi/library.ts";
import {
  decodeMinifloat,
  E2M1,
  E2M3,
  E3M2,
  E4M3,
  E5M2,
  encodeMinifloat,
  encodeMinifloatStochastic,
  type MinifloatFormat,
  UE4M3,
  UE5M3,
} from "../lib/formats/minifloat.ts";
import {
  encodeInt,
  encodeIntStochastic,
  INT4,
  INT8,
  intCodeBits,
  type IntFormat,
  intFromBits,
  MXINT8,
  UINT4,
  UINT8,
} from "../lib/formats/integer.ts";
import { decodeE8M0, encodeE8M0 } from "../lib/formats/scales.ts";
import { chooseGroupScales, dequantize, quantize } from "../lib/formats/quantize.ts";
import { hadamard, inverseHadamard } from "../lib/formats/hadamard.ts";
import { PRESETS, type SpecInput } from "../lib/formats/spec.ts";
import {
  chooseGroupScalesNative,
  type CodecName,
  decodeOn,
  dequantizeOn,
  disposeQuantized,
  encodeOn,
  hadamardOn,
  quantizeOn,
  rotateQuantizeOn,
  toQuantized,
} from "../lib/formats/native.ts";

const DEVICES: Device[] = cudaStatus().available ? ["cpu", "cuda"] : ["cpu"];
const SEED = (Math.random() * 2 ** 32) >>> 0;

const tag = (s: string) => `${s} (seed ${SEED})`;

function firstDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return -2;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

function assertSame(a: ArrayLike<number>, b: ArrayLike<number>, what: string): void {
  const i = firstDiff(a, b);
  if (i === -1) return;
  if (i === -2) throw new Error(tag(`${what}: lengths ${a.length} vs ${b.length}`));
  throw new Error(tag(`${what}: first difference at ${i}: native ${a[i]} vs reference ${b[i]}`));
}

/** All bf16 patterns, all f16 patterns, and dense random f32 (bits uniform). */
function probeValues(r: () => number): Float32Array {
  const out = new Float32Array(65536 * 2 + 65536);
  for (let i = 0; i < 65536; i++) out[i] = bf16ToF32(i);
  for (let i = 0; i < 65536; i++) out[65536 + i] = f16ToF32(i);
  const u = new Uint32Array(out.buffer, 4 * 131072, 65536);
  for (let i = 0; i < u.length; i++) u[i] = (r() * 4294967296) >>> 0;
  return out;
}

type Ref = (x: number, r?: number) => number;
const minifloatRef = (f: MinifloatFormat): Ref => (x, r) =>
  r === undefined ? encodeMinifloat(x, f) : encodeMinifloatStochastic(x, f, r);
const intRef = (f: IntFormat): Ref => (x, r) =>
  intCodeBits(r === undefined ? encodeInt(x, f) : encodeIntStochastic(x, f, r), f);

const ENCODERS: [CodecName, Ref | null, ((b: number) => number) | null][] = [
  ["e2m1", minifloatRef(E2M1), (b) => decodeMinifloat(b, E2M1)],
  ["e2m3", minifloatRef(E2M3), (b) => decodeMinifloat(b, E2M3)],
  ["e3m2", minifloatRef(E3M2), (b) => decodeMinifloat(b, E3M2)],
  ["e4m3", minifloatRef(E4M3), (b) => decodeMinifloat(b, E4M3)],
  ["e5m2", minifloatRef(E5M2), (b) => decodeMinifloat(b, E5M2)],
  ["ue4m3", minifloatRef(UE4M3), (b) => decodeMinifloat(b, UE4M3)],
  ["ue5m3", minifloatRef(UE5M3), (b) => decodeMinifloat(b, UE5M3)],
  ["int4", intRef(INT4), (b) => intFromBits(b, INT4)],
  ["int8", intRef(INT8), (b) => intFromBits(b, INT8)],
  ["uint4", intRef(UINT4), (b) => intFromBits(b, UINT4)],
  ["uint8", intRef(UINT8), (b) => intFromBits(b, UINT8)],
  ["mxint8", intRef(MXINT8), (b) => intFromBits(b, MXINT8) * MXINT8.step],
  ["e8m0:floor", (x) => encodeE8M0(x, "floor"), decodeE8M0],
  ["e8m0:ceil", (x) => encodeE8M0(x, "ceil"), decodeE8M0],
  ["e8m0:rne", (x) => encodeE8M0(x, "rne"), decodeE8M0],
];

for (const device of DEVICES) {
  Deno.test(`[${device}] element encoders equal the reference on all bf16/f16 patterns and random f32`, async () => {
    const r = rng(SEED);
    const x = probeValues(r);
    const words = new Uint32Array(x.length).map(() => (r() * 4294967296) >>> 0);
    for (const [codec, ref, dec] of ENCODERS) {
      const native = await encodeOn(device, codec, x);
      const expect = new Uint8Array(x.length);
      for (let i = 0; i < x.length; i++) expect[i] = ref!(x[i]);
      assertSame(native, expect, `${device} ${codec} rne`);
      if (!codec.startsWith("e8m0")) {
        const ns = await encodeOn(device, codec, x, words);
        for (let i = 0; i < x.length; i++) expect[i] = ref!(x[i], words[i]);
        assertSame(ns, expect, `${device} ${codec} stochastic`);
      }
      const all = new Uint8Array(256).map((_, i) => i);
      const values = await decodeOn(device, codec, all);
      const width = codec === "ue4m3"
        ? 7
        : ["e2m1", "int4", "uint4"].includes(codec)
        ? 4
        : codec.startsWith("e2m3") || codec === "e3m2"
        ? 6
        : 8;
      const want = new Float32Array(256).map((_, i) => dec!(i & ((1 << width) - 1)));
      assertSame(values, want, `${device} ${codec} decode`);
    }
  });
}

function randomMatrix(r: () => number, rows: number, cols: number): Float32Array {
  // Mixed magnitudes (so scales span many binades), exact zeros and ties, a few outliers.
  const x = new Float32Array(rows * cols);
  for (let i = 0; i < x.length; i++) {
    const u = r();
    if (u < 0.03) x[i] = 0;
    else if (u < 0.06) x[i] = (Math.floor(r() * 25) - 12) * 0.25;
    else x[i] = (r() - 0.5) * 2 ** Math.floor(r() * 12 - 6) * (u > 0.995 ? 1000 : 1);
  }
  return x;
}

const SPECS: SpecInput[] = [
  ...Object.keys(PRESETS),
  "mxfp4:rule=ceil",
  "mxfp4:rule=round",
  "mxfp4:rule=mr-gptq",
  "mxfp4:rule=mr-gptq:mse",
  "nvfp4:mse",
  "nvfp4:sr:seed=12345678901234",
  "mxfp4:sr:seed=7",
  "int4:g32:sr:seed=99",
  "uint4:g32:mse",
  "int8:mse",
  "fp8:mse",
  // Growing factors: NVFP4's block max mapped to 6 or 4, MXFP4's OCP exponent or one above.
  "nvfp4:mse=2,2,2",
  "mxfp4:mse=2,3,2",
  "int4:g16:mse=5,1.8",
  "nvfp4:scale=ue5m3:g16",
  // Given tensor scales: one in the data's range, one that saturates most blocks, one that
  // sends small blocks to subnormal or zero scales, and with the search and stochastic rounding.
  "nvfp4:ts=0.0021",
  "nvfp4:ts=1e-7",
  "nvfp4:scale=ue5m3:ts=3",
  "nvfp4:ts=0.05:mse",
  "nvfp4:g32:ts=0.003:sr:seed=11",
  "mxfp4:g2",
  "int4:g3",
  "nvfp4:channel",
  "nvfp4:tensor",
  "int4:scale=bf16:g16",
  { element: "e2m3", scaleFormat: "f32", groupSize: 8 },
  {
    element: "e2m1",
    scaleFormat: "e8m0",
    groupSize: 32,
    mse: { candidates: 17, minShrink: 0.5, norm: 2 },
  },
  {
    element: "e2m1",
    scaleFormat: "e4m3",
    groupSize: 16,
    tensorScale: "amax",
    mse: { candidates: 9, minShrink: 0.3, norm: 1 },
  },
];

function shapeFor(spec: SpecInput, r: () => number): [number, number] {
  const text = typeof spec === "string" ? spec : "";
  if (/:g3(:|$)/.test(text)) return [1 + Math.floor(r() * 4), 9];
  const rows = 1 + Math.floor(r() * 5);
  return [rows, 128 * (1 + Math.floor(r() * 2))];
}

for (const device of DEVICES) {
  Deno.test(`[${device}] quantize and dequantize equal the reference for every preset, rule and option`, async () => {
    const r = rng(SEED ^ 0x5bd1e995);
    for (const spec of SPECS) {
      for (const dtype of ["f32", "bf16"] as const) {
        const [rows, cols] = shapeFor(spec, r);
        let x = randomMatrix(r, rows, cols);
        let input: Tensor;
        if (dtype === "bf16") {
          const b = new Uint16Array(x.length).map((_, i) => f32ToBf16(x[i]));
          x = new Float32Array(b.length).map((_, i) => bf16ToF32(b[i]));
          input = Tensor.from(b, [rows, cols], "bf16");
        } else input = Tensor.from(x, [rows, cols]);
        const what = `${device} ${JSON.stringify(spec)} ${dtype} [${rows}, ${cols}]`;
        const ref = quantize(x, [rows, cols], spec);
        const dq = await quantizeOn(device, input, spec);
        const got = toQuantized(dq);
        assertSame(got.codes, ref.codes, `${what} codes`);
        assertSame(got.scales, ref.scales, `${what} scales`);
        if (ref.zeros) assertSame(got.zeros!, ref.zeros, `${what} zeros`);
        else assertEquals(got.zeros, null);
        assert(
          Object.is(got.tensorScale, ref.tensorScale),
          tag(`${what} tensor scale ${got.tensorScale} vs ${ref.tensorScale}`),
        );
        for (const outDtype of ["f32", "bf16"] as const) {
          using y = await dequantizeOn(device, dq, outDtype);
          const want = dequantize(ref);
          const expect = outDtype === "f32"
            ? want
            : new Uint16Array(want.length).map((_, i) => f32ToBf16(want[i]));
          assertSame(y.toArray() as Float32Array, expect, `${what} dequantize ${outDtype}`);
        }
        disposeQuantized(dq);
      }
    }
  });

  Deno.test(`[${device}] hadamard and its inverse equal the reference for every block size`, async () => {
    const r = rng(SEED ^ 0x1234567);
    for (const block of [2, 4, 16, 32, 64, 128, 256, 1024, 4096]) {
      const rows = 1 + Math.floor(r() * 3);
      const cols = block * (1 + Math.floor(r() * 2));
      const x = randomMatrix(r, rows, cols);
      for (const seed of [undefined, Math.floor(r() * 1e9)]) {
        const what = `${device} block ${block} seed ${seed}`;
        using xt = Tensor.from(x, [rows, cols]);
        using y = await hadamardOn(device, xt, { block, seed });
        const ref = hadamard(x, [rows, cols], { block, seed });
        assertSame(y.toArray() as Float32Array, ref, `${what} forward`);
        using yb = await hadamardOn(device, xt, { block, seed, outDtype: "bf16" });
        assertSame(yb.toArray() as Uint16Array, ref.map(f32ToBf16), `${what} forward bf16`);
        using z = await hadamardOn(device, y, { block, seed, inverse: true });
        assertSame(
          z.toArray() as Float32Array,
          inverseHadamard(ref, [rows, cols], { block, seed }),
          `${what} inverse`,
        );
      }
    }
  });

  Deno.test(`[${device}] fused rotate+quantize equals quantize(hadamard(x)) of the reference`, async () => {
    const r = rng(SEED ^ 0x9e3779b9);
    const cases: [number, SpecInput][] = [
      [128, "nvfp4"],
      [128, "mxfp4"],
      [64, "mxfp4:g32:sr:seed=5"],
      [256, "nvfp4:g32"],
      [1024, "mxfp8"],
      [128, "int4:g16"],
      [32, "mxfp8"],
      [16, "nvfp4"],
      [128, "mxfp4:mse"],
      [128, "nvfp4:channel"],
      [128, "nvfp4:ts=0.0013"],
      [128, "nvfp4:ts=2e-7"],
      [64, "nvfp4:g32:ts=0.004"],
    ];
    for (const [block, spec] of cases) {
      const rows = 1 + Math.floor(r() * 6);
      const cols = Math.max(block, 128) * (1 + Math.floor(r() * 2));
      const x = randomMatrix(r, rows, cols);
      const b = new Uint16Array(x.length).map((_, i) => f32ToBf16(x[i]));
      const xf = new Float32Array(b.length).map((_, i) => bf16ToF32(b[i]));
      const seed = r() < 0.5 ? undefined : Math.floor(r() * 1e6);
      const what = `${device} block ${block} ${JSON.stringify(spec)} seed ${seed}`;
      using xt = Tensor.from(b, [rows, cols], "bf16");
      const dq = await rotateQuantizeOn(device, xt, { block, seed }, spec);
      const got = toQuantized(dq);
      disposeQuantized(dq);
      const ref = quantize(hadamard(xf, [rows, cols], { block, seed }), [rows, cols], spec);
      assertSame(got.codes, ref.codes, `${what} codes`);
      assertSame(got.scales, ref.scales, `${what} scales`);
      assert(Object.is(got.tensorScale, ref.tensorScale), tag(`${what} tensor scale`));
    }
  });

  Deno.test(`[${device}] outputs are fully written (poisoned buffers) and bad input is refused`, async () => {
    const r = rng(SEED ^ 0x2545f491);
    const x = randomMatrix(r, 3, 64);
    const bad = x.slice();
    const at = 64 + 17;
    bad[at] = r() < 0.5 ? NaN : -Infinity;
    using bt = Tensor.from(bad, [3, 64]);
    const e = await assertRejects(() => quantizeOn(device, bt, "nvfp4"), NativeError);
    assert(e.message.includes("(row 1, col 17)"), e.message);
    assertEquals(e.code, "NUMERIC");
    await assertRejects(() => quantizeOn(device, bt, "mxfp4"), NativeError, "(row 1, col 17)");
    using xt = Tensor.from(x, [3, 64]);
    await assertRejects(() => quantizeOn(device, xt, "int4:g48"), Error, "does not divide");
    await assertRejects(() => hadamardOn(device, xt, { block: 48 }), NativeError, "power of two");
    await assertRejects(
      () => hadamardOn(device, xt, { block: 128 }),
      NativeError,
      "does not divide",
    );
    using it = Tensor.from(new Int32Array(4), [1, 4]);
    await assertRejects(() => quantizeOn(device, it, "mxfp4:g4"), Error, "dtype");
    await assertRejects(() => encodeOn(device, "e9m9" as CodecName, x), Error, "unknown codec");
    // Tensor.empty poisons outputs with 0xFF; a skipped write would show as a 0xFF byte where
    // the reference has none (nvfp4 never produces code 0xF-0xF pairs from these inputs' zeros).
    const q = toQuantized(await quantizeOn(device, xt, "nvfp4:g2"));
    const ref = quantize(x, [3, 64], "nvfp4:g2");
    assertSame(q.codes, ref.codes, `${device} g2 codes`);
    assertSame(q.scales, ref.scales, `${device} g2 scales`);
  });
}

// The persistent tiled CUDA paths (E2M1 groups of 16/32, bf16 or f32) on tensors of many 8192-element
// tiles, more than one per CTA and a partial last one, against the CPU backend byte for byte;
// a planted NaN must be reported at the same element as the CPU reports it.
Deno.test({
  name: "[cuda] tiled quantize and rotate+quantize equal the CPU backend on large tensors",
  ignore: !cudaStatus().available,
  fn: async () => {
    const r = rng(SEED ^ 0x27d4eb2f);
    const [rows, cols] = [1100, 4224]; // 567.2 tiles of 8192 elements
    const x = randomMatrix(r, rows, cols);
    const b = new Uint16Array(x.length).map((_, i) => f32ToBf16(x[i]));
    for (const dtype of ["bf16", "f32"] as const) {
      using xc = dtype === "bf16"
        ? Tensor.from(b, [rows, cols], "bf16")
        : Tensor.from(x, [rows, cols]);
      using xd = xc.to("cuda");
      const specs = ["nvfp4", "nvfp4:ts=0.0017", "nvfp4:ts=3e-7", "mxfp4", "nvfp4:g32"];
      for (const spec of [...specs, "mxfp4:g16", "mxfp4:rule=mr-gptq"]) {
        for (const rotate of [false, true]) {
          const seed = rotate && r() < 0.5 ? Math.floor(r() * 1e6) : undefined;
          const run = (device: Device, t: Tensor) =>
            rotate
              ? rotateQuantizeOn(device, t, { block: 128, seed }, spec)
              : quantizeOn(device, t, spec);
          const what = `${dtype} ${spec} rotate ${rotate} seed ${seed}`;
          const a = await run("cpu", xc), c = await run("cuda", xd);
          const qa = toQuantized(a), qc = toQuantized(c);
          disposeQuantized(a);
          disposeQuantized(c);
          assertSame(qc.codes, qa.codes, `${what} codes`);
          assertSame(qc.scales, qa.scales, `${what} scales`);
          assert(Object.is(qc.tensorScale, qa.tensorScale), tag(`${what} tensor scale`));
        }
      }
    }
    const at = Math.floor(r() * x.length);
    b[at] = r() < 0.5 ? 0x7fc0 : 0xff80; // NaN or -Infinity
    using bc = Tensor.from(b, [rows, cols], "bf16");
    using bd = bc.to("cuda");
    for (const spec of ["nvfp4", "nvfp4:ts=0.001", "mxfp4"]) {
      for (const rotate of [false, true]) {
        const run = (device: Device, t: Tensor) =>
          rotate ? rotateQuantizeOn(device, t, { block: 128 }, spec) : quantizeOn(device, t, spec);
        const want = await assertRejects(() => run("cpu", bc), NativeError);
        const got = await assertRejects(() => run("cuda", bd), NativeError);
        assertEquals(
          got.message,
          want.message,
          tag(`${spec} rotate ${rotate} bad element at ${at}`),
        );
      }
    }
  },
});

// GPTQ fixes its group scales with chooseGroupScalesNative (the MSE search natively): it must
// give chooseGroupScales' bits, tensor scale and effective scales exactly, outliers included.
Deno.test("chooseGroupScalesNative equals chooseGroupScales bit for bit", async () => {
  const seed = (Math.random() * 2 ** 31) >>> 0;
  const r = rng(seed);
  const rows = 24, cols = 256;
  const x = new Float32Array(rows * cols).map(() => (r() - 0.5) * 0.2);
  for (let i = 0; i < 40; i++) x[Math.floor(r() * x.length)] *= 30;
  for (
    const spec of ["nvfp4", "nvfp4:mse", "mxfp4", "mxfp4:mse", "mxfp4:rule=mr-gptq", "int4:g32"]
  ) {
    const want = chooseGroupScales(x, [rows, cols], spec);
    const got = await chooseGroupScalesNative(x, rows, cols, spec);
    assertEquals(Array.from(got.scales), Array.from(want.scales), `seed ${seed} ${spec}: bits`);
    assertEquals(got.tensorScale, want.tensorScale, `seed ${seed} ${spec}: tensor scale`);
    assertEquals(Array.from(got.effective), Array.from(want.effective), `seed ${seed} ${spec}`);
  }
});
