// %% [markdown]
// # FP4 kernels on the H100: recorded benchmarks
//
// This notebook draws the figures recorded on the H100 by the GPU drivers in `bench/gpu/`: the
// W4A16 FP4-weight GEMV/GEMM against BF16 cuBLAS (same run), quantization and the fused rotate +
// quantize against the device-to-device copy (same run), and end-to-end decoding of a
// Llama-3-8B-shaped model. It reads the committed result files only, so it runs anywhere, GPU or
// not; run the drivers on a GPU machine (`scripts/gpu.sh bench`) and commit their JSON to update
// it. `bench/notes/*.md` tell the story behind each file.
// %%
import * as Plot from "@observablehq/plot";
import { DOMParser } from "linkedom";
const document = new DOMParser().parseFromString("<!DOCTYPE html><html></html>", "text/html");
// The kernel runs in this folder (notebooks/).
const results = "../bench/results/";
const read = async (file: string) => JSON.parse(await Deno.readTextFile(results + file));
// %% [markdown]
// ## The latest measurement of each batch size
//
// - Batches 1 and 16: `fp4_gemm-h100-2026-12-07.json`, the library's GEMV as measured by
//   `bench/gpu/fp4_gemm_bench.ts` (batch 16 on the staged GEMV where n >= 3 x 132 SMs x 32 rows,
//   else the v3 GEMV). The variant sweep behind that dispatch is in
//   `fp4_gemm-h100-2026-12-06-v4.json`.
// - Batches 32, 64 and 128: `fp4_gemm128-h100-2026-12-06-v2.json`, the kernels the library
//   dispatches (the TMA warpgroup-MMA kernel; the mma.sync tile kernel at batch 64 when
//   n >= 16384), measured with cuBLAS in the same process.
// %%
interface GemmRow {
  format: string;
  shape: string;
  batch: number;
  us: number;
  cublasUs: number;
  speedup: number;
  fractionOfCopy: number | null;
}
const gemv = await read("fp4_gemm-h100-2026-12-07.json");
const gemm = await read("fp4_gemm128-h100-2026-12-06-v2.json");
interface BenchRow {
  format: string;
  n: number;
  k: number;
  batch: number;
  ms: number;
  cublasMs: number;
  fractionOfCopy: number;
}
const small: GemmRow[] = (gemv.results as BenchRow[]).map((r) => ({
  format: r.format,
  shape: `${r.n}x${r.k}`,
  batch: r.batch,
  us: r.ms * 1e3,
  cublasUs: r.cublasMs * 1e3,
  speedup: r.cublasMs / r.ms,
  fractionOfCopy: r.fractionOfCopy,
}));
const batch1 = small.filter((r) => r.batch === 1);
interface GemmTiming {
  format: string;
  n: number;
  k: number;
  batch: number;
  cublas_us: number;
  [variant: string]: number | string;
}
const larger: GemmRow[] = (gemm.timings as GemmTiming[]).map((t) => {
  const variant = t.batch === 64 && t.n >= 16384 ? "tile_wide_us" : `v4_n${t.batch}_us`;
  const us = t[variant] as number;
  return {
    format: t.format,
    shape: `${t.n}x${t.k}`,
    batch: t.batch,
    us,
    cublasUs: t.cublas_us,
    speedup: t.cublas_us / us,
    fractionOfCopy: null,
  };
});
const rows = [...small, ...larger];
for (const b of [1, 16, 32, 64, 128]) {
  if (!rows.some((r) => r.batch === b)) throw new Error(`no recorded result for batch ${b}`);
}
({
  device: gemv.device,
  copyGBs: Math.round(gemv.copy.gbs),
  rows: rows.length,
  commits: [gemv.commit, gemm.commit],
});
// %% [markdown]
// ## Speedup over BF16 cuBLAS by batch size
//
// Each point is cuBLAS's median time over our kernel's on the same shape and batch. The dashed
// lines are the goals: 3.2x at batch 1, 2.5x at batch 16, and parity (1x) at batch 128.
// Weight-only FP4 moves about a quarter of BF16's bytes, so the ideal at batch 1 is near
// 3.6-3.8x; by batch 128 the product is compute-bound and the dequantization in registers costs
// tensor-core issue slots that cuBLAS spends on MMA.
// %%
Plot.plot({
  document,
  width: 760,
  x: { type: "log", label: "batch", ticks: [1, 16, 32, 64, 128] },
  y: { type: "log", label: "speedup vs cuBLAS BF16", grid: true },
  color: { legend: true },
  facet: { data: rows, x: "format" },
  marks: [
    Plot.ruleY([1]),
    Plot.ruleY([3.2, 2.5], { strokeDasharray: "4,3", stroke: "gray" }),
    Plot.line(rows, { x: "batch", y: "speedup", stroke: "shape", fx: "format", sort: "batch" }),
    Plot.dot(rows, { x: "batch", y: "speedup", fill: "shape", fx: "format" }),
  ],
});
// %%
console.log(rows
  .filter((r) => r.batch === 1 || r.batch === 16 || r.batch === 128)
  .map((r) => `${r.format} ${r.shape.padEnd(11)} batch ${String(r.batch).padStart(3)}: ` +
    `${r.us.toFixed(1).padStart(6)} us vs cuBLAS ${r.cublasUs.toFixed(1).padStart(6)} us = ` +
    `${r.speedup.toFixed(2)}x`)
  .join("\n"));
// %% [markdown]
// ## Batch 1: fraction of the device-to-device copy bandwidth
//
// Bytes moved (packed codes, scales, activations, outputs) over time, as a fraction of the copy
// bandwidth measured in the same run. The goal is 85%. A GEMV only reads, and reads alone can go
// somewhat faster than a copy that reads and writes, so the largest shapes pass 100%.
// %%
Plot.plot({
  document,
  width: 760,
  marginLeft: 90,
  x: { label: "fraction of copy bandwidth", grid: true },
  y: { label: null },
  color: { legend: true },
  marks: [
    Plot.ruleX([0.85], { strokeDasharray: "4,3", stroke: "gray" }),
    Plot.barX(batch1, { y: "shape", x: "fractionOfCopy", fill: "format", fy: "format" }),
  ],
});
// %% [markdown]
// ## Quantization kernels
//
// Quantizing an 8192 x 8192 BF16 tensor, and the fused block-Hadamard-128 rotate + quantize, as
// a fraction of the copy bandwidth (goal 80%), through the versions of the kernels. The
// 2026-12-06 file ran the earlier encoder ("old") and the current one ("min") in one process,
// twice; each pass of the current one is shown. Since 2026-12-07 NVFP4 also runs with a given
// tensor scale (`nvfp4:ts=...`, a calibrated activation scale: one read of the input, where the
// amax scale needs two; its bytes count the one read). In the 2026-12-07 v3 run the four goal
// rows (NVFP4 with its amax tensor scale and MXFP4, quantize and rotate + quantize) are all at or
// above 80%, after the amax pass of the rotation got its own kernel (bench/notes/formats.md,
// version 6); rotate + quantize with a given NVFP4 scale is at 70%.
// %%
interface FormatsRow {
  device: string;
  encoder?: string;
  op: string;
  spec: string | null;
  fractionOfCopy: number;
}
const versions = [
  ["2026-11-23 baseline", "formats-h100-2026-11-23.json"],
  ["2026-11-23 v1", "formats-h100-2026-11-23-v1.json"],
  ["2026-11-23 v2", "formats-h100-2026-11-23-v2.json"],
  ["2026-11-23 v3", "formats-h100-2026-11-23-v3.json"],
  ["2026-12-06", "formats-h100-2026-12-06.json"],
  ["2026-12-07", "formats-h100-2026-12-07.json"],
  ["2026-12-07 v2", "formats-h100-2026-12-07-v2.json"],
  ["2026-12-07 v3", "formats-h100-2026-12-07-v3.json"],
] as const;
const formats = (await Promise.all(versions.map(async ([version, file]) => {
  const d = await read(file);
  return (d.results as FormatsRow[])
    .filter((r) => r.device === "cuda" && r.op !== "copy" && (r.encoder ?? "min") === "min")
    .map((r) => ({
      ...r,
      version,
      what: `${r.op} ${r.spec?.startsWith("nvfp4:ts=") ? "nvfp4 given s_t" : r.spec}`,
    }));
}))).flat();
if (!formats.some((r) => r.version === "2026-12-07 v3")) {
  throw new Error("no CUDA rows in formats-h100-2026-12-07-v3.json");
}
Plot.plot({
  document,
  width: 760,
  marginLeft: 180,
  x: { label: "fraction of copy bandwidth", domain: [0, 1], grid: true },
  y: { label: null },
  color: { legend: true },
  marks: [
    Plot.ruleX([0.8], { strokeDasharray: "4,3", stroke: "gray" }),
    Plot.dot(formats, { y: "what", x: "fractionOfCopy", fill: "version", r: 4 }),
  ],
});
// %% [markdown]
// ## End-to-end decoding of a Llama-3-8B-shaped model
//
// `bench/gpu/decode_bench.ts` (`decode-h100-2026-12-07-v2.json`): batch-1 greedy decoding (128
// tokens after a 16-token prompt) with random weights and CUDA graphs, BF16 against MXFP4 and
// NVFP4 weights on the same engine with the fused decode kernels (q/k/v and gate/up in one GEMV,
// residual add inside RMSNorm). Each step's token is chosen on the device, feeding the next step
// without a host round trip (`device`, what `generate` does), or on the host after every step
// (`host`). The dashed line is the goal: FP4 at 2.5x our BF16 path with the device loop. The
// PyTorch/transformers `generate` reference was measured in the first recorded run and is printed
// below.
// %%
const decode = await read("decode-h100-2026-12-07-v2.json");
const first = await read("decode-h100-2026-11-23.json");
interface DecodeRun {
  weights: string;
  loop: string;
  decodeTokS: number;
  engineBytes: number;
  checkpointBytes: number;
}
const decodeRuns = decode.runs as DecodeRun[];
const bf16 = decodeRuns.find((r) => r.weights === "bf16" && r.loop === "device");
if (!bf16) throw new Error("no BF16 run with the device loop in the recorded decode file");
Plot.plot({
  document,
  width: 760,
  marginLeft: 60,
  x: { label: "decode tokens/s (batch 1)", grid: true },
  y: { label: null },
  color: { legend: true },
  marks: [
    Plot.ruleX([2.5 * bf16.decodeTokS], { strokeDasharray: "4,3", stroke: "gray" }),
    Plot.barX(decodeRuns, { y: "weights", x: "decodeTokS", fill: "loop", fy: "loop" }),
  ],
});
// %%
({
  device: decode.device,
  commit: decode.commit,
  pytorchGenerateTokS: Number(first.torch.tokens_per_s.toFixed(1)),
  fp4OverBf16: Object.fromEntries(
    decodeRuns.filter((r) => r.weights !== "bf16" && r.loop === "device")
      .map((r) => [r.weights, Number((r.decodeTokS / bf16.decodeTokS).toFixed(2))]),
  ),
  gpuGiB: Object.fromEntries(
    decodeRuns.filter((r) => r.loop === "device").map((r) => [r.weights, Number((r.engineBytes / 2 ** 30).toFixed(2))]),
  ),
});
