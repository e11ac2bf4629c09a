// GPU (and 2-thread CPU) throughput of the formats kernels: quantize an 8192x8192 bf16 tensor
// to NVFP4 and MXFP4, and the fused Hadamard-128 rotate+quantize, as achieved bandwidth (input
// bytes read + code/scale bytes written, per pass over the input) and as a fraction of the
// device-to-device copy bandwidth measured in the same run; NVFP4 both with its amax tensor scale
// (two passes over the input) and with a given one (`nvfp4:ts=<s_t>`, the same s_t: one pass,
// as a calibrated activation scale is used). Timing is native (CUDA events
// around `iters` back-to-back library calls, fp4_bench_formats); each figure is the median of
// `reps` such loops. Before timing, the CUDA results are checked
// byte for byte against the CPU backend on a wide-range random bf16 tensor (every benchmarked
// op and spec, with and without a random Hadamard seed), so a fast path that drifts from the
// shared numerics fails the run. Writes JSON to the path given as the argument.
//
//   deno run -A bench/gpu/formats_bench.ts bench/results/formats_h100.json [--rows N --cols N]
import { parseArgs } from "node:util";
import { checkAsync, native } from "../../ffi/library.ts";
import { cudaStatus, type Device, deviceId } from "../../lib/device.ts";
import { abiDType } from "../../lib/dtype.ts";
import { Tensor } from "../../lib/tensor.ts";
import {
  disposeQuantized,
  packSpec,
  quantizeOn,
  rotateQuantizeOn,
  toQuantized,
} from "../../lib/formats/native.ts";
import { bf16ToF32, f32ToBf16 } from "../../lib/dtype.ts";
import { resolveSpec } from "../../lib/formats/spec.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    rows: { type: "string", default: "8192" },
    cols: { type: "string", default: "8192" },
    iters: { type: "string", default: "20" },
    reps: { type: "string", default: "5" },
    "cpu-rows": { type: "string", default: "1024" },
    out: { type: "string" },
  },
});
if (positionals.length !== 1 && !values.out) {
  throw new Error("usage: formats_bench.ts (OUT.json | --out DIR) [--rows N --cols N]");
}

interface Row {
  device: Device;
  op: string;
  spec: string | null;
  shape: [number, number];
  seconds: number;
  bytes: number;
  gbps: number;
  fractionOfCopy: number | null;
}

async function time(
  device: Device,
  op: number,
  spec: string | null,
  x: Tensor,
  outs: { out?: Tensor; codes?: Tensor; scales?: Tensor; ts?: Tensor },
  iters: number,
  reps: number,
): Promise<number> {
  const [rows, cols] = x.shape;
  const sec = new Float64Array(1);
  const loops: number[] = [];
  for (let k = 0; k < reps; k++) {
    await checkAsync(
      native().fp4_bench_formats(
        deviceId(device),
        op,
        spec ? packSpec(resolveSpec(spec)) : new Uint8Array(56),
        abiDType(x.dtype),
        x.pointer(),
        BigInt(rows),
        BigInt(cols),
        128,
        outs.out?.pointer() ?? null,
        outs.codes?.pointer() ?? null,
        outs.scales?.pointer() ?? null,
        null,
        outs.ts?.pointer() ?? null,
        iters,
        sec,
      ),
      "fp4_bench_formats",
    );
    loops.push(sec[0]);
  }
  return loops.sort((a, b) => a - b)[reps >> 1];
}

async function run(
  device: Device,
  rows: number,
  cols: number,
  iters: number,
  reps: number,
): Promise<Row[]> {
  const n = rows * cols;
  const host = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    host[i] = 0x3c00 + ((i * 2654435761) >>> 20) % 0x900 ^ (i & 1 ? 0x8000 : 0);
  }
  using x = Tensor.from(host, [rows, cols], "bf16").to(device);
  using out = Tensor.empty([rows, cols], "bf16", device);
  const rowsOut: Row[] = [];
  const copySec = await time(device, 0, null, x, { out }, iters, reps);
  const copyBytes = 2 * n * 2; // read + write
  const copyGbps = copyBytes / copySec / 1e9;
  rowsOut.push({
    device,
    op: "copy",
    spec: null,
    shape: [rows, cols],
    seconds: copySec,
    bytes: copyBytes,
    gbps: copyGbps,
    fractionOfCopy: 1,
  });
  // The amax rule's s_t for the same input (the bf16 values are exact in f32): the given-scale
  // rows then produce exactly the amax rows' bytes in one pass (for plain quantize; rotated, the
  // amax of the rotated tensor differs).
  let amax = 0;
  for (const b of host) amax = Math.max(amax, Math.abs(bf16ToF32(b)));
  const given = `nvfp4:ts=${Math.fround(amax / (6 * 448))}`;
  for (const [op, name] of [[1, "quantize"], [2, "rotate128+quantize"]] as const) {
    for (const spec of ["nvfp4", given, "mxfp4"]) {
      const s = resolveSpec(spec);
      const g = s.groupSize as number;
      const scaleBytes = n / g;
      using codes = Tensor.empty([n / 2], "u8", device);
      using scales = Tensor.empty([scaleBytes], "u8", device);
      using ts = Tensor.empty([1], "f32", device);
      const seconds = await time(device, op, spec, x, { codes, scales, ts }, iters, reps);
      // NVFP4 with the amax tensor scale reads the input twice (amax, then quantize).
      const passes = s.tensorScale === "amax" ? 2 : 1;
      const bytes = passes * 2 * n + n / 2 + scaleBytes;
      const gbps = bytes / seconds / 1e9;
      rowsOut.push({
        device,
        op: name,
        spec,
        shape: [rows, cols],
        seconds,
        bytes,
        gbps,
        fractionOfCopy: gbps / copyGbps,
      });
    }
  }
  return rowsOut;
}

interface Check {
  op: string;
  spec: string;
  seed: number | null;
  elements: number;
  identical: boolean;
}

/** CUDA against CPU, byte for byte, on bf16 values spread over 2^-40 .. 2^40 (and zeros). */
async function verify(rows: number, cols: number): Promise<Check[]> {
  const host = new Uint16Array(rows * cols);
  for (let i = 0; i < host.length; i++) {
    const u = Math.random();
    const v = u < 0.01 ? 0 : (Math.random() - 0.5) * 2 ** Math.floor(u * 80 - 40);
    host[i] = f32ToBf16(Math.random() < 0.5 ? v : v * (1 + Math.random()));
  }
  using x = Tensor.from(host, [rows, cols], "bf16");
  using xd = x.to("cuda");
  const checks: Check[] = [];
  // nvfp4:ts=1e-9 saturates most groups (scale and elements clip); ts=4 sends small groups to
  // zero or subnormal E4M3 scales.
  const specs = ["nvfp4", "nvfp4:ts=1e-9", "nvfp4:ts=4", "mxfp4", "nvfp4:g32", "int4:g16"];
  for (const spec of [...specs, "mxfp4:sr:seed=3"]) {
    for (const seed of [null, 1 + Math.floor(Math.random() * 1e6)]) {
      for (
        const op of seed === null ? ["quantize", "rotate128+quantize"] : ["rotate128+quantize"]
      ) {
        const run = (device: Device, t: Tensor) =>
          op === "quantize"
            ? quantizeOn(device, t, spec)
            : rotateQuantizeOn(device, t, { block: 128, seed: seed ?? undefined }, spec);
        const a = await run("cpu", x);
        const b = await run("cuda", xd);
        const qa = toQuantized(a), qb = toQuantized(b);
        disposeQuantized(a);
        disposeQuantized(b);
        const same = (p: Uint8Array, q: Uint8Array) =>
          p.length === q.length && p.every((v, i) => v === q[i]);
        const identical = same(qa.codes, qb.codes) && same(qa.scales, qb.scales) &&
          Object.is(qa.tensorScale, qb.tensorScale);
        checks.push({ op, spec, seed, elements: rows * cols, identical });
      }
    }
  }
  return checks;
}

const rows = Number(values.rows);
const cols = Number(values.cols);
const iters = Number(values.iters);
const results: Row[] = [];
const cuda = cudaStatus();
const checks = cuda.available ? await verify(Number(values["cpu-rows"]), cols) : [];
if (cuda.available) results.push(...await run("cuda", rows, cols, iters, Number(values.reps)));
Deno.env.set("OMP_NUM_THREADS", "2"); // read by libgomp at its first parallel region only
results.push(...await run("cpu", Number(values["cpu-rows"]), cols, 3, 1));
const report = {
  date: new Date().toISOString(),
  gpu: cuda.available ? cuda.name : null,
  gitCommit: Deno.env.get("GIT_COMMIT") ?? null,
  cpuThreads: 2,
  checks,
  results,
};
await Deno.writeTextFile(
  values.out ? `${values.out}/formats.json` : positionals[0],
  JSON.stringify(report, null, 2) + "\n",
);
if (checks.length) console.table(checks);
console.table(
  results.map((r) => ({
    device: r.device,
    op: r.op,
    spec: r.spec,
    ms: +(r.seconds * 1e3).toFixed(3),
    GBps: +r.gbps.toFixed(1),
    ofCopy: r.fractionOfCopy === null ? null : +r.fractionOfCopy.toFixed(3),
  })),
);
if (checks.some((c) => !c.identical)) {
  throw new Error("CUDA and CPU results differ (see the checks table)");
}
