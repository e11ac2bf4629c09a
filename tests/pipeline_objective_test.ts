// The per-layer objectives of quantizeModel (lib/pipeline/objective.ts): "act" Hessians are
// those of the inputs the FP4 GEMM sees (rotated, activation-quantized, rotated back), the
// asymmetric objectives reduce to plain GPTQ where the GEMM sees the reference inputs, and the
// teacher stream is paired with the quantized one window by window.
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { quantizeModel } from "../lib/pipeline/quantize_model.ts";
import type { CalibrationObjective } from "../lib/pipeline/objective.ts";
import { transformInput } from "../lib/pipeline/act_quant.ts";
import { inverseHadamard } from "../lib/formats/hadamard.ts";
import { resolveSpec } from "../lib/formats/spec.ts";
import { hessianOf } from "../lib/gptq/synthetic.ts";
import { embed, nativeLinear, runLayer } from "../lib/model/forward.ts";
import { cudaStatus } from "../lib/device.ts";
import type { Device } from "../lib/device.ts";
import { toFloat32 } from "../lib/dtype.ts";
import { cpuBlockRunner, cudaBlockRunner } from "../lib/pipeline/block_runner.ts";
import { quantizedLinear } from "../lib/pipeline/act_quant.ts";
import { testSeed, tinyModel, tokenWindows } from "./pipeline_fixture.ts";

const Q = "model.layers.0.self_attn.q_proj";

async function weightsOf(
  seed: number,
  windows: Int32Array[],
  objective: CalibrationObjective,
  actFormat: string | null,
  onHessians?: (block: number, h: ReadonlyMap<string, { matrix(): Float32Array }>) => void,
  device: Device = "cpu",
): Promise<Map<string, Float32Array>> {
  const model = tinyModel(seed);
  const q = await quantizeModel(model, windows, {
    format: "nvfp4",
    method: "mr-gptq",
    actFormat,
    objective,
    onHessians,
    device,
  });
  assertEquals(q.objective, objective);
  return new Map(
    [...q.layers.keys()].map((n) => [n, model.weight(`${n}.weight`).data as Float32Array]),
  );
}

function sameBits(a: Float32Array, b: Float32Array, what: string): void {
  assertEquals(a.length, b.length, what);
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) throw new Error(`${what}[${i}]: ${a[i]} vs ${b[i]}`);
  }
}

Deno.test("without activation quantization, output and act give exactly GPTQ's weights", async () => {
  const seed = testSeed();
  const windows = tokenWindows(seed, 2, 96);
  const plain = await weightsOf(seed, windows, "weights", null);
  for (const objective of ["output", "act"] as const) {
    const got = await weightsOf(seed, windows, objective, null);
    for (const [name, w] of plain) sameBits(got.get(name)!, w, `${objective} ${name}`);
  }
});

Deno.test('"act" Hessians are those of R^T Q_a(R x) for the inputs x of the block', async () => {
  const seed = testSeed();
  const windows = tokenWindows(seed, 2, 64);
  let got: Float32Array | null = null;
  await weightsOf(seed, windows, "act", "nvfp4", (b, h) => {
    if (b === 0) got = h.get(Q)!.matrix();
  });
  // The q/k/v input of block 0: captured from the unquantized model's first block.
  const model = tinyModel(seed);
  const plain = nativeLinear(model);
  const spec = resolveSpec("nvfp4");
  const rows: Float32Array[] = [];
  for (const ids of windows) {
    await runLayer(model, 0, embed(model, ids), {
      linear: async (name, x, n) => {
        if (name === Q) {
          const y = await transformInput(x, n, 64, { rotation: { block: 16 }, act: spec });
          rows.push(inverseHadamard(y, [n, 64], { block: 16 }));
        }
        return plain(name, x, n);
      },
    });
  }
  const x = new Float32Array(rows.reduce((a, r) => a + r.length, 0));
  rows.reduce((at, r) => (x.set(r, at), at + r.length), 0);
  const want = hessianOf(x, x.length / 64, 64);
  let scale = 0, err = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got![i] - want[i]));
  assert(err < 1e-5 * scale, `max error ${err} of the largest entry ${scale} (seed ${seed})`);
});

// Block 0's q/k/v read the embeddings in both streams; every later input differs (the teacher's
// o_proj input already comes from unquantized q/k/v inputs).
Deno.test("teacher equals output for block 0's q/k/v and differs after them", async () => {
  const seed = testSeed();
  const windows = tokenWindows(seed, 2, 64);
  const output = await weightsOf(seed, windows, "output", "nvfp4");
  const teacher = await weightsOf(seed, windows, "teacher", "nvfp4");
  for (const [name, w] of output) {
    if (/layers\.0\.self_attn\.[qkv]_proj/.test(name)) sameBits(teacher.get(name)!, w, name);
  }
  const later = [...output].filter(([n]) => !/layers\.0\.self_attn\.[qkv]_proj/.test(n));
  assert(
    later.every(([n, w]) => w.some((v, i) => v !== teacher.get(n)![i])),
    "the full-precision stream left a layer after q/k/v of block 0 unchanged",
  );
});

Deno.test({
  name: "CUDA runner's \"output\" target W* matches the CPU runner's within bf16 rounding",
  ignore: !cudaStatus().available,
  fn: async () => {
    const seed = testSeed();
    const windows = tokenWindows(seed, 8, 128);
    const model = tinyModel(seed);
    const scheme = { rotation: { block: 16 }, act: resolveSpec("nvfp4") };
    const objective = { objective: "output" as const, scheme };
    const cpu = cpuBlockRunner(model, windows, quantizedLinear(model, new Map()), objective);
    using cuda = cudaBlockRunner(model, windows, scheme.rotation, objective);
    await cpu.calibrate(0, () => {});
    const hs = await cuda.calibrate(0, () => {});
    // The signal W* - W comes from the activation quantization error, which the engine's bf16
    // activations perturb strongly (flipped roundings of Q_a). Measured on the H100 over 24 seeds
    // (8 windows of 128 tokens): q_proj 0.17-0.23, down_proj 0.54-0.64 (3 windows: 0.19-0.29 and
    // 0.58-0.81). The CPU runner with its linears' inputs and outputs rounded to bf16 reproduces
    // the same figures (q_proj 0.20-0.24, down_proj 0.60-0.79 with 3 windows), so the gap is the
    // bf16 dataflow, not the CUDA algebra. A missing D gives exactly 1, a wrong sign about 2.
    const bounds = new Map([[Q, 0.4], ["model.layers.0.mlp.down_proj", 0.85]]);
    for (const [name, bound] of bounds) {
      const w = model.weight(`${name}.weight`);
      const [rows] = w.shape;
      const w32 = toFloat32(w.data, w.dtype);
      const want = await cpu.target!(name, w32, rows);
      const got = await cuda.target!(name, w32, rows);
      let diff = 0, shift = 0;
      for (let i = 0; i < want.length; i++) {
        diff += (got[i] - want[i]) ** 2;
        shift += (want[i] - w32[i]) ** 2;
      }
      const rel = Math.sqrt(diff / shift);
      console.log(`${name}: |W*_cuda - W*_cpu| / |W*_cpu - W| = ${rel.toExponential(2)}`);
      assert(shift > 0 && rel < bound, `${name}: relative difference ${rel} (seed ${seed})`);
    }
    for (const h of hs.values()) h.dispose();
  },
});

Deno.test({
  name: 'CUDA pipeline: "teacher" is refused with a clear Error',
  ignore: !cudaStatus().available,
  fn: async () => {
    const seed = testSeed();
    await assertRejects(
      () => weightsOf(seed, tokenWindows(seed, 1, 16), "teacher", "nvfp4", undefined, "cuda"),
      Error,
      "CPU pipeline only",
    );
  },
});

Deno.test("an unknown objective fails before any work", async () => {
  const seed = testSeed();
  const model = tinyModel(seed);
  await assertRejects(
    () =>
      quantizeModel(model, tokenWindows(seed, 1, 16), {
        format: "nvfp4",
        method: "gptq",
        objective: "loss" as CalibrationObjective,
      }),
    Error,
    "objective",
  );
  assertEquals(model.weight(`${Q}.weight`).dtype, "bf16");
});
