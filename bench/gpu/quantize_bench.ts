/**
 * MR-GPTQ of a Llama-3-8B-shaped model with random weights on the GPU (issue 5's speed goal:
 * under 10 minutes on the H100, with its peak GPU memory): the sequential pipeline of
 * lib/pipeline with `device: "cuda"` (block forward passes, Hessians and GPTQ solves on the GPU)
 * over `--windows` calibration windows of 512 random tokens. With `--layers` below 32 the total
 * for 32 blocks is extrapolated from the measured per-block times (reported as such).
 * Peak memory is the device-wide use (total - free, cudaMemGetInfo) sampled at every progress
 * event, so it includes the CUDA context and allocator pools.
 *
 * Run on the GPU machine: `deno run -A bench/gpu/quantize_bench.ts --layers 2 --out DIR`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { cudaMemory, cudaStatus } from "../../lib/device.ts";
import { quantizeModel } from "../../lib/pipeline/quantize_model.ts";
import { gitCommit } from "../../lib/pipeline/manifest.ts";
import { llama8b, xorshift } from "./llama8b.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "bench/results/tmp" },
    layers: { type: "string", default: "32" },
    windows: { type: "string", default: "128" },
    format: { type: "string", default: "nvfp4" },
    "act-format": { type: "string", default: "nvfp4" },
  },
});
const status = cudaStatus();
if (!status.available) {
  console.error(`quantize_bench needs a GPU: ${status.reason}`);
  Deno.exit(1);
}
const LAYERS = Number(args.layers), WINDOWS = Number(args.windows);

const t0 = performance.now();
const model = llama8b(LAYERS);
const next = xorshift(12345);
const windows = Array.from(
  { length: WINDOWS },
  () => Int32Array.from({ length: 512 }, () => next() % model.config.vocabSize),
);
const build = (performance.now() - t0) / 1000;
console.log(`model (${LAYERS} layers) and ${WINDOWS} windows built in ${build.toFixed(1)} s`);

const idle = cudaMemory();
let peakUsed = idle.total - idle.free;
const blockSeconds: number[] = [];
let blockStart = performance.now();
const start = performance.now();
const q = await quantizeModel(model, windows, {
  format: args.format!,
  method: "mr-gptq",
  actFormat: args["act-format"] || null,
  device: "cuda",
  onProgress: (p) => {
    const m = cudaMemory();
    peakUsed = Math.max(peakUsed, m.total - m.free);
    if (p.stage === "calibrate" && p.done === 0 && p.block > 0) {
      blockSeconds.push((performance.now() - blockStart) / 1000);
      blockStart = performance.now();
    }
    if (p.done === p.total && p.stage !== "calibrate") {
      console.log(
        `block ${p.block} ${p.stage} done at ${((performance.now() - start) / 1000).toFixed(1)} s`,
      );
    }
  },
});
const seconds = (performance.now() - start) / 1000;
blockSeconds.push((performance.now() - blockStart) / 1000);
const perBlock = blockSeconds.reduce((a, b) => a + b, 0) / blockSeconds.length;
const result = {
  bench: "quantize",
  device: status.name,
  date: new Date().toISOString(),
  commit: Deno.env.get("GIT_COMMIT") ?? (await gitCommit()) ?? "unknown",
  model: "Llama-3-8B shapes, random bf16 weights",
  layers: LAYERS,
  calibrationWindows: WINDOWS,
  windowTokens: 512,
  method: "mr-gptq",
  format: args.format,
  actFormat: args["act-format"] || null,
  hadamard: q.hadamard,
  seconds,
  timings: q.timings,
  blockSeconds,
  estimatedSeconds32Blocks: LAYERS === 32 ? seconds : perBlock * 32,
  estimated: LAYERS !== 32,
  peakGpuBytes: peakUsed,
  idleGpuBytes: idle.total - idle.free,
  goal: "MR-GPTQ of the 8B shape under 600 s on the H100",
};
await Deno.mkdir(args.out!, { recursive: true });
await Deno.writeTextFile(`${args.out}/quantize.json`, JSON.stringify(result, null, 2) + "\n");
console.log(JSON.stringify(result));
