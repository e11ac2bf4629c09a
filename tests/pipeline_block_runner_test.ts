// The block runners of sequential quantization: the decode engine's block API (embed, runBlock
// with input capture, setLinear) against lib/model's forward pass on the CPU, and the CUDA
// runner's Hessians and quantized model against the CPU runner's (bf16 activations between ops
// on the GPU, so within bf16 rounding, not bit for bit).
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { cudaStatus } from "../lib/device.ts";
import { DecodeEngine } from "../lib/generate/engine.ts";
import { embed, forwardNll, nativeLinear, runLayer } from "../lib/model/forward.ts";
import { cpuBlockRunner, cudaBlockRunner } from "../lib/pipeline/block_runner.ts";
import { quantizedLinear } from "../lib/pipeline/act_quant.ts";
import { quantize } from "../lib/formats/quantize.ts";
import { hadamardF64 } from "../lib/formats/hadamard.ts";
import { type QuantizedModel, quantizeModel } from "../lib/pipeline/quantize_model.ts";
import { testSeed, tinyModel, tokenWindows } from "./pipeline_fixture.ts";

function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

Deno.test("CPU engine: embed + runBlock reproduce lib/model's forward and hand over each linear input", async () => {
  const seed = testSeed();
  const model = tinyModel(seed);
  const [ids] = tokenWindows(seed, 1, 96);
  using engine = DecodeEngine.create(model, { contextLength: 128 });
  using h = engine.embed(ids);
  const ref = embed(model, ids);
  assertEquals(h.toArray(), ref, "embeddings");
  const seen: [string, number[], number][] = [];
  const inputs = new Map<string, Float32Array>();
  const plain = nativeLinear(model);
  await runLayer(model, 0, ref, {
    linear: (name, x, rows) => {
      inputs.set(name, x.slice());
      return plain(name, x, rows);
    },
  });
  await engine.runBlock(0, h, (name, x) => {
    const v = x.toArray() as Float32Array;
    seen.push([name, [...x.shape], maxRelErr(v, inputs.get(name)!)]);
  });
  assertEquals(seen.map(([n, s]) => [n, s]), [
    ["model.layers.0.self_attn.q_proj", [96, 64]],
    ["model.layers.0.self_attn.o_proj", [96, 64]],
    ["model.layers.0.mlp.gate_proj", [96, 64]],
    ["model.layers.0.mlp.down_proj", [96, 128]],
  ]);
  // Same f32 math in another order (engine kernels vs lib/model): agreement to ~1e-6.
  for (const [name, , err] of seen) assert(err < 1e-4, `${name} input: relative error ${err}`);
  const out = h.toArray() as Float32Array;
  assert(maxRelErr(out, ref) < 1e-4, `block output: relative error ${maxRelErr(out, ref)}`);
});

Deno.test("setLinear checks the layer name and shape, and the new weights take effect", async () => {
  const seed = testSeed();
  const model = tinyModel(seed);
  const [ids] = tokenWindows(seed, 1, 16);
  using engine = DecodeEngine.create(model, { contextLength: 16 });
  const f32 = (n: number) => new Float32Array(n);
  assertThrows(
    () => engine.setLinear("lm_head", { dtype: "f32", shape: [256, 64], data: f32(256 * 64) }),
    Error,
    "not a decoder linear layer",
  );
  assertThrows(
    () =>
      engine.setLinear("model.layers.0.mlp.up_proj", {
        dtype: "f32",
        shape: [64, 128],
        data: f32(64 * 128),
      }),
    Error,
    "needs a [128, 64] weight",
  );
  using a = engine.embed(ids);
  await assertRejects(() => engine.runBlock(2, a), Error, "outside [0, 2)");
  await engine.runBlock(0, a);
  // A zero down projection removes the MLP's contribution: the block output changes.
  engine.setLinear("model.layers.0.mlp.down_proj", {
    dtype: "f32",
    shape: [64, 128],
    data: f32(64 * 128),
  });
  using b = engine.embed(ids);
  await engine.runBlock(0, b);
  const [va, vb] = [a.toArray() as Float32Array, b.toArray() as Float32Array];
  assert(maxRelErr(va, vb) > 1e-3, "setLinear had no effect");
});

Deno.test("CPU runner: calibrate leaves the streams, propagate advances them", async () => {
  const seed = testSeed();
  const model = tinyModel(seed);
  const windows = tokenWindows(seed, 2, 32);
  const runner = cpuBlockRunner(model, windows, quantizedLinear(model, new Map()));
  const hs1 = await runner.calibrate(0, () => {});
  const hs2 = await runner.calibrate(0, () => {});
  const q = "model.layers.0.self_attn.q_proj";
  assertEquals(hs1.get(q)!.matrix(), hs2.get(q)!.matrix(), "calibrate must not move the streams");
  assertEquals(hs1.get(q)!.samples, 64);
  await runner.propagate(0, () => {});
  const hs3 = await runner.calibrate(0, () => {});
  assert(maxRelErr(hs3.get(q)!.matrix(), hs1.get(q)!.matrix()) > 1e-3, "propagate had no effect");
});

Deno.test({
  name: "CUDA runner: Hessians and the quantized model match the CPU runner's within bf16 rounding",
  ignore: !cudaStatus().available,
  fn: async () => {
    const seed = testSeed();
    const windows = tokenWindows(seed, 3, 128);
    const hessians: Map<string, Float32Array>[] = [new Map(), new Map()];
    const models = [tinyModel(seed), tinyModel(seed)];
    const results: QuantizedModel[] = [];
    for (const [i, device] of (["cpu", "cuda"] as const).entries()) {
      results.push(
        await quantizeModel(models[i], windows, {
          format: "nvfp4",
          method: "mr-gptq",
          actFormat: "nvfp4",
          device,
          onHessians: (_b, hs) => {
            for (const [g, h] of hs) hessians[i].set(g, h.matrix());
          },
        }),
      );
    }
    assertEquals([...hessians[1].keys()], [...hessians[0].keys()]);
    // The GPU rotates the inputs before accumulating (MR-GPTQ's rotation, block 16 for NVFP4):
    // compare with R^T H R of the CPU's Hessian in float64.
    for (const [g, h] of hessians[0]) {
      const cols = Math.sqrt(h.length);
      const a = hadamardF64(Float64Array.from(h), [cols, cols], { block: 16 });
      const t = new Float64Array(a.length);
      for (let i = 0; i < cols; i++) {
        for (let j = 0; j < cols; j++) t[j * cols + i] = a[i * cols + j];
      }
      hessians[0].set(g, Float32Array.from(hadamardF64(t, [cols, cols], { block: 16 })));
    }
    for (const [g, h] of hessians[0]) {
      const d = hessians[1].get(g)!;
      if (g.startsWith("model.layers.0.")) {
        // Same inputs rounded to bf16 (relative 2^-9): within 1% of the largest entry.
        const err = maxRelErr(d, h);
        assert(err < 0.01, `${g}: Hessian max relative error ${err} (seed ${seed})`);
      } else {
        // From block 1 on the GPU stream went through bf16 activations and W4A4 codes that can
        // round the other way: the Hessians agree in the Frobenius norm.
        let num = 0, den = 0;
        for (let i = 0; i < h.length; i++) {
          num += (d[i] - h[i]) ** 2;
          den += h[i] ** 2;
        }
        const err = Math.sqrt(num / den);
        assert(err < 0.25, `${g}: Hessian Frobenius relative error ${err} (seed ${seed})`);
      }
    }
    // Both quantized models scored by the same CPU forward pass.
    const nll = async (k: number) => {
      let sum = 0, n = 0;
      for (const w of windows) {
        for (const v of await forwardNll(models[k], w, { linear: results[k].linear })) {
          sum += v;
          n++;
        }
      }
      return sum / n;
    };
    const [cpu, cuda] = [await nll(0), await nll(1)];
    assert(Math.abs(cuda - cpu) < 0.02 * cpu, `mean NLL cpu ${cpu} vs cuda ${cuda} (seed ${seed})`);
  },
});

Deno.test({
  name: "CUDA runner: bad streams and names fail with clear Errors",
  ignore: !cudaStatus().available,
  fn: () => {
    const model = tinyModel(testSeed());
    using runner = cudaBlockRunner(model, tokenWindows(1, 1, 8));
    const w = new Float32Array(128 * 64).map(() => Math.random() - 0.5);
    assertThrows(
      () =>
        runner.update(
          "model.layers.9.mlp.up_proj",
          { dtype: "f32", shape: [128, 64], data: w },
          { rotation: null, act: null },
          quantize(w, [128, 64], "nvfp4"),
        ),
      Error,
      "not a decoder linear layer",
    );
  },
});
