// W4A16 linear layer (fp4Linear): the CPU twin against a float64 reference and against an
// exact emulation of its own f32 order; the CUDA kernels (when a GPU is usable) against both.
//
// Error bound, per output y[b, n] with float64 reference r = Σ x·W and A = Σ |x·W|:
//   |y − r| ≤ 2^-8·|r| + 1.01·γ·A,   γ = (k + 16)·2^-23.
// 2^-8 is bf16's unit roundoff (the one final rounding); γ covers f32 accumulation of k terms in
// any order (k·2^-24 for the sums, one more rounding per product on the CPU, the NVFP4 tensor
// scale applied after the sum on CUDA), doubled for tensor-core adders, which align operands
// with truncation. A wrong nibble order, scale or tile mapping gives errors of order |r|.
import { seededRandom as rng } from "../lib/random.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { check, native, NativeError } from "../ffi/library.ts";
import { cudaStatus, type Device } from "../lib/device.ts";
import { bf16ToF32, f32ToBf16 } from "../lib/dtype.ts";
import { decodeE2M1, decodeE4M3 } from "../lib/formats/minifloat.ts";
import { decodeE8M0 } from "../lib/formats/scales.ts";
import { Tensor } from "../lib/tensor.ts";
import {
  type Fp4GemmKernels,
  fp4GemmKernelSets,
  fp4GroupSize,
  fp4Linear,
  type Fp4WeightFormat,
  type Fp4Weights,
  setFp4GemmKernels,
} from "../lib/kernels/fp4_linear.ts";

const seed = (Math.random() * 2 ** 32) >>> 0;
const rand = rng(seed);
const tag = `(seed ${seed})`;

interface HostWeights {
  codes: Uint8Array;
  scales: Uint8Array;
  tensorScale: number;
  format: Fp4WeightFormat;
  n: number;
  k: number;
}

function randomWeights(format: Fp4WeightFormat, n: number, k: number): HostWeights {
  const group = fp4GroupSize(format);
  const codes = new Uint8Array(n * k / 2).map(() => rand() * 256);
  // Scales spread over a few binades (E8M0 2^-7 .. 2^8; E4M3 0x20 .. 0x5f = 2^-4 .. 30), and a
  // tensor scale that is not a power of two, so that fround(e4m3 * tensorScale) rounds.
  const scales = new Uint8Array(n * k / group).map(() =>
    format === "mxfp4" ? 120 + rand() * 16 : 0x20 + rand() * 0x40
  );
  const tensorScale = format === "nvfp4" ? Math.fround(2 ** -(rand() * 6) * (1 + rand())) : 1;
  return { codes, scales, tensorScale, format, n, k };
}

function randomX(batch: number, k: number): Uint16Array {
  // Sum of uniforms: roughly normal, with a few larger entries.
  return new Uint16Array(batch * k).map(() =>
    f32ToBf16((rand() + rand() + rand() - 1.5) * (rand() < 0.01 ? 20 : 1))
  );
}

function dequantize(w: HostWeights): Float32Array {
  const group = fp4GroupSize(w.format);
  const out = new Float32Array(w.n * w.k);
  for (let i = 0; i < w.n * w.k; i++) {
    const bits = w.scales[Math.floor(i / group)];
    const s = w.format === "mxfp4"
      ? decodeE8M0(bits)
      : Math.fround(decodeE4M3(bits) * w.tensorScale);
    out[i] = decodeE2M1((w.codes[i >> 1] >> ((i & 1) * 4)) & 15) * s;
  }
  return out;
}

/** Float64 reference r and absolute sum A of every output. */
function reference(x: Uint16Array, w: HostWeights, batch: number) {
  const wd = dequantize(w);
  const xf = Float64Array.from(x, bf16ToF32);
  const r = new Float64Array(batch * w.n), a = new Float64Array(batch * w.n);
  for (let b = 0; b < batch; b++) {
    for (let n = 0; n < w.n; n++) {
      let s = 0, abs = 0;
      for (let i = 0; i < w.k; i++) {
        const p = xf[b * w.k + i] * wd[n * w.k + i];
        s += p;
        abs += Math.abs(p);
      }
      r[b * w.n + n] = s;
      a[b * w.n + n] = abs;
    }
  }
  return { r, a };
}

function bound(r: number, a: number, k: number): number {
  return 2 ** -8 * Math.abs(r) + 1.01 * (k + 16) * 2 ** -23 * a;
}

function toDevice(w: HostWeights, device: Device): Fp4Weights {
  return {
    codes: Tensor.from(w.codes, [w.n, w.k / 2]).to(device),
    scales: Tensor.from(w.scales, [w.n, w.k / fp4GroupSize(w.format)]).to(device),
    tensorScale: w.format === "nvfp4" ? w.tensorScale : undefined,
    format: w.format,
    n: w.n,
    k: w.k,
  };
}

function run(device: Device, x: Uint16Array, w: HostWeights, batch: number): Uint16Array {
  const dw = toDevice(w, device);
  using xt = Tensor.from(x, [batch, w.k], "bf16").to(device);
  using y = fp4Linear(device, xt, dw);
  assertEquals(y.shape, [batch, w.n]);
  assertEquals(y.dtype, "bf16");
  const out = y.toArray() as Uint16Array;
  dw.codes.dispose();
  dw.scales.dispose();
  return out;
}

function checkAgainstReference(
  label: string,
  y: Uint16Array,
  x: Uint16Array,
  w: HostWeights,
  batch: number,
): { r: Float64Array; a: Float64Array } {
  const { r, a } = reference(x, w, batch);
  for (let i = 0; i < y.length; i++) {
    const v = bf16ToF32(y[i]);
    assert(Number.isFinite(v), `${label}: output ${i} is ${v} (unwritten?) ${tag}`);
    const err = Math.abs(v - r[i]), lim = bound(r[i], a[i], w.k);
    assert(
      err <= lim,
      `${label}: y[${Math.floor(i / w.n)}, ${i % w.n}] = ${v}, reference ${r[i]}, ` +
        `error ${err} > bound ${lim} ${tag}`,
    );
  }
  // The bound must be meaningful for these data: the results are far from zero.
  assert(r.some((v) => Math.abs(v) > 1), `${label}: degenerate test data ${tag}`);
  return { r, a };
}

const formats: Fp4WeightFormat[] = ["mxfp4", "nvfp4"];

for (const format of formats) {
  Deno.test(`cpu ${format}: fp4Linear matches float64 within the stated bound`, () => {
    for (const [batch, n, k] of [[1, 37, 256], [3, 64, 512], [16, 20, 96], [5, 9, 1024]]) {
      const w = randomWeights(format, n, k);
      const x = randomX(batch, k);
      checkAgainstReference(
        `cpu ${format} ${batch}x${n}x${k}`,
        run("cpu", x, w, batch),
        x,
        w,
        batch,
      );
    }
  });

  Deno.test(`cpu ${format}: the twin sums f32 products in ascending k, bit for bit`, () => {
    const [batch, n, k] = [2, 11, 192];
    const w = randomWeights(format, n, k);
    const x = randomX(batch, k);
    const y = run("cpu", x, w, batch);
    const wd = dequantize(w);
    for (let b = 0; b < batch; b++) {
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let i = 0; i < k; i++) {
          acc = Math.fround(acc + Math.fround(bf16ToF32(x[b * k + i]) * wd[j * k + i]));
        }
        assertEquals(y[b * n + j], f32ToBf16(acc), `y[${b}, ${j}] ${tag}`);
      }
    }
  });
}

if (cudaStatus().available) {
  for (const format of formats) {
    Deno.test(`cuda ${format}: kernels match the CPU twin and float64 on every batch path`, () => {
      // The candidate sets change only batches above 16.
      for (const set of fp4GemmKernelSets) {
        setFp4GemmKernels(set);
        try {
          checkCudaPaths(format, set);
        } finally {
          setFp4GemmKernels("v4");
        }
      }
    });
  }
} else {
  Deno.test("cuda: fp4Linear on a machine without a usable GPU is a clear Error", () => {
    const w = randomWeights("mxfp4", 4, 32);
    const x = Tensor.from(randomX(1, 32), [1, 32], "bf16");
    const dw = toDevice(w, "cpu");
    assertThrows(() => fp4Linear("cuda", x, dw), Error, "not usable");
  });
}

/** The CUDA kernels of `format` under kernel set `set` against float64 and the CPU twin. */
function checkCudaPaths(format: Fp4WeightFormat, set: Fp4GemmKernels): void {
  // (n, k): tile multiples, ragged rows, k tails inside a 128-chunk, (NVFP4) rows that are not
  // 16-byte aligned (k % 32 == 16), an odd number of 64-k stages (4160), and the dispatch cases
  // on the H100: n = 8192 (batch 1 on 32-row tiles), n = 13000 (batch 9..16 on narrow blocks,
  // ragged), n = 16384 (batch 33..64 on the tile kernel under v4), k = 49152 (batch 1 too long
  // for the activations in shared memory); batches on both sides of each kernel's batch tiles
  // (16 | 17..32 | 33..64 | 65..128 | more). The candidate sets differ from v4 only above 16.
  const shapes = [
    [64, 512],
    format === "mxfp4" ? [100, 96] : [100, 80],
    format === "mxfp4" ? [33, 1056] : [33, 1040],
    [256, 4096],
    [520, 4160],
    [8192, 64],
    [13000, 32],
    [16384, 64],
    [4, 49152],
  ];
  const batches = set === "v4"
    ? [1, 3, 8, 9, 16, 17, 33, 64, 100, 128, 200]
    : [17, 33, 64, 100, 128, 200];
  for (const [n, k] of shapes) {
    for (const batch of batches) {
      const w = randomWeights(format, n, k);
      const x = randomX(batch, k);
      const label = `${format} ${batch}x${n}x${k} (kernels ${set})`;
      const yc = run("cuda", x, w, batch);
      const { r, a } = checkAgainstReference(`cuda ${label}`, yc, x, w, batch);
      const yh = run("cpu", x, w, batch);
      for (let i = 0; i < yc.length; i++) {
        const d = Math.abs(bf16ToF32(yc[i]) - bf16ToF32(yh[i]));
        assert(d <= 2 * bound(r[i], a[i], k), `${label}: cuda vs cpu at ${i}: ${d} ${tag}`);
      }
    }
  }
}

Deno.test("the kernel set is validated on the TypeScript and the native side", () => {
  setFp4GemmKernels("lean");
  setFp4GemmKernels("v4");
  assertThrows(
    () => setFp4GemmKernels("fast" as Fp4GemmKernels),
    Error,
    'unknown kernel set "fast"; expected v4, lean, lean3',
  );
  const lib = native();
  for (const bad of [-1, 3]) {
    assertThrows(
      () => check(lib.fp4_gemm_set_kernels(bad), "fp4_gemm_set_kernels"),
      NativeError,
      `set ${bad} is not 0 (v4), 1 (lean) or 2 (lean3)`,
    );
  }
});

Deno.test("fp4Linear rejects bad input with Errors that name the problem", () => {
  const w = toDevice(randomWeights("nvfp4", 8, 64), "cpu");
  const x = Tensor.from(randomX(2, 64), [2, 64], "bf16");
  assertThrows(() => fp4Linear("cpu", x, { ...w, k: 80 }), Error, "needs");
  assertThrows(() => fp4Linear("cpu", x, { ...w, k: 40 }), Error, "not a multiple");
  assertThrows(() => fp4Linear("cpu", x, { ...w, format: "mxfp4" }), Error, "scales has 32 bytes");
  assertThrows(() => fp4Linear("cpu", x, { ...w, n: 9 }), Error, "needs");
  assertThrows(() => fp4Linear("cpu", x, { ...w, tensorScale: NaN }), Error, "tensor scale");
  assertThrows(() => fp4Linear("cpu", x, { ...w, tensorScale: -1 }), Error, "tensor scale");
  assertThrows(
    () => fp4Linear("cpu", x, { ...w, format: "int4" as Fp4WeightFormat }),
    Error,
    "unknown FP4 weight format",
  );
  assertThrows(
    () => fp4Linear("cpu", Tensor.from(randomX(2, 32), [2, 32], "bf16"), w),
    Error,
    "x must be [batch >= 1, k=64]",
  );
  assertThrows(
    () => fp4Linear("cpu", Tensor.from(new Float32Array(128), [2, 64]), w),
    Error,
    "x must be bf16",
  );
  assertThrows(
    () => fp4Linear("cpu", x, { ...w, codes: Tensor.from(new Int32Array(8 * 8), [8, 8]) }),
    Error,
    "codes must be u8",
  );
  const mx = toDevice(randomWeights("mxfp4", 8, 64), "cpu");
  assertThrows(() => fp4Linear("cpu", x, { ...mx, tensorScale: 2 }), Error, "no tensor scale");
});

Deno.test("fp4_gemm validates its arguments natively too", () => {
  const lib = native();
  const buf = new Uint8Array(4096);
  const p = Deno.UnsafePointer.of(buf);
  const call = (format: number, ts: number, b: number, n: number, k: number) =>
    check(lib.fp4_gemm(0, format, p, p, p, ts, p, BigInt(b), BigInt(n), BigInt(k)), "fp4_gemm");
  call(0, 1, 1, 4, 64); // valid
  assertThrows(() => call(0, 1, 1, 4, 48), NativeError, "not a multiple of the MXFP4 group");
  assertThrows(() => call(1, 1, 1, 4, 40), NativeError, "not a multiple of the NVFP4 group");
  assertThrows(() => call(2, 1, 1, 4, 64), NativeError, "format 2");
  assertThrows(() => call(1, 0, 1, 4, 64), NativeError, "tensor scale");
  assertThrows(() => call(0, 1, 0, 4, 64), NativeError, "must be >= 1");
  assertThrows(
    () => check(lib.fp4_gemm(0, 0, null, p, p, 1, p, 1n, 4n, 64n), "fp4_gemm"),
    NativeError,
    "null pointer",
  );
});

/** fp4_gemm_segments over the row-stacked `parts` into a [batch, Σ n] bf16 output. */
function runSegments(
  device: Device,
  x: Uint16Array,
  parts: HostWeights[],
  batch: number,
): Uint16Array {
  const cat = (f: (w: HostWeights) => Uint8Array) => {
    const all = new Uint8Array(parts.reduce((s, w) => s + f(w).length, 0));
    let at = 0;
    for (const w of parts) {
      all.set(f(w), at);
      at += f(w).length;
    }
    return all;
  };
  const n = parts.reduce((s, w) => s + w.n, 0), k = parts[0].k;
  const ends = new BigInt64Array(parts.length);
  parts.reduce((s, w, i) => (ends[i] = BigInt(s + w.n), s + w.n), 0);
  const scales = Float32Array.from(parts, (w) => w.tensorScale);
  using codes = Tensor.from(cat((w) => w.codes), [n * k / 2]).to(device);
  using sc = Tensor.from(cat((w) => w.scales), [n * k / fp4GroupSize(parts[0].format)]).to(device);
  using xt = Tensor.from(x, [batch, k], "bf16").to(device);
  // Poisoned with NaN: a row the kernel skips cannot pass for a result.
  using y = Tensor.from(new Uint16Array(batch * n).fill(0x7fc0), [batch, n], "bf16").to(device);
  check(
    native().fp4_gemm_segments(
      device === "cpu" ? 0 : 1,
      parts[0].format === "mxfp4" ? 0 : 1,
      xt.pointer(),
      codes.pointer(),
      sc.pointer(),
      scales,
      ends,
      parts.length,
      y.pointer(),
      BigInt(batch),
      BigInt(n),
      BigInt(k),
    ),
    "fp4_gemm_segments",
  );
  return y.toArray() as Uint16Array;
}

for (const format of formats) {
  for (const device of ["cpu", ...(cudaStatus().available ? ["cuda"] : [])] as Device[]) {
    Deno.test(`${device} ${format}: fp4_gemm_segments equals fp4_gemm per segment, bit for bit`, () => {
      // q/k/v-like segments (distinct NVFP4 tensor scales), k on the slot path and beyond the
      // aligned case; batches on each GEMV path.
      for (
        const [rows, k] of [[[64, 16, 16], 1024], [[48, 32], 96], [[8, 24, 40], 4096]] as const
      ) {
        const parts = rows.map((n) => randomWeights(format, n, k));
        for (const batch of [1, 3, 16]) {
          const x = randomX(batch, k);
          const y = runSegments(device, x, parts, batch);
          const n = rows.reduce((a, b) => a + b, 0);
          let row0 = 0;
          for (const w of parts) {
            const ys = run(device, x, w, batch);
            for (let b = 0; b < batch; b++) {
              for (let r = 0; r < w.n; r++) {
                assertEquals(
                  y[b * n + row0 + r],
                  ys[b * w.n + r],
                  `${rows} x ${k} batch ${batch}: y[${b}, ${row0 + r}] ${tag}`,
                );
              }
            }
            row0 += w.n;
          }
        }
      }
    });
  }
}

Deno.test("fp4_gemm_segments validates its segments", () => {
  const lib = native();
  const buf = new Uint8Array(4096);
  const p = Deno.UnsafePointer.of(buf);
  const call = (ends: number[], ts: number[], n: number, device = 0) =>
    check(
      lib.fp4_gemm_segments(
        device,
        1,
        p,
        p,
        p,
        new Float32Array(ts),
        BigInt64Array.from(ends, BigInt),
        ends.length,
        p,
        1n,
        BigInt(n),
        64n,
      ),
      "fp4_gemm_segments",
    );
  call([2, 4], [1, 0.5], 4); // valid
  assertThrows(() => call([], [], 4), NativeError, "0 segments");
  assertThrows(() => call([1, 2, 3, 4, 5], [1, 1, 1, 1, 1], 5), NativeError, "5 segments");
  assertThrows(() => call([2, 2], [1, 1], 2), NativeError, "not above 2");
  assertThrows(() => call([2, 3], [1, 1], 4), NativeError, "not at n = 4");
  assertThrows(() => call([2, 4], [1, 0], 4), NativeError, "tensor scale");
});
