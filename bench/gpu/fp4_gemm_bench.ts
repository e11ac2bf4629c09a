/**
 * GPU benchmark of the W4A16 kernels (fp4Linear) on Llama-3 shapes, against the two yardsticks
 * of issue 6, both measured in the same run: the device-to-device copy bandwidth and BF16
 * cuBLAS (cublasGemmEx, loaded at run time: $FP4LAB_CUBLAS, else PyTorch's environment).
 *
 * Shapes are n x k = out x in features: 4096x4096 (8B q/o), 14336x4096 (8B up/gate),
 * 4096x14336 (8B down), 28672x8192 (70B up/gate) and 8192x28672 (70B down); batches 1, 16, 128;
 * MXFP4 and NVFP4. Every timing is the median of CUDA-event samples over graph-captured launches
 * that rotate through enough weight copies (>= 256 MB) that L2 (50 MB) cannot hold them.
 *
 * Usage: deno run -A bench/gpu/fp4_gemm_bench.ts --out DIR [--cublas PATH] [--quick]
 *   [--batches 1,16,128] [--shapes 28672x8192,4096x4096] [--kernels v4,lean,lean3]
 *   [--name fp4_gemm]
 * `--kernels` times each kernel set of `setFp4GemmKernels` (default: v4 alone) against the same
 * cuBLAS figure, in this process; the sets differ only above batch 16, so the others skip
 * batches up to 16. Writes DIR/NAME.json (device, date, commit, every figure) and prints a table
 * last.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { gitCommit } from "../../lib/pipeline/manifest.ts";
import { check, native } from "../../ffi/library.ts";
import { cudaStatus } from "../../lib/device.ts";
import { Tensor } from "../../lib/tensor.ts";
import {
  type Fp4GemmKernels,
  fp4GroupSize,
  type Fp4WeightFormat,
  setFp4GemmKernels,
} from "../../lib/kernels/fp4_linear.ts";

const ROTATE_BYTES = 256e6;
const SAMPLES = 15;

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "bench/results/tmp" },
    cublas: { type: "string" },
    quick: { type: "boolean", default: false },
    batches: { type: "string", default: "1,16,128" },
    shapes: { type: "string" },
    name: { type: "string", default: "fp4_gemm" },
    kernels: { type: "string", default: "v4" },
  },
});
const kernelSets = args.kernels!.split(",") as Fp4GemmKernels[];
if (kernelSets.length === 0 || new Set(kernelSets).size !== kernelSets.length) {
  console.error(`--kernels must list distinct kernel sets, got ${args.kernels}`);
  Deno.exit(1);
}

// The library reads $FP4LAB_CUBLAS when it first needs cuBLAS, after this.
if (args.cublas) Deno.env.set("FP4LAB_CUBLAS", args.cublas);
const status = cudaStatus();
if (!status.available) {
  console.error(`fp4_gemm_bench needs a GPU: ${status.reason}`);
  Deno.exit(1);
}
const lib = native();
for (const set of kernelSets) setFp4GemmKernels(set); // an unknown name fails before any timing

/** Fills `bytes` of device memory with random bytes mapped through `map`, one 64 KiB block at a time. */
function randomDevice(bytes: number, map: (b: Uint8Array) => void): Tensor {
  const host = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i += 65536) {
    const part = host.subarray(i, Math.min(bytes, i + 65536));
    crypto.getRandomValues(part);
    map(part);
  }
  return Tensor.from(host, [bytes]).to("cuda");
}

function median(xs: Float32Array): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function repsFor(ms: number): number {
  // About 20 ms of work per sample, at least 10 launches.
  return Math.max(10, Math.min(500, Math.round(20 / Math.max(ms, 1e-3))));
}

/**
 * Median milliseconds per launch from a timing entry point `bench(reps, nsamples, samples)`: one
 * sample of `copies` launches sizes the repetitions (~20 ms per sample), then SAMPLES samples.
 */
function medianMs(
  copies: number,
  bench: (reps: number, nsamples: number, samples: Float32Array) => number,
  name: string,
): number {
  const samples = new Float32Array(SAMPLES);
  check(bench(copies, 1, samples), name);
  check(bench(Math.max(copies, repsFor(samples[0])), SAMPLES, samples), name);
  return median(samples);
}

function timeOurs(
  format: Fp4WeightFormat,
  x: Tensor,
  codes: Tensor,
  scales: Tensor,
  y: Tensor,
  batch: number,
  n: number,
  k: number,
  copies: number,
): number {
  const f = format === "mxfp4" ? 0 : 1;
  const [px, pc, ps, py] = [x.pointer(), codes.pointer(), scales.pointer(), y.pointer()];
  const [B, N, K] = [BigInt(batch), BigInt(n), BigInt(k)];
  return medianMs(
    copies,
    (reps, ns, out) => lib.fp4_gemm_bench(f, px, pc, ps, 0.5, py, B, N, K, copies, reps, ns, out),
    "fp4_gemm_bench",
  );
}

function timeCublas(
  x: Tensor,
  w: Tensor,
  y: Tensor,
  batch: number,
  n: number,
  k: number,
  copies: number,
): number {
  const [px, pw, py] = [x.pointer(), w.pointer(), y.pointer()];
  const [B, N, K] = [BigInt(batch), BigInt(n), BigInt(k)];
  return medianMs(
    copies,
    (reps, ns, out) => lib.fp4_cublas_bench(px, pw, py, B, N, K, copies, reps, ns, out),
    "fp4_cublas_bench",
  );
}

function copyBandwidth(): { bytes: number; ms: number; gbs: number } {
  const bytes = 512 * 2 ** 20;
  using src = Tensor.empty([bytes], "u8", "cuda");
  using dst = Tensor.empty([bytes], "u8", "cuda");
  const samples = new Float32Array(SAMPLES);
  check(
    lib.fp4_copy_bench(dst.pointer(), src.pointer(), BigInt(bytes), 10, SAMPLES, samples),
    "fp4_copy_bench",
  );
  const ms = median(samples);
  // A copy reads and writes every byte.
  return { bytes, ms, gbs: (2 * bytes) / (ms * 1e6) };
}

// The GPU machine runs a copy of a snapshot whose enclosing folder may hold another checkout's
// .git: the commit the caller names wins.
async function commitOfRun(): Promise<string> {
  return Deno.env.get("GIT_COMMIT") ?? (await gitCommit()) ?? "unknown";
}

interface Row {
  kernels: Fp4GemmKernels;
  format: Fp4WeightFormat;
  n: number;
  k: number;
  batch: number;
  ms: number;
  bytes: number;
  gbs: number;
  fractionOfCopy: number;
  cublasMs: number | null;
  speedup: number | null;
  goal: string;
  pass: boolean | null;
}

const llamaShapes: [number, number][] = [
  [4096, 4096],
  [14336, 4096],
  [4096, 14336],
  [28672, 8192],
  [8192, 28672],
];
const shapes: [number, number][] = args.shapes
  ? args.shapes.split(",").map((s) => s.split("x").map(Number) as [number, number])
  : args.quick
  ? [[4096, 4096]]
  : llamaShapes;
const validShape = (s: number[]) =>
  s.length === 2 && s.every((d) => Number.isInteger(d) && d >= 1) && s[1] % 32 === 0;
if (!shapes.every(validShape)) {
  console.error(`--shapes must list NxK pairs (integers, K a multiple of 32), got ${args.shapes}`);
  Deno.exit(1);
}
const batches = args.batches!.split(",").map(Number);
if (!batches.every((b) => Number.isInteger(b) && b >= 1)) {
  console.error(`--batches must list integers >= 1, got ${args.batches}`);
  Deno.exit(1);
}
const formats: Fp4WeightFormat[] = ["mxfp4", "nvfp4"];

const copy = copyBandwidth();
console.log(`${status.name}: device-to-device copy ${copy.gbs.toFixed(0)} GB/s`);
const rows: Row[] = [];
let cublasError: string | null = null;

for (const [n, k] of shapes) {
  const maxBatch = Math.max(...batches);
  using x = randomDevice(maxBatch * k * 2, (b) => {
    // bf16 in [-2, 2): sign, exponent 2^-7 .. 2^0, random mantissa (little-endian pairs).
    for (let i = 1; i < b.length; i += 2) b[i] = (b[i] & 0x80) | (0x3c + (b[i] & 3));
  });
  using y = Tensor.empty([maxBatch * n], "bf16", "cuda");
  const cublasMs = new Map<number, number | null>();
  {
    const wBytes = n * k * 2;
    const copies = Math.max(1, Math.ceil(ROTATE_BYTES / wBytes));
    using w = randomDevice(copies * wBytes, (b) => {
      for (let i = 1; i < b.length; i += 2) b[i] = (b[i] & 0x80) | (0x3c + (b[i] & 3));
    });
    for (const batch of batches) {
      try {
        cublasMs.set(batch, cublasError ? null : timeCublas(x, w, y, batch, n, k, copies));
      } catch (e) {
        cublasError = (e as Error).message;
        console.error(`cuBLAS baseline unavailable: ${cublasError}`);
        cublasMs.set(batch, null);
      }
    }
  }
  for (const format of formats) {
    const group = fp4GroupSize(format);
    const codeBytes = n * k / 2, scaleBytes = n * k / group;
    const copies = Math.max(1, Math.ceil(ROTATE_BYTES / (codeBytes + scaleBytes)));
    using codes = randomDevice(copies * codeBytes, () => {});
    using scales = randomDevice(copies * scaleBytes, (b) => {
      // Scales a quantiser would produce: E8M0 near 2^0, E4M3 between 2^-4 and 30.
      for (let i = 0; i < b.length; i++) {
        b[i] = format === "mxfp4" ? 120 + (b[i] & 15) : 0x20 + (b[i] & 0x3f);
      }
    });
    for (const [set, batch] of kernelSets.flatMap((s) => batches.map((b) => [s, b] as const))) {
      if (set !== "v4" && batch <= 16) continue;
      setFp4GemmKernels(set);
      const ms = timeOurs(format, x, codes, scales, y, batch, n, k, copies);
      const bytes = codeBytes + scaleBytes + batch * k * 2 + batch * n * 2;
      const gbs = bytes / (ms * 1e6);
      const base = cublasMs.get(batch) ?? null;
      const speedup = base === null ? null : base / ms;
      const goal = batch === 1
        ? ">= 85% of copy bandwidth and >= 3.2x cuBLAS"
        : batch === 16
        ? ">= 2.5x cuBLAS"
        : ">= 1x cuBLAS";
      const need = batch === 1 ? 3.2 : batch === 16 ? 2.5 : 1;
      const pass = speedup === null
        ? null
        : speedup >= need && (batch !== 1 || gbs / copy.gbs >= 0.85);
      rows.push({
        kernels: set,
        format,
        n,
        k,
        batch,
        ms,
        bytes,
        gbs,
        fractionOfCopy: gbs / copy.gbs,
        cublasMs: base,
        speedup,
        goal,
        pass,
      });
    }
  }
}

const result = {
  benchmark: "fp4_gemm",
  device: status.name,
  date: new Date().toISOString(),
  commit: await commitOfRun(),
  method: "median of CUDA-event samples over graph-captured launches rotating through " +
    `>= ${
      ROTATE_BYTES / 1e6
    } MB of weight copies; bandwidth = (codes + scales + x + y bytes) / time; ` +
    "copy bandwidth = 2 x bytes / time of a 512 MiB cudaMemcpyAsync D2D",
  copy,
  cublas: { path: args.cublas, error: cublasError, call: "cublasGemmEx BF16 in/out, COMPUTE_32F" },
  results: rows,
};
await Deno.mkdir(args.out!, { recursive: true });
const file = `${args.out}/${args.name}.json`;
await Deno.writeTextFile(file, JSON.stringify(result, null, 2) + "\n");

const fmt = (v: number | null, d = 2) => v === null ? "-" : v.toFixed(d);
console.log(`\nwrote ${file}`);
console.log(
  "kernels format  n x k          batch   ours ms  cuBLAS ms  speedup  GB/s   %copy  goal",
);
for (const r of rows) {
  console.log(
    [
      r.kernels.padEnd(7),
      r.format.padEnd(7),
      `${r.n}x${r.k}`.padEnd(14),
      String(r.batch).padStart(5),
      fmt(r.ms, 4).padStart(9),
      fmt(r.cublasMs, 4).padStart(10),
      fmt(r.speedup).padStart(8),
      r.gbs.toFixed(0).padStart(6),
      (100 * r.fractionOfCopy).toFixed(1).padStart(6),
      r.pass === null ? "?" : r.pass ? "met" : "MISSED",
    ].join(" "),
  );
}
