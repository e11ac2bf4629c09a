// Philox4x32-10 known answers, and the block Hadamard rotation against an explicit float64
// matrix product, its inverse, its random signs and its input checks.
import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  hadamard,
  hadamardScale,
  hadamardSign,
  inverseHadamard,
  philox4x32,
  philoxWord0,
  seedKey,
} from "../lib/formats/mod.ts";

Deno.test("philox4x32-10 reproduces the Random123 known-answer vectors", () => {
  const hex = (a: Uint32Array) => [...a].map((v) => v.toString(16).padStart(8, "0")).join(" ");
  assertEquals(hex(philox4x32(0, 0, 0, 0, 0, 0)), "6627e8d5 e169c58d bc57ac4c 9b00dbd8");
  const m = 0xffffffff;
  assertEquals(hex(philox4x32(m, m, m, m, m, m)), "408f276d 41c83b0e a20bc7c6 6d5451fd");
  assertEquals(
    hex(philox4x32(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0)),
    "d16cfe09 94fdcceb 5001e420 24126ea1",
  );
  for (let t = 0; t < 200; t++) {
    const w = Array.from({ length: 4 }, () => (Math.random() * 2 ** 32) >>> 0);
    assertEquals(philoxWord0(w[0], w[1], w[2], w[3]), philox4x32(w[0], w[1], 0, 0, w[2], w[3])[0]);
  }
  assertEquals(seedKey(0x1234567890abcdefn), [0x90abcdef, 0x12345678]);
  assertThrows(() => seedKey(-1), Error, "not in [0, 2^64)");
});

function randomRows(rows: number, cols: number): Float32Array {
  return new Float32Array(rows * cols).map(() =>
    (Math.random() - 0.5) * 2 ** Math.floor(Math.random() * 8 - 4)
  );
}

function popcount(v: number): number {
  let c = 0;
  for (; v; v &= v - 1) c++;
  return c;
}

/** float64 y = H_b / sqrt(b) * D * x per block, by explicit matrix product. */
function reference(
  x: Float32Array,
  rows: number,
  cols: number,
  b: number,
  seed?: number,
): Float64Array {
  const y = new Float64Array(x.length);
  const s = Array.from(
    { length: cols },
    (_, c) => (seed === undefined ? 1 : hadamardSign(c, seed)),
  );
  for (let r = 0; r < rows; r++) {
    for (let base = 0; base < cols; base += b) {
      for (let i = 0; i < b; i++) {
        let acc = 0;
        for (let j = 0; j < b; j++) {
          const c = base + j;
          acc += (popcount(i & j) % 2 ? -1 : 1) * s[c] * x[r * cols + c];
        }
        y[r * cols + base + i] = acc / Math.sqrt(b);
      }
    }
  }
  return y;
}

/** Per-element error bound: (log2 b + 1) roundings of values at most the block's 2-norm. */
function bound(x: Float32Array, i: number, cols: number, b: number, factor: number): number {
  const base = Math.floor(i / b) * b;
  let n2 = 0;
  for (let j = base; j < base + b; j++) n2 += x[j] * x[j];
  void cols;
  return factor * (Math.log2(b) + 1) * 2 ** -24 * Math.sqrt(n2) * Math.sqrt(b);
}

Deno.test("hadamard equals the explicit float64 matrix product within float32 rounding", () => {
  for (const b of [2, 4, 8, 16, 32, 64, 128]) {
    const rows = 3;
    const cols = 2 * b;
    const x = randomRows(rows, cols);
    for (const seed of [undefined, Math.floor(Math.random() * 1e9)]) {
      const y = hadamard(x, [rows, cols], { block: b, seed });
      const ref = reference(x, rows, cols, b, seed);
      for (let i = 0; i < x.length; i++) {
        assert(
          Math.abs(y[i] - ref[i]) <= bound(x, i, cols, b, 1),
          `b=${b} seed=${seed} i=${i}: ${y[i]} vs ${ref[i]}`,
        );
      }
    }
  }
});

Deno.test("inverseHadamard undoes hadamard (orthonormal), also with random signs", () => {
  for (const b of [16, 256, 4096]) {
    const rows = b === 4096 ? 2 : 4;
    const cols = b === 4096 ? 4096 : 2 * b;
    const x = randomRows(rows, cols);
    const seed = BigInt(Math.floor(Math.random() * 2 ** 53));
    const opts = { block: b, seed };
    const back = inverseHadamard(hadamard(x, [rows, cols], opts), [rows, cols], opts);
    let n2x = 0;
    let n2y = 0;
    const y = hadamard(x, [rows, cols], opts);
    for (let i = 0; i < x.length; i++) {
      n2x += x[i] * x[i];
      n2y += y[i] * y[i];
      assert(
        Math.abs(back[i] - x[i]) <= bound(x, i, cols, b, 2),
        `b=${b} i=${i}: ${back[i]} vs ${x[i]}`,
      );
    }
    assert(Math.abs(n2x - n2y) <= n2x * 1e-5, `norm not preserved: ${n2x} vs ${n2y}`);
  }
});

Deno.test("random signs are ±1, seed-dependent and balanced", () => {
  const seed = Math.floor(Math.random() * 2 ** 32);
  let neg = 0;
  let diff = 0;
  for (let c = 0; c < 4096; c++) {
    const s = hadamardSign(c, seed);
    assert(s === 1 || s === -1);
    if (s < 0) neg++;
    if (s !== hadamardSign(c, seed + 1)) diff++;
  }
  assert(Math.abs(neg - 2048) < 5 * 32, `${neg} negative signs of 4096 (seed ${seed})`);
  assert(Math.abs(diff - 2048) < 5 * 32, `${diff} signs changed with the seed`);
});

Deno.test("normalization constant is the float32 nearest 1/sqrt(b), exact for powers of 4", () => {
  for (let k = 1; k <= 12; k++) {
    const b = 2 ** k;
    assertEquals(hadamardScale(b), Math.fround(1 / Math.sqrt(b)), `b=${b}`);
  }
  assertEquals(hadamardScale(256), 1 / 16);
  const y = hadamard(new Float32Array([1, 0, 0, 0, 0, 0, 0, 0]), [1, 8], { block: 8 });
  assert(y.every((v) => v === Math.fround(Math.SQRT1_2) / 2));
});

Deno.test("hadamard rejects bad blocks and shapes", () => {
  const x = new Float32Array(24);
  assertThrows(() => hadamard(x, [2, 12], { block: 12 }), Error, "power of two in 2..4096");
  assertThrows(() => hadamard(x, [1, 24], { block: 16 }), Error, "does not divide the 24 columns");
  assertThrows(
    () => hadamard(new Float32Array(8192), [1, 8192], { block: 8192 }),
    Error,
    "2..4096",
  );
  assertThrows(() => hadamard(x, [5, 5], { block: 4 }), Error, "needs 25 elements");
  assertThrows(() => inverseHadamard(x, [24], { block: 4 }), Error, "shape must be [rows, cols]");
});
