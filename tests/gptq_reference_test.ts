import { assert, assertThrows } from "./assert.ts";
import { cholesky, inverseSpd, upperCholeskyOfInverse } from "../lib/gptq/linalg.ts";
import { gptqReference, proxyLoss } from "../lib/gptq/reference.ts";
import { groupQuantizer } from "../lib/gptq/quantizer.ts";
import { fakeQuantize } from "../lib/formats/quantize.ts";
import { hessianOf, syntheticLayer } from "../lib/gptq/synthetic.ts";
import { gaussian, seededRandom } from "../lib/random.ts";

const seed = (Math.random() * 2 ** 31) >>> 0;
const tag = `(seed ${seed})`;

function randomSpd(n: number, rand: () => number): Float64Array {
  const g = gaussian(rand);
  const x = Float64Array.from({ length: 2 * n * n }, () => g());
  return hessianOf(x, 2 * n, n);
}

Deno.test("linalg: U^T U equals the inverse and L L^T the input", () => {
  const rand = seededRandom(seed);
  const n = 9;
  const a = randomSpd(n, rand);
  const l = cholesky(a, n)!;
  const inv = inverseSpd(a, n)!;
  const u = upperCholeskyOfInverse(a, n)!;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let llt = 0, utu = 0, ainv = 0;
      for (let k = 0; k < n; k++) {
        llt += l[i * n + k] * l[j * n + k];
        utu += u[k * n + i] * u[k * n + j];
        ainv += a[i * n + k] * inv[k * n + j];
      }
      assert(Math.abs(llt - a[i * n + j]) < 1e-9 * (1 + Math.abs(a[i * n + j])), tag);
      assert(Math.abs(utu - inv[i * n + j]) < 1e-9 * (1 + Math.abs(inv[i * n + j])), tag);
      assert(Math.abs(ainv - (i === j ? 1 : 0)) < 1e-8, tag);
      if (j < i) assert(u[i * n + j] === 0);
    }
  }
  assert(cholesky(new Float64Array([1, 2, 2, 1]), 2) === undefined, "indefinite accepted");
});

function problem(rows: number, cols: number, s: number) {
  const l = syntheticLayer(rows, cols, 4 * cols, s);
  return { w: Float64Array.from(l.w), h: hessianOf(l.x, l.tokens, cols), x: l.x, l };
}

for (const scales of ["static", "dynamic"] as const) {
  for (const actOrder of ["none", "static"] as const) {
    Deno.test(`reference: block size 1, 128 and the naive OBQ route agree (${scales} scales, act-order ${actOrder})`, () => {
      const rows = 12, cols = 96;
      const { w, h } = problem(rows, cols, seed);
      const quantizer = groupQuantizer("int4:g16:scale=f32");
      const base = { quantizer, scales, actOrder };
      const a = gptqReference(w, h, rows, cols, { ...base, blockSize: 128 });
      const b = gptqReference(w, h, rows, cols, { ...base, blockSize: 1 });
      const c = gptqReference(w, h, rows, cols, { ...base, blockSize: 40 });
      const n = gptqReference(w, h, rows, cols, { ...base, solver: "naive" });
      for (const [name, other] of [["block 1", b], ["block 40", c], ["naive", n]] as const) {
        let diff = 0;
        for (let i = 0; i < a.codes.length; i++) diff += a.codes[i] !== other.codes[i] ? 1 : 0;
        // Exact arithmetic gives identical codes; float64 may flip a code at an exact tie only.
        assert(diff <= 1, `${name}: ${diff} codes differ ${tag}`);
        assert(
          Math.abs(a.proxyLoss - other.proxyLoss) <= 1e-6 * a.proxyLoss,
          `${name} loss ${tag}`,
        );
      }
      assert((a.permutation !== undefined) === (actOrder === "static"));
      assert((a.groupIndex !== undefined) === (scales === "dynamic" && actOrder === "static"));
    });
  }
}

Deno.test("reference: GPTQ lowers the proxy loss below round-to-nearest", () => {
  const rows = 16, cols = 128;
  const { w, h } = problem(rows, cols, seed + 1);
  const quantizer = groupQuantizer("int4:g32:scale=f32");
  const gptq = gptqReference(w, h, rows, cols, { quantizer });
  const rtn = fakeQuantize(Float32Array.from(w), [rows, cols], quantizer.spec);
  const rtnLoss = proxyLoss(w, rtn, h, rows, cols);
  assert(gptq.proxyLoss < 0.8 * rtnLoss, `gptq ${gptq.proxyLoss} vs rtn ${rtnLoss} ${tag}`);
});

Deno.test("reference: dead inputs get zero weights; act-order keeps static scales in stored layout", () => {
  const rows = 4, cols = 32;
  const { w, h } = problem(rows, cols, seed + 2);
  for (let k = 0; k < cols; k++) h[5 * cols + k] = h[k * cols + 5] = 0;
  const r = gptqReference(w, h, rows, cols, {
    quantizer: groupQuantizer("int4:g8:scale=f32"),
    actOrder: "static",
  });
  for (let i = 0; i < rows; i++) assert(r.dequantized[i * cols + 5] === 0);
  const diag = Array.from({ length: cols }, (_, j) => h[j * cols + j]);
  for (let p = 1; p < cols; p++) assert(diag[r.permutation![p - 1]] >= diag[r.permutation![p]]);
  // Every dequantized value is a grid value times its stored-layout group's scale.
  for (let i = 0; i < rows; i++) {
    for (let c = 0; c < cols; c++) {
      const v = r.dequantized[i * cols + c] / r.scales[i * 4 + Math.floor(c / 8)];
      assert(Math.abs(v - Math.round(v)) < 1e-9 && Math.abs(v) <= 7 + 1e-9, `${v}`);
    }
  }
});

Deno.test("reference: bad input is a clear Error", () => {
  const q = { quantizer: groupQuantizer("int4:g8") };
  const w = new Float64Array(2 * 16).fill(1);
  const h = new Float64Array(256);
  for (let i = 0; i < 16; i++) h[i * 17] = 1;
  assertThrows(() => gptqReference(w, h, 3, 16, q), Error, "W has 32 elements");
  assertThrows(() => gptqReference(w, h.subarray(1), 2, 16, q), Error, "H has 255");
  assertThrows(
    () => gptqReference(w, h, 2, 16, { quantizer: groupQuantizer("int4:g5") }),
    Error,
    "not divisible by the group size 5",
  );
  const wn = Float64Array.from(w);
  wn[3] = NaN;
  assertThrows(() => gptqReference(wn, h, 2, 16, q), Error, "W has a non-finite");
  const hi = Float64Array.from(h);
  hi[17] = Infinity;
  assertThrows(() => gptqReference(w, hi, 2, 16, q), Error, "H has a non-finite");
  const neg = Float64Array.from(h);
  for (let i = 0; i < 16; i++) neg[i * 17] = i === 3 ? -1e6 : 1;
  assertThrows(() => gptqReference(w, neg, 2, 16, q), Error, "not positive definite");
});

Deno.test("reference: a slightly indefinite Hessian succeeds after damping retries", () => {
  const rows = 4, cols = 16;
  const { w, h } = problem(rows, cols, seed + 3);
  // Shift the spectrum so the smallest eigenvalue is about -5% of the mean diagonal: 1% damping
  // cannot fix it, 10% can.
  let mean = 0;
  for (let i = 0; i < cols; i++) mean += h[i * cols + i] / cols;
  // Smallest eigenvalue lower bound via a shift search with Cholesky (bisection).
  let lo = -mean, hi = mean * 10;
  for (let it = 0; it < 60; it++) {
    const mid = (lo + hi) / 2;
    const s = Float64Array.from(h);
    for (let i = 0; i < cols; i++) s[i * cols + i] -= mid;
    if (cholesky(s, cols)) lo = mid;
    else hi = mid;
  }
  const minEig = lo;
  const shifted = Float64Array.from(h);
  for (let i = 0; i < cols; i++) shifted[i * cols + i] -= minEig + 0.05 * mean;
  let mean2 = 0;
  for (let i = 0; i < cols; i++) mean2 += shifted[i * cols + i] / cols;
  const r = gptqReference(w, shifted, rows, cols, { quantizer: groupQuantizer("int4:g8") });
  assert(Math.abs(r.damp - 0.1 * mean2) < 1e-12 * mean2, `damp ${r.damp} ${tag}`);
  assertThrows(
    () =>
      gptqReference(w, shifted, rows, cols, {
        quantizer: groupQuantizer("int4:g8"),
        maxDampRetries: 0,
      }),
    Error,
    "not positive definite",
  );
});
