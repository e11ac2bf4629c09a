// %% [markdown]
// # FP4 kernels on the H100: recorded benchmarks
//
// This notebook draws the figures recorded by `bench/gpu/fp4_gemm_bench.ts` on the H100 (the
// W4A16 FP4-weight GEMV/GEMM against cuBLAS BF16, same run) and by `bench/gpu/formats_bench.ts`
// (quantization and fused rotate + quantize). It reads the committed result files only, so it
// runs anywhere, GPU or not; run the drivers on a GPU machine (`scripts/gpu.sh bench`) and commit
// their JSON to update it.
// %%
import * as Plot from "@observablehq/plot";
import { DOMParser } from "linkedom";
const document = new DOMParser().parseFromString("<!DOCTYPE html><html></html>", "text/html");
// The kernel runs in this folder (notebooks/).
const results = "../bench/results/";
// The latest of each kernel: the v3 GEMV (batches 1 and 16) and the wgmma GEMM's own run (batches
// 32, 64, 128; every batch on the new kernel). Earlier versions: fp4_gemm-h100-2026-11-23{,-v2}.json.
const gemv = JSON.parse(await Deno.readTextFile(results + "fp4_gemm-h100-2026-11-23-v3.json"));
const wgmma = JSON.parse(await Deno.readTextFile(results + "fp4_gemm128-h100-2026-11-23.json"));
const gemm = { ...gemv, results: [...gemv.results, ...wgmma.bench.results] };
interface GemmRow {
  format: string;
  n: number;
  k: number;
  batch: number;
  ms: number;
  gbs: number;
  fractionOfCopy: number;
  cublasMs: number;
  speedup: number;
}
const rows: (GemmRow & { shape: string })[] = gemm.results.map((r: GemmRow) => ({
  ...r,
  shape: `${r.n}x${r.k}`,
}));
if (rows.length === 0) throw new Error("no GEMM results in the recorded file");
({
  device: gemm.device,
  dates: [gemv.date, wgmma.bench.date],
  commits: [gemv.commit, wgmma.bench.commit],
  copyGBs: [Math.round(gemv.copy.gbs), Math.round(wgmma.bench.copy.gbs)],
  rows: rows.length,
});
// %% [markdown]
// ## Speedup over BF16 cuBLAS by batch size
//
// Each point is our kernel's median time over cuBLAS's on the same shape and batch, measured in
// the same run. The dashed lines are the goals: 3.2x at batch 1, 2.5x at batch 16, and
// parity (1x) at batch 128. Weight-only FP4 moves about a quarter of BF16's bytes, so the ideal
// at small batch is near 3.6-3.8x.
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
    Plot.line(rows, { x: "batch", y: "speedup", stroke: "shape", fx: "format" }),
    Plot.dot(rows, { x: "batch", y: "speedup", fill: "shape", fx: "format" }),
  ],
});
// %% [markdown]
// ## Fraction of the device-to-device copy bandwidth
//
// Bytes moved (packed codes, scales, activations, outputs) over time, as a fraction of the
// copy bandwidth measured in the same run. The goal at batch 1 is 85%.
// %%
Plot.plot({
  document,
  width: 760,
  marginLeft: 90,
  x: { label: "fraction of copy bandwidth", domain: [0, 1], grid: true },
  y: { label: null },
  color: { legend: true },
  fy: { label: "batch" },
  marks: [
    Plot.ruleX([0.85], { strokeDasharray: "4,3", stroke: "gray" }),
    Plot.barX(rows, { y: "shape", x: "fractionOfCopy", fill: "format", fy: "batch" }),
  ],
});
// %% [markdown]
// ## Quantization kernels
//
// Quantizing an 8192 x 8192 BF16 tensor, and the fused block-Hadamard-128 rotate + quantize, as
// a fraction of the copy bandwidth (goal 80%), through the versions of the kernels.
// %%
interface FormatsRow {
  device: string;
  op: string;
  spec: string | null;
  fractionOfCopy: number;
}
const versions = [
  ["baseline", "formats-h100-2026-11-23.json"],
  ["v1", "formats-h100-2026-11-23-v1.json"],
  ["v2", "formats-h100-2026-11-23-v2.json"],
  ["v3", "formats-h100-2026-11-23-v3.json"],
] as const;
const formats = (await Promise.all(versions.map(async ([version, file]) => {
  const d = JSON.parse(await Deno.readTextFile(results + file));
  return (d.results as FormatsRow[])
    .filter((r) => r.device === "cuda" && r.op !== "copy")
    .map((r) => ({ ...r, version, what: `${r.op} ${r.spec}` }));
}))).flat();
if (formats.length === 0) throw new Error("no CUDA rows in the formats results");
Plot.plot({
  document,
  width: 760,
  marginLeft: 180,
  x: { label: "fraction of copy bandwidth", domain: [0, 1], grid: true },
  y: { label: null },
  color: { legend: true },
  marks: [
    Plot.ruleX([0.8], { strokeDasharray: "4,3", stroke: "gray" }),
    Plot.barX(formats, { y: "what", x: "fractionOfCopy", fill: "version", fy: "version" }),
  ],
});
// %% [markdown]
// ## End-to-end decoding of a Llama-3-8B-shaped model
//
// `bench/gpu/decode_bench.ts`: batch-1 greedy decoding (64 tokens after a 16-token prompt) with
// random weights, BF16 against MXFP4 and NVFP4 weights on the same engine, with and without CUDA
// graphs, in the latest recorded run (decode kernels v2 with the v3 GEMV); the dashed line is the
// goal (FP4 at 2.5x our BF16 path). The PyTorch/transformers `generate` reference, measured in the
// first recorded run, is printed below the plot.
// %%
const decode = JSON.parse(await Deno.readTextFile(results + "decode-h100-2026-11-23-v3.json"));
const first = JSON.parse(await Deno.readTextFile(results + "decode-h100-2026-11-23.json"));
interface DecodeRun {
  weights: string;
  graphs: boolean;
  decodeTokS: number;
}
const decodeRuns = (decode.runs as DecodeRun[]).map((r) => ({
  ...r,
  mode: r.graphs ? "CUDA graph" : "eager launches",
}));
if (decodeRuns.length === 0) throw new Error("no decode runs in the recorded file");
const bf16 = decodeRuns.find((r) => r.weights === "bf16" && r.graphs)!.decodeTokS;
Plot.plot({
  document,
  width: 760,
  marginLeft: 60,
  x: { label: "decode tokens/s (batch 1)", grid: true },
  y: { label: null },
  color: { legend: true },
  marks: [
    Plot.ruleX([2.5 * bf16], { strokeDasharray: "4,3", stroke: "gray" }),
    Plot.barX(decodeRuns, { y: "weights", x: "decodeTokS", fill: "mode", fy: "mode" }),
  ],
});
// %%
({
  device: decode.device,
  commit: decode.commit,
  pytorchGenerateTokS: Number(first.torch.tokens_per_s.toFixed(1)),
  fp4OverBf16: Number((Math.max(...decodeRuns.filter((r) => r.weights !== "bf16").map((r) => r.decodeTokS)) / bf16).toFixed(2)),
});
