// Asymmetric calibration (lib/gptq/asymmetric.ts): the streamed cross product against float64,
// the least-squares target against a float64 least-squares solve from the raw inputs, the
// identity that lets ordinary GPTQ on (W*, H~) minimise the asymmetric objective, and GPTQ on
// the target beating GPTQ on W when the GEMM's inputs are systematically off.
import { assert, assertRejects } from "./assert.ts";
import { AsymmetricTarget, CrossCovariance } from "../lib/gptq/asymmetric.ts";
import { quantizeLayer } from "../lib/gptq/layer.ts";
import { hessianOf, syntheticLayer } from "../lib/gptq/synthetic.ts";
import { gaussian, seededRandom } from "../lib/random.ts";
import { checkAsync, native } from "../ffi/library.ts";
import { cudaStatus } from "../lib/device.ts";
import { Tensor } from "../lib/tensor.ts";

const seed = (Math.random() * 2 ** 31) >>> 0;
const tag = `(seed ${seed})`;

// (2 / n) A^T B in float64.
function crossOf(a: Float32Array, b: Float32Array, n: number, cols: number): Float64Array {
  const c = new Float64Array(cols * cols);
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < cols; i++) {
      for (let j = 0; j < cols; j++) c[i * cols + j] += a[t * cols + i] * b[t * cols + j];
    }
  }
  return c.map((v) => v * 2 / n);
}

// The reference X (synthetic, correlated, with outlier channels) and the GEMM's inputs
// X~ = scale * X + noise (a systematic gain error plus a random one).
function problem(rows: number, cols: number, n: number, scale: number, noise: number) {
  const l = syntheticLayer(rows, cols, n, seed);
  const g = gaussian(seededRandom(seed + 1));
  const xq = l.x.map((v) => scale * v + noise * Math.abs(v) * g());
  const e = l.x.map((v, i) => v - xq[i]);
  return { ...l, xq, e };
}

// (2 / n) ||X W^T - X~ Q^T||^2 + lambda ||Q - W||^2 in float64.
function asymmetricLoss(
  p: ReturnType<typeof problem>,
  q: ArrayLike<number>,
  lambda: number,
): number {
  const { rows, cols, tokens: n, x, xq, w } = p;
  let out = 0;
  for (let r = 0; r < rows; r++) {
    for (let t = 0; t < n; t++) {
      let s = 0;
      for (let c = 0; c < cols; c++) {
        s += x[t * cols + c] * w[r * cols + c] - xq[t * cols + c] * q[r * cols + c];
      }
      out += s * s;
    }
  }
  let ridge = 0;
  for (let i = 0; i < w.length; i++) ridge += (q[i] - w[i]) ** 2;
  return out * 2 / n + lambda * ridge;
}

// Solves A Z = B (A n x n, B n x m, row-major) by Gaussian elimination with partial pivoting.
function solve(a: Float64Array, b: Float64Array, n: number, m: number): Float64Array {
  const A = a.slice(), B = b.slice();
  for (let k = 0; k < n; k++) {
    let p = k;
    for (let i = k + 1; i < n; i++) if (Math.abs(A[i * n + k]) > Math.abs(A[p * n + k])) p = i;
    for (let j = 0; j < n; j++) [A[k * n + j], A[p * n + j]] = [A[p * n + j], A[k * n + j]];
    for (let j = 0; j < m; j++) [B[k * m + j], B[p * m + j]] = [B[p * m + j], B[k * m + j]];
    for (let i = k + 1; i < n; i++) {
      const f = A[i * n + k] / A[k * n + k];
      for (let j = k; j < n; j++) A[i * n + j] -= f * A[k * n + j];
      for (let j = 0; j < m; j++) B[i * m + j] -= f * B[k * m + j];
    }
  }
  for (let k = n - 1; k >= 0; k--) {
    for (let j = 0; j < m; j++) {
      let s = B[k * m + j];
      for (let i = k + 1; i < n; i++) s -= A[k * n + i] * B[i * m + j];
      B[k * m + j] = s / A[k * n + k];
    }
  }
  return B;
}

Deno.test("CrossCovariance: streamed batches equal (2/n) A^T B in float64", async () => {
  const p = problem(1, 40, 300, 0.9, 0.1);
  const c = new CrossCovariance(40);
  await c.add(p.e.subarray(0, 120 * 40), p.xq.subarray(0, 120 * 40), 120);
  await c.add(p.e.subarray(120 * 40), p.xq.subarray(120 * 40), 180);
  const want = crossOf(p.e, p.xq, 300, 40);
  const got = c.matrix();
  let scale = 0, err = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]) / scale);
  assert(c.samples === 300 && err < 1e-5, `max error ${err} of the largest entry ${tag}`);
  await assertRejects(() => c.add(new Float32Array(40), new Float32Array(39), 1), Error, "needs");
  const bad = new Float32Array(40);
  bad[3] = Infinity;
  await assertRejects(() => c.add(bad, new Float32Array(40), 1), Error, "non-finite");
});

// Streams `a` and `b` ([n, cols]) in batches into fp4_gptq_cross_add on `device` (CPU: the
// native entry point directly, the CPU twin of the CUDA kernel; CUDA: through CrossCovariance,
// which keeps D on the device); returns D.
async function nativeCross(
  device: "cpu" | "cuda",
  a: Float32Array,
  b: Float32Array,
  batches: number[],
  cols: number,
): Promise<Float64Array> {
  if (device === "cuda") {
    using c = new CrossCovariance(cols, { device });
    let at = 0;
    for (const n of batches) {
      await c.add(
        a.subarray(at * cols, (at + n) * cols),
        b.subarray(at * cols, (at + n) * cols),
        n,
      );
      at += n;
    }
    return c.matrix();
  }
  using d = Tensor.from(new Float32Array(cols * cols), [cols, cols]);
  let at = 0;
  for (const n of batches) {
    using ta = Tensor.from(a.slice(at * cols, (at + n) * cols), [n, cols]);
    using tb = Tensor.from(b.slice(at * cols, (at + n) * cols), [n, cols]);
    await checkAsync(
      native().fp4_gptq_cross_add(
        0,
        d.pointer(),
        ta.pointer(),
        tb.pointer(),
        BigInt(n),
        BigInt(cols),
        BigInt(at),
      ),
      "fp4_gptq_cross_add",
      [d, ta, tb],
    );
    at += n;
  }
  return Float64Array.from(d.toArray() as Float32Array);
}

for (const device of ["cpu", "cuda"] as const) {
  Deno.test({
    name: `fp4_gptq_cross_add on ${device}: (2/n) A^T B within the f32 summation bound`,
    ignore: device === "cuda" && !cudaStatus().available,
    fn: async () => {
      // 200 features: a partial 128-wide tile on CUDA; A and B unrelated, so D is not symmetric.
      const cols = 200, batches = [700, 300], n = 1000;
      const a = problem(1, cols, n, 0.9, 0.1).e;
      const g = gaussian(seededRandom(seed + 7));
      const b = Float32Array.from({ length: n * cols }, () => g() * (1 + 3 * Math.random()));
      const got = await nativeCross(device, a, b, batches, cols);
      const want = crossOf(a, b, n, cols);
      const absSum = crossOf(a.map(Math.abs), b.map(Math.abs), n, cols);
      // f32 sums of `batch` products plus the running-mean merge, per entry:
      // (batch + 8) * 2^-24 * (2/n) sum_t |a_ti b_tj| + 8 * 2^-24 * |D_ij|.
      let worst = 0, asym = 0;
      for (let i = 0; i < cols * cols; i++) {
        const bound = (Math.max(...batches) + 8) * 2 ** -24 * absSum[i] +
          8 * 2 ** -24 * Math.abs(want[i]);
        worst = Math.max(worst, Math.abs(got[i] - want[i]) / bound);
        const t = (i % cols) * cols + Math.floor(i / cols);
        asym = Math.max(asym, Math.abs(got[i] - got[t]));
      }
      assert(worst <= 1, `error exceeds the f32 bound by ${worst} ${tag}`);
      assert(asym > 0, `D came out symmetric: the cross product was not computed ${tag}`);
    },
  });
}

Deno.test("fp4_gptq_cross_add: NaN and bad shapes fail and leave D untouched", async () => {
  const d0 = Float32Array.from({ length: 16 }, () => Math.random());
  using d = Tensor.from(d0.slice(), [4, 4]);
  using a = Tensor.from(new Float32Array([1, 2, NaN, 4]), [1, 4]);
  using b = Tensor.from(new Float32Array([1, 2, 3, 4]), [1, 4]);
  const call = (rows: bigint, cols: bigint) =>
    checkAsync(
      native().fp4_gptq_cross_add(0, d.pointer(), a.pointer(), b.pointer(), rows, cols, 1n),
      "fp4_gptq_cross_add",
      [d, a, b],
    );
  await assertRejects(() => call(1n, 4n), Error, "NaN or Inf");
  await assertRejects(() => call(0n, 4n), Error, "invalid shape");
  assert((d.toArray() as Float32Array).every((v, i) => v === d0[i]), "D changed");
});

Deno.test("AsymmetricTarget: W* equals the float64 least-squares solution from X and X~", async () => {
  const [rows, cols, n] = [6, 32, 400];
  const p = problem(rows, cols, n, 0.85, 0.2);
  const hq = hessianOf(p.xq, n, cols);
  const t = new AsymmetricTarget(Float32Array.from(hq), crossOf(p.e, p.xq, n, cols), cols, 0.01);
  const got = await t.apply(p.w, rows);
  // Normal equations of min (2/n)||X W^T - X~ Q^T||^2 + lambda ||Q - W||^2 from the raw data:
  // ((2/n) X~^T X~ + lambda I) Q^T = (2/n) X~^T X W^T + lambda W^T.
  const a = hq.slice();
  for (let j = 0; j < cols; j++) a[j * cols + j] += t.lambda;
  const xqx = crossOf(p.xq, p.x, n, cols);
  const rhs = new Float64Array(cols * rows);
  for (let i = 0; i < cols; i++) {
    for (let r = 0; r < rows; r++) {
      let s = t.lambda * p.w[r * cols + i];
      for (let j = 0; j < cols; j++) s += xqx[i * cols + j] * p.w[r * cols + j];
      rhs[i * rows + r] = s;
    }
  }
  const qt = solve(a, rhs, cols, rows);
  let scale = 0, err = 0;
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < cols; i++) {
      const want = qt[i * rows + r];
      scale = Math.max(scale, Math.abs(want));
      err = Math.max(err, Math.abs(got[r * cols + i] - want));
    }
  }
  // f32 products in D, G and W G: errors of a few 2^-24 times the condition of H~ + lambda I.
  assert(err < 1e-4 * scale, `max error ${err} against max |W*| ${scale} ${tag}`);
  // The 1/0.85 gain of X~ must be visible: W* is not W.
  let moved = 0;
  for (let i = 0; i < got.length; i++) moved = Math.max(moved, Math.abs(got[i] - p.w[i]));
  assert(moved > 0.05 * scale, `W* hardly differs from W (${moved}) ${tag}`);
});

Deno.test("asymmetric loss = const + tr((Q - W*)(H~ + lambda I)(Q - W*)^T) for any Q", async () => {
  const [rows, cols, n] = [4, 32, 300];
  const p = problem(rows, cols, n, 0.9, 0.15);
  const hq = hessianOf(p.xq, n, cols);
  const t = new AsymmetricTarget(hq, crossOf(p.e, p.xq, n, cols), cols, 0.01);
  const star = await t.apply(p.w, rows);
  const g = gaussian(seededRandom(seed + 2));
  const consts: number[] = [];
  let size = 0;
  for (let k = 0; k < 3; k++) {
    const q = p.w.map((v) => v + 0.05 * g());
    let tr = 0;
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < cols; i++) {
        for (let j = 0; j < cols; j++) {
          const h = hq[i * cols + j] + (i === j ? t.lambda : 0);
          tr += (q[r * cols + i] - star[r * cols + i]) * h * (q[r * cols + j] - star[r * cols + j]);
        }
      }
    }
    const loss = asymmetricLoss(p, q, t.lambda);
    size = Math.max(size, loss);
    consts.push(loss - tr);
  }
  const spread = Math.max(...consts) - Math.min(...consts);
  assert(spread < 1e-4 * size, `the constant moves by ${spread} (losses up to ${size}) ${tag}`);
});

Deno.test("GPTQ on (W*, H~) beats GPTQ on (W, H) in the asymmetric loss when X~ is off", async () => {
  const [rows, cols, n] = [16, 64, 512];
  const p = problem(rows, cols, n, 0.8, 0.1);
  const hq = hessianOf(p.xq, n, cols);
  const t = new AsymmetricTarget(hq, crossOf(p.e, p.xq, n, cols), cols, 0.01);
  const plain = await quantizeLayer(p.w, rows, cols, hessianOf(p.x, n, cols), {
    format: "nvfp4",
    method: "gptq",
  });
  const asym = await quantizeLayer(await t.apply(p.w, rows), rows, cols, hq, {
    format: "nvfp4",
    method: "gptq",
  });
  const lp = asymmetricLoss(p, plain.dequantized, 0);
  const la = asymmetricLoss(p, asym.dequantized, 0);
  // X~ = 0.8 X: plain GPTQ keeps W and its outputs 20% short; W* ~ W / 0.8 undoes that.
  assert(la < 0.5 * lp, `asymmetric ${la} vs plain ${lp} ${tag}`);
});
