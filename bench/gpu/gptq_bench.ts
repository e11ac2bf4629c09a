// GPTQ on CUDA per Llama-3-8B layer shape (out x in): Hessian accumulation of 128 batches of
// 2048 calibration tokens (f32 SYRK kernel, X resident on the device: four distinct random
// batches cycled) and the solve (MXFP4 static scales, act-order, blocks of 128), timed two ways:
// - solveSeconds: W, H and the scales already on the device and Q and the codes left there, as
//   the PyTorch baseline has them: a device-to-device clone of W (the baseline clones too) and
//   gptqSolveInPlace. The clone's target and the codes are allocated before the clock starts
//   (a Tensor's device allocation is initialised from the host); the solve's own scratch
//   buffers are allocated inside it, timed. This is the time compared with PyTorch.
// - solveHostArraysSeconds: gptqSolveNative on host Float32Arrays, returning host arrays: W, H
//   and the scales uploaded, the codes and Q downloaded (what quantizeLayer pays per layer).
// Both include the f64 Cholesky + triangular inverse (cuSOLVER on the GPU when it loads, else on
// the host after H's download: `factorization` in the JSON says which), reported apart with the
// GPU column loop; solveDeviceMatchesHost says the two paths gave the same codes. Small solves
// of both paths first warm the kernels up, as the PyTorch baseline does.
// Runs bench/gpu/gptq_torch_baseline.py in the same run when python3 with torch is there and
// reports our/torch time ratios. Hessian throughput is given as GEMM-equivalent flops
// 2 * tokens * in^2 / t (the kernel computes the lower triangle of tiles, about half of that)
// against the FP32 non-tensor peak of the device: 66.9 TFLOP/s for H100 SXM (51.2 for PCIe).
//
//   deno run -A bench/gpu/gptq_bench.ts --out DIR [--shapes 4096x4096,...] [--batches 128]
import { parseArgs } from "node:util";
import { cudaStatus } from "../../lib/device.ts";
import { Tensor } from "../../lib/tensor.ts";
import { Hessian } from "../../lib/gptq/hessian.ts";
import { gptqSolveInPlace, gptqSolveNative } from "../../lib/gptq/native.ts";
import { descendingOrder } from "../../lib/gptq/reference.ts";
import { chooseGroupScales } from "../../lib/formats/quantize.ts";
import { gaussian, seededRandom } from "../../lib/random.ts";
import { check, native } from "../../ffi/library.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string" },
    shapes: { type: "string", default: "4096x4096,1024x4096,14336x4096,4096x14336" },
    tokens: { type: "string", default: "2048" },
    batches: { type: "string", default: "128" },
    torch: { type: "boolean", default: true },
  },
});
if (!values.out) throw new Error("usage: gptq_bench.ts --out DIR [--shapes OxI,...]");
const status = cudaStatus();
if (!status.available) throw new Error(`gptq_bench needs CUDA: ${status.reason}`);
const tokens = Number(values.tokens), batches = Number(values.batches);
const shapes = values.shapes.split(",").map((s) => s.split("x").map(Number) as [number, number]);
const peak = /pcie/i.test(status.name ?? "") ? 51.2e12 : 66.9e12;

function commit(): string {
  // The GPU machine's copy may sit inside another checkout: the commit the caller names wins.
  const env = Deno.env.get("GIT_COMMIT");
  if (env) return env;
  try {
    const r = new Deno.Command("git", { args: ["rev-parse", "HEAD"], stderr: "null" }).outputSync();
    if (r.success) return new TextDecoder().decode(r.stdout).trim();
  } catch { /* no git on the machine */ }
  return "unknown";
}

interface Row {
  out: number;
  in: number;
  hessianSeconds: number;
  hessianTflops: number;
  hessianFractionOfPeak: number;
  solveSeconds: number;
  solveFactorSeconds: number;
  solveLoopSeconds: number;
  solveHostArraysSeconds: number;
  solveDeviceMatchesHost: boolean;
  torchHessianSeconds?: number;
  torchSolveSeconds?: number;
  hessianRatioOursOverTorch?: number;
  solveRatioOursOverTorch?: number;
  solveHostArraysRatioOursOverTorch?: number;
}

const D2D = 2;

/** Device-resident solve: clone W into `work` on the device, then solve in place. */
async function solveOnDevice(
  w: Tensor,
  work: Tensor,
  h: Tensor,
  codes: Tensor,
  rows: number,
  cols: number,
  scales: Tensor,
  order?: Int32Array,
) {
  check(
    native().fp4_memcpy(1, work.pointer(), w.pointer(), BigInt(w.byteLength), D2D),
    "fp4_memcpy",
  );
  return await gptqSolveInPlace(work, h, codes, rows, cols, {
    scales,
    groupSize: 32,
    element: "e2m1",
    order,
  });
}

const why = new Uint8Array(1024);
const onGpu = native().fp4_cusolver_status(why, why.length) === 1;
const where = new TextDecoder().decode(why.subarray(0, why.indexOf(0)));
const factorization = onGpu ? `gpu (cuSOLVER ${where})` : `host (${where})`;
console.log(`factorization: ${factorization}`);

const g = gaussian(seededRandom(1));
{
  const n = 256, w = new Float32Array(64 * n).map(() => g() * 0.02);
  const h = new Float32Array(n * n);
  for (let i = 0; i < n; i++) h[i * n + i] = 1;
  const scales = chooseGroupScales(w, [64, n], "mxfp4").effective;
  await gptqSolveNative(w, h, 64, n, { scales, groupSize: 32, element: "e2m1", device: "cuda" });
  using wd = Tensor.from(w, [64, n]).to("cuda");
  using work = Tensor.empty([64, n], "f32", "cuda");
  using hd = Tensor.from(h, [n, n]).to("cuda");
  using codes = Tensor.empty([64 * n], "u8", "cuda");
  using sd = Tensor.from(scales, [scales.length]).to("cuda");
  await solveOnDevice(wd, work, hd, codes, 64, n, sd);
}
const rows: Row[] = [];
for (const [out, inF] of shapes) {
  const xs = Array.from({ length: 4 }, () => {
    const host = new Float32Array(tokens * inF);
    for (let i = 0; i < host.length; i++) host[i] = g();
    return Tensor.from(host, [tokens, inF]).to("cuda");
  });
  using warm = new Hessian(inF, { device: "cuda" });
  await warm.add(xs[0], tokens);
  using hess = new Hessian(inF, { device: "cuda" });
  const t0 = performance.now();
  for (let b = 0; b < batches; b++) await hess.add(xs[b % xs.length], tokens);
  const hs = (performance.now() - t0) / 1000;
  for (const x of xs) x.dispose();
  const h = hess.matrix();

  const w = new Float32Array(out * inF);
  for (let i = 0; i < w.length; i++) w[i] = g() * 0.02;
  const scales = chooseGroupScales(w, [out, inF], "mxfp4").effective;
  const order = descendingOrder(Float64Array.from({ length: inF }, (_, j) => h[j * inF + j]));
  const onDevice = async () => {
    using wd = Tensor.from(w, [out, inF]).to("cuda");
    using work = Tensor.empty([out, inF], "f32", "cuda");
    using hd = Tensor.from(h, [inF, inF]).to("cuda");
    using codes = Tensor.empty([out * inF], "u8", "cuda");
    using sd = Tensor.from(scales, [scales.length]).to("cuda");
    const t = performance.now();
    const stats = await solveOnDevice(wd, work, hd, codes, out, inF, sd, order);
    const seconds = (performance.now() - t) / 1000;
    return { seconds, stats, codes: codes.toArray() as Uint8Array };
  };
  const dev = await onDevice();
  const t1 = performance.now();
  const r = await gptqSolveNative(w, h, out, inF, {
    scales,
    groupSize: 32,
    element: "e2m1",
    order,
    device: "cuda",
  });
  const hostSeconds = (performance.now() - t1) / 1000;
  let matches = dev.codes.length === r.codes.length;
  for (let i = 0; matches && i < r.codes.length; i++) matches = dev.codes[i] === r.codes[i];
  const flops = 2 * tokens * batches * inF * inF;
  rows.push({
    out,
    in: inF,
    hessianSeconds: hs,
    hessianTflops: flops / hs / 1e12,
    hessianFractionOfPeak: flops / hs / peak,
    solveSeconds: dev.seconds,
    solveFactorSeconds: dev.stats.factorSeconds,
    solveLoopSeconds: dev.stats.loopSeconds,
    solveHostArraysSeconds: hostSeconds,
    solveDeviceMatchesHost: matches,
  });
  console.log(JSON.stringify(rows[rows.length - 1]));
}

let torch: Record<string, unknown> | null = null;
const script = new URL("./gptq_torch_baseline.py", import.meta.url).pathname;
if (values.torch) {
  try {
    const p = await new Deno.Command("python3", {
      args: [
        script,
        "--shapes",
        values.shapes,
        "--tokens",
        String(tokens),
        "--batches",
        String(batches),
      ],
      stderr: "inherit",
    }).output();
    const text = new TextDecoder().decode(p.stdout).trim().split("\n").pop() ?? "";
    if (p.success) torch = JSON.parse(text);
    else console.log("torch baseline failed; see its stderr above");
  } catch (e) {
    console.log(`torch baseline not run: ${(e as Error).message}`);
  }
}
if (torch) {
  for (
    const t of torch.shapes as { out: number; in: number; hessian_s: number; solve_s: number }[]
  ) {
    const row = rows.find((r) => r.out === t.out && r.in === t.in);
    if (!row) continue;
    row.torchHessianSeconds = t.hessian_s;
    row.torchSolveSeconds = t.solve_s;
    row.hessianRatioOursOverTorch = row.hessianSeconds / t.hessian_s;
    row.solveRatioOursOverTorch = row.solveSeconds / t.solve_s;
    row.solveHostArraysRatioOursOverTorch = row.solveHostArraysSeconds / t.solve_s;
  }
}
const result = {
  bench: "gptq",
  device: status.name,
  date: new Date().toISOString(),
  commit: commit(),
  tokensPerBatch: tokens,
  batches,
  fp32PeakFlops: peak,
  factorization,
  torch: torch ? { version: torch.torch, device: torch.device } : null,
  shapes: rows,
};
console.table(rows);
await Deno.mkdir(values.out, { recursive: true });
await Deno.writeTextFile(`${values.out}/gptq.json`, JSON.stringify(result, null, 2) + "\n");
console.log(`wrote ${values.out}/gptq.json`);
