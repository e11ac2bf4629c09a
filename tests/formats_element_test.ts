// Element and scale encoders against an independent float64 reference: enumerate every
// representable value of the format, pick the nearest by explicit distance comparison, break
// ties towards the even mantissa. Inputs: every BF16 and every FP16 bit pattern (as float32),
// a dense random float32 sample, and the exact midpoints between grid values (and their
// float32 neighbours).
import { assert, assertEquals } from "./assert.ts";
import { bf16ToF32, f16ToF32 } from "../lib/dtype.ts";
import {
  decodeMinifloat,
  decodeScale,
  E2M1,
  E2M3,
  E3M2,
  E4M3,
  E5M2,
  encodeE2M1,
  encodeE8M0,
  encodeInt,
  encodeIntStochastic,
  encodeIntZero,
  encodeMinifloat,
  encodeScale,
  INT4,
  INT8,
  intCodeBits,
  intFromBits,
  type MinifloatFormat,
  MXINT8,
  roundHalfEven,
  UE4M3,
  UE5M3,
  UINT4,
} from "../lib/formats/mod.ts";

const FORMATS: MinifloatFormat[] = [E2M1, E2M3, E3M2, E4M3, E5M2, UE4M3, UE5M3];

/** Reference grid: finite non-negative values with their magnitude codes, from the formula. */
function referenceGrid(f: MinifloatFormat): { value: number; code: number }[] {
  const out: { value: number; code: number }[] = [];
  const nMag = 1 << (f.ebits + f.mbits);
  for (let code = 0; code < nMag; code++) {
    const e = Math.floor(code / 2 ** f.mbits);
    const m = code % 2 ** f.mbits;
    const topExp = 2 ** f.ebits - 1;
    if (f.specials === "fn" && code === nMag - 1) continue;
    if (f.specials === "ieee" && e === topExp) continue;
    const value = e === 0
      ? (m / 2 ** f.mbits) * Math.pow(2, 1 - f.bias)
      : (1 + m / 2 ** f.mbits) * Math.pow(2, e - f.bias);
    out.push({ value, code });
  }
  out.sort((a, b) => a.value - b.value);
  return out;
}

function referenceEncoder(f: MinifloatFormat): (x: number) => number {
  const grid = referenceGrid(f);
  const signBit = f.signed ? 1 << (f.ebits + f.mbits) : 0;
  const max = grid[grid.length - 1];
  return (x: number) => {
    if (Number.isNaN(x)) return f.nanInputCode;
    const neg = x < 0 || Object.is(x, -0);
    if (neg && !f.signed) return 0;
    const a = Math.abs(x);
    let code: number;
    if (a >= max.value) code = max.code;
    else {
      let j = 0; // last grid index with value <= a
      let k = grid.length - 1;
      while (k - j > 1) {
        const mid = (j + k) >> 1;
        if (grid[mid].value <= a) j = mid;
        else k = mid;
      }
      const lo = grid[j];
      const hi = grid[j + 1];
      const dlo = a - lo.value;
      const dhi = hi.value - a;
      if (dlo < dhi) code = lo.code;
      else if (dhi < dlo) code = hi.code;
      else code = lo.code % 2 === 0 ? lo.code : hi.code;
    }
    return (neg ? signBit : 0) | code;
  };
}

function hex(n: number): string {
  return "0x" + n.toString(16);
}

function compareAll(f: MinifloatFormat, inputs: Float32Array, what: string): void {
  const ref = referenceEncoder(f);
  let bad = 0;
  const examples: string[] = [];
  for (let i = 0; i < inputs.length; i++) {
    const x = inputs[i];
    const got = encodeMinifloat(x, f);
    const want = ref(x);
    if (got !== want) {
      bad++;
      if (examples.length < 5) examples.push(`${x}: got ${hex(got)} want ${hex(want)}`);
    }
  }
  assertEquals(bad, 0, `${f.name} on ${what}: ${bad} mismatches, e.g. ${examples.join("; ")}`);
}

function allBf16(): Float32Array {
  const out = new Float32Array(65536);
  for (let b = 0; b < 65536; b++) out[b] = bf16ToF32(b);
  return out;
}

function allF16(): Float32Array {
  const out = new Float32Array(65536);
  for (let b = 0; b < 65536; b++) out[b] = f16ToF32(b);
  return out;
}

function randomF32(n: number): Float32Array {
  const bits = new Uint32Array(n);
  for (let i = 0; i < n; i++) bits[i] = (Math.random() * 4294967296) >>> 0;
  // Half the sample concentrated in the formats' ranges: random exponent in [-20, 20].
  const out = new Float32Array(bits.buffer);
  for (let i = 0; i < n; i += 2) {
    out[i] = (Math.random() - 0.5) * 2 ** Math.floor(Math.random() * 40 - 20);
  }
  return out;
}

/** Grid midpoints (exact ties) and their float32 neighbours, both signs. */
function midpoints(f: MinifloatFormat): Float32Array {
  const g = referenceGrid(f).map((e) => e.value);
  const out: number[] = [];
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  for (let i = 0; i + 1 < g.length; i++) {
    f32[0] = (g[i] + g[i + 1]) / 2;
    const m = u32[0];
    for (const d of [-1, 0, 1]) {
      u32[0] = m + d;
      out.push(f32[0], -f32[0]);
    }
  }
  out.push(Infinity, -Infinity, NaN, -0, 0);
  return new Float32Array(out);
}

for (const f of FORMATS) {
  Deno.test(`${f.name}: every BF16 bit pattern encodes like the nearest-grid-point reference`, () => {
    compareAll(f, allBf16(), "all bf16");
  });
  Deno.test(`${f.name}: every FP16 bit pattern encodes like the reference`, () => {
    compareAll(f, allF16(), "all f16");
  });
  Deno.test(`${f.name}: random float32 values and exact ties encode like the reference`, () => {
    compareAll(f, randomF32(100_000), "random f32");
    compareAll(f, midpoints(f), "midpoints");
  });
  Deno.test(`${f.name}: decode matches the formula and encode(decode(c)) == c`, () => {
    const grid = new Map(referenceGrid(f).map((e) => [e.code, e.value]));
    const nMag = 1 << (f.ebits + f.mbits);
    for (let c = 0; c < 1 << f.bits; c++) {
      const v = decodeMinifloat(c, f);
      const mag = c % nMag;
      const neg = f.signed && c >= nMag;
      if (grid.has(mag)) {
        const want = neg ? -grid.get(mag)! : grid.get(mag)!;
        assert(Object.is(v, want), `${f.name} ${hex(c)}: ${v} vs ${want}`);
        assertEquals(encodeMinifloat(v, f), c, `${f.name} round trip ${hex(c)}`);
      } else {
        assert(!Number.isFinite(v), `${f.name} ${hex(c)} should be special, got ${v}`);
      }
    }
  });
}

Deno.test("format constants: maxima, canonical NaN codes and E5M2 infinity", () => {
  assertEquals(
    FORMATS.map((f) => f.maxFinite),
    [6, 7.5, 28, 448, 57344, 448, 114688],
  );
  assertEquals(E4M3.nanInputCode, 0x7f);
  assertEquals(E5M2.nanInputCode, 0x7e);
  assertEquals(UE5M3.nanInputCode, 0xff);
  assertEquals(E2M1.nanInputCode, 0x7);
  assertEquals(decodeMinifloat(0x7c, E5M2), Infinity);
  assertEquals(decodeMinifloat(0xfc, E5M2), -Infinity);
  assertEquals(encodeMinifloat(Infinity, E5M2), 0x7b);
  assertEquals(encodeMinifloat(-Infinity, E4M3), 0xfe);
  assertEquals(decodeMinifloat(0x01, UE5M3), 2 ** -17);
  assertEquals([0, 0.5, 1, 1.5, 2, 3, 4, 6].map(encodeE2M1), [0, 1, 2, 3, 4, 5, 6, 7]);
  assertEquals(encodeE2M1(-0.1), 0x8); // negative underflow keeps the sign
});

/** Reference integer rounding: nearest by distance, ties to the even integer. */
function refRound(t: number): number {
  const lo = Math.floor(t);
  const dlo = t - lo;
  const dhi = lo + 1 - t;
  if (dlo < dhi) return lo;
  if (dhi < dlo) return lo + 1;
  return lo % 2 === 0 ? lo : lo + 1;
}

Deno.test("integer elements round half to even and clamp to their ranges", () => {
  const xs = [...randomF32(50_000)].filter(Number.isFinite).map((v) => v * 50);
  for (let k = -300; k <= 300; k++) xs.push(k / 2, k / 2 + 2 ** -20, k / 2 - 2 ** -20);
  for (const x of xs) {
    assertEquals(roundHalfEven(x), refRound(x), `rne ${x}`);
    for (const f of [INT4, INT8, MXINT8]) {
      const want = Math.min(Math.max(refRound(x / f.step), f.qmin), f.qmax);
      assertEquals(encodeInt(x, f), want, `${f.name} ${x}`);
      assertEquals(intFromBits(intCodeBits(want, f), f), want);
    }
    const z = 5;
    assertEquals(encodeIntZero(x, UINT4, z), Math.min(Math.max(refRound(x) + z, 0), 15));
  }
  assertEquals(encodeInt(NaN, INT4), 0);
  assertEquals(encodeInt(Infinity, INT8), 127);
  assertEquals(intCodeBits(-7, INT4), 0x9);
  assertEquals(encodeIntStochastic(2.5, INT4, 2 ** 31), 2); // r == frac * 2^32: not below -> down
  assertEquals(encodeIntStochastic(2.5, INT4, 2 ** 31 - 1), 3);
});

Deno.test("e8m0: floor, ceil and float-style rne against power-of-two enumeration", () => {
  const xs = [...randomF32(50_000)].filter((v) => v > 0 && Number.isFinite(v));
  for (let k = -130; k <= 130; k++) xs.push(2 ** k, 1.5 * 2 ** k, 1.25 * 2 ** k, 1.75 * 2 ** k);
  for (const x of xs) {
    let fl = -127;
    while (fl < 127 && 2 ** (fl + 1) <= x) fl++;
    let ce = 127;
    while (ce > -127 && 2 ** (ce - 1) >= x) ce--;
    const lo = 2 ** fl;
    const hi = 2 ** (fl + 1);
    let rn = x - lo < hi - x ? fl : hi - x < x - lo ? fl + 1 : ((fl + 127) % 2 === 0 ? fl : fl + 1);
    if (x < 2 ** -127) rn = -127;
    rn = Math.min(Math.max(rn, -127), 127);
    assertEquals(encodeE8M0(x, "floor"), fl + 127, `floor ${x}`);
    assertEquals(encodeE8M0(x, "ceil"), ce + 127, `ceil ${x}`);
    assertEquals(encodeE8M0(x, "rne"), rn + 127, `rne ${x}`);
    assertEquals(decodeScale(fl + 127, "e8m0"), lo);
  }
  assertEquals(encodeE8M0(NaN), 0xff);
  assertEquals(encodeE8M0(0), 0);
  assertEquals(encodeE8M0(-3), 0);
  assertEquals(encodeE8M0(Infinity), 0xfe);
  assert(Number.isNaN(decodeScale(0xff, "e8m0")));
});

Deno.test("float scale formats round to nearest even and saturate instead of overflowing", () => {
  assertEquals(encodeScale(1e6, "f16"), 0x7bff);
  assertEquals(encodeScale(65520, "f16"), 0x7bff); // would round to Inf in IEEE
  assertEquals(encodeScale(3.4e38, "bf16"), 0x7f7f);
  assertEquals(encodeScale(1e9, "e4m3"), 0x7e);
  assertEquals(encodeScale(1e9, "ue5m3"), 0xfe);
  assertEquals(encodeScale(-2, "e4m3"), 0);
  for (const v of randomF32(20_000)) {
    const a = Math.abs(v);
    if (!Number.isFinite(a)) continue;
    for (const fmt of ["f32", "bf16", "f16", "e4m3", "ue5m3"] as const) {
      const back = decodeScale(encodeScale(a, fmt), fmt);
      // Round trip of an already-representable value is the identity.
      assertEquals(decodeScale(encodeScale(back, fmt), fmt), back, `${fmt} ${a}`);
    }
    assertEquals(decodeScale(encodeScale(a, "f32"), "f32"), a);
  }
});
