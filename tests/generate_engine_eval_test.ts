// The engine as an evaluator: `nll` of a window against the full forward pass of lib/model, with
// and without input schemes (rotation, W4A4 activation quantization), on the CPU and on CUDA;
// CUDA graph replays of decode steps against eager steps.
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { DecodeEngine } from "../lib/generate/mod.ts";
import { forwardNll, LlamaModel, parseLlamaConfig } from "../lib/model/mod.ts";
import { type InputScheme, quantizedLinear } from "../lib/pipeline/mod.ts";
import { resolveSpec } from "../lib/formats/spec.ts";
import { cudaStatus, type Device } from "../lib/device.ts";
import type { Fp4Weights } from "../lib/kernels/fp4_linear.ts";
import { Tensor } from "../lib/tensor.ts";

const seed = (Math.random() * 2 ** 31) >>> 0;
console.log(`generate_engine_eval_test seed ${seed}`);
const cuda = cudaStatus().available;

function tinyModel(s: number, dtype: "f32" | "bf16" = "f32", hidden = 64, mlp = 96): LlamaModel {
  return LlamaModel.random(
    parseLlamaConfig({
      model_type: "llama",
      hidden_size: hidden,
      intermediate_size: mlp,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: 61,
      rope_theta: 500,
      max_position_embeddings: 48,
    }),
    { seed: s, dtype, std: 0.15 },
  );
}

function randomIds(n: number, vocab: number): Int32Array {
  return Int32Array.from({ length: n }, () => Math.floor(Math.random() * vocab));
}

function mean(a: Float32Array): number {
  let s = 0;
  for (const v of a) s += v;
  return s / a.length;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}

/** Every quantizable linear gets the same scheme. */
function schemesFor(model: LlamaModel, scheme: InputScheme): Map<string, InputScheme> {
  return new Map(
    model.linearNames().filter((n) => n !== "lm_head").map((n) => [n, scheme] as const),
  );
}

const W4A4: InputScheme = Object.freeze({
  rotation: { block: 16, seed: 7 },
  act: resolveSpec("nvfp4"),
});

// Same ops in f32 as forwardNll, differing in the attention's summation order: the per-token
// NLLs agree to 1e-5 (observed ~1e-7).
Deno.test("engine nll on the CPU equals forwardNll", async () => {
  const model = tinyModel(seed);
  const ids = randomIds(40, model.config.vocabSize);
  using engine = DecodeEngine.create(model, { contextLength: 40 });
  const got = await engine.nll(ids);
  const want = await forwardNll(model, ids);
  assertEquals(got.length, 39);
  const err = maxAbsDiff(got, want);
  assert(err < 1e-5, `seed ${seed}: |dNLL| ${err}`);
  assertEquals(engine.position, 40);
});

// W4A4 (rotation + NVFP4 activations): the same kernels as the quantizedLinear hook on the same
// f32 inputs; where the attention's summation order moves an input across a rounding boundary
// one element changes by a grid step, so the bound is on the mean NLL (1e-3 relative).
Deno.test("engine input schemes on the CPU equal the quantizedLinear hook", async () => {
  const model = tinyModel(seed + 1);
  const schemes = schemesFor(model, W4A4);
  const ids = randomIds(32, model.config.vocabSize);
  using engine = DecodeEngine.create(model, { contextLength: 32, schemes });
  const got = mean(await engine.nll(ids));
  const want = mean(await forwardNll(model, ids, { linear: quantizedLinear(model, schemes) }));
  const plain = mean(await forwardNll(model, ids));
  assert(Math.abs(got - want) < 1e-3 * want, `seed ${seed}: mean NLL ${got} vs ${want}`);
  assert(Math.abs(want - plain) > 1e-4, "the scheme changed nothing: the test cannot tell");
});

// Generation and evaluation share the engine: with W4A4 schemes whose activation scales depend
// on a row alone (MXFP4's per-group scales; NVFP4 with a static tensor scale), the logits a
// decode step leaves score the next token as nll() scores it on the same window, to f32
// rounding. (NVFP4's dynamic tensor scale is the amax of each call's whole input, so a
// one-token step and a 512-token window quantize differently.)
const ROW_SCHEMES: [string, InputScheme][] = [
  ["MXFP4", { rotation: { block: 32, seed: 3 }, act: resolveSpec("mxfp4") }],
  ["NVFP4, static scale", { rotation: { block: 16 }, act: resolveSpec("nvfp4:ts=0.002") }],
];
for (const [what, scheme] of ROW_SCHEMES) {
  Deno.test(`W4A4 (${what}) generation logits equal the W4A4 evaluation's`, async () => {
    const model = tinyModel(seed + 5);
    const schemes = schemesFor(model, scheme);
    const ids = randomIds(12, model.config.vocabSize);
    using gen = DecodeEngine.create(model, { contextLength: 12, schemes });
    using ev = DecodeEngine.create(model, { contextLength: 12, schemes });
    const nll = await ev.nll(ids);
    await gen.forward(ids.subarray(0, 8));
    for (let t = 8; t < 12; t++) {
      const logits = gen.logits();
      let m = -Infinity;
      for (const v of logits) m = Math.max(m, v);
      let z = 0;
      for (const v of logits) z += Math.exp(v - m);
      const want = Math.log(z) + m - logits[ids[t]];
      assert(
        Math.abs(want - nll[t - 1]) < 1e-4,
        `seed ${seed} position ${t}: ${want} vs ${nll[t - 1]}`,
      );
      await gen.forward(ids.subarray(t, t + 1));
    }
  });
}

Deno.test("engine nll and schemes reject bad input", async () => {
  const model = tinyModel(seed + 2);
  using engine = DecodeEngine.create(model, { contextLength: 8 });
  await assertRejects(() => engine.nll(new Int32Array([1])), Error, "at least 2");
  await assertRejects(() => engine.nll(randomIds(9, 61)), Error, "context");
  let threw = false;
  try {
    DecodeEngine.create(model, { schemes: new Map([["lm_head", W4A4]]) });
  } catch (e) {
    threw = (e as Error).message.includes("lm_head");
  }
  assert(threw, "a scheme for lm_head must be refused");
});

// bf16 activations and cache on CUDA against f32 on the CPU: mean NLL within 1e-2 relative
// (observed ~1e-3 on brown-llama-29m's full evaluation).
Deno.test({
  name: "CUDA engine nll matches the CPU engine's, plain and W4A4",
  ignore: !cuda,
  async fn() {
    const model = tinyModel(seed + 3, "bf16");
    const ids = randomIds(48, model.config.vocabSize);
    const all = [W4A4, ROW_SCHEMES[1][1]].map((s) => schemesFor(model, s));
    for (const schemes of [new Map<string, InputScheme>(), ...all]) {
      using cpu = DecodeEngine.create(model, { contextLength: 48, schemes });
      using gpu = DecodeEngine.create(model, { device: "cuda", contextLength: 48, schemes });
      const a = mean(await gpu.nll(ids)), b = mean(await cpu.nll(ids));
      assert(Math.abs(a - b) < 1e-2 * b, `seed ${seed} (${schemes.size} schemes): ${a} vs ${b}`);
    }
  },
});

// A replayed graph runs the same kernels on the same buffers as an eager step: equal bit for bit.
Deno.test({
  name: "CUDA graph replays of decode steps equal eager steps bit for bit",
  ignore: !cuda,
  async fn() {
    const model = tinyModel(seed + 4, "bf16");
    const prompt = randomIds(6, model.config.vocabSize);
    using eager = DecodeEngine.create(model, { device: "cuda", contextLength: 40, graphs: false });
    using graphed = DecodeEngine.create(model, { device: "cuda", contextLength: 40 });
    await eager.forward(prompt);
    await graphed.forward(prompt);
    for (let step = 0; step < 20; step++) {
      const a = eager.logits(), b = graphed.logits();
      assertEquals(Array.from(b), Array.from(a), `step ${step}`);
      const t = eager.argmax();
      assertEquals(graphed.argmax(), t);
      await eager.forward(new Int32Array([t]));
      await graphed.forward(new Int32Array([t]));
    }
    graphed.reset();
    await graphed.forward(prompt);
    eager.reset();
    await eager.forward(prompt);
    await eager.forward(new Int32Array([3]));
    await graphed.forward(new Int32Array([3]));
    assertEquals(Array.from(graphed.logits()), Array.from(eager.logits()), "after reset");
  },
});

/** Random FP4 weights (host) of every quantizable linear, NVFP4 with a tensor scale each. */
function randomFp4(model: LlamaModel, format: "mxfp4" | "nvfp4"): Map<string, Fp4Weights> {
  const out = new Map<string, Fp4Weights>();
  const group = format === "mxfp4" ? 32 : 16;
  for (const name of model.linearNames().filter((n) => n !== "lm_head")) {
    const [n, k] = model.weight(`${name}.weight`).shape;
    const codes = new Uint8Array(n * k / 2).map(() => Math.random() * 256);
    // Scales near what weights of std 0.15 get: E8M0 2^-5 .. 2^-3, E4M3 1 .. 15 times a tensor
    // scale that differs per linear (fused NVFP4 segments must keep their own).
    const scales = new Uint8Array(n * k / group).map(() =>
      format === "mxfp4" ? 122 + Math.random() * 3 : 0x38 + Math.random() * 0x20
    );
    out.set(name, {
      codes: Tensor.from(codes, [n, k / 2]),
      scales: Tensor.from(scales, [n, k / group]),
      tensorScale: format === "nvfp4" ? Math.fround(2 ** -6 * (1 + Math.random())) : undefined,
      format,
      n,
      k,
    });
  }
  return out;
}

// A fused step runs the members' rows through the same arithmetic (stacked weights; NVFP4 rows
// with their segment's tensor scale; FP4 products finished by RoPE/KV store and SwiGLU in their
// own call, or not): equal bit for bit to the unfused step, eager and replayed. The exception is
// CUDA's dense BF16, where cuBLAS may pick another kernel for the taller matrix: within 2^-7 of
// the logits' scale there (bf16 rounding of a few activations). FP4 also at hidden 256, MLP 512
// (k a multiple of 256: the batch-1 ring kernel on CUDA).
for (const device of ["cpu", ...(cuda ? ["cuda"] : [])] as Device[]) {
  Deno.test(`${device}: fused q/k/v and gate/up steps equal unfused ones`, async () => {
    const cases = [
      ["f32", 64, 96],
      ["bf16", 64, 96],
      ["mxfp4", 64, 96],
      ["nvfp4", 64, 96],
      ["mxfp4", 256, 512],
      ["nvfp4", 256, 512],
    ] as const;
    for (const [kind, hidden, mlp] of cases) {
      if (device === "cuda" && kind === "f32") continue;
      const model = tinyModel(seed + 5, kind === "f32" ? "f32" : "bf16", hidden, mlp);
      const quantized = kind === "mxfp4" || kind === "nvfp4"
        ? randomFp4(model, kind)
        : new Map<string, Fp4Weights>();
      const prompt = randomIds(5, model.config.vocabSize);
      const opts = { device, contextLength: 40, quantized } as const;
      using plain = DecodeEngine.create(model, { ...opts, fuse: false, graphs: false });
      using fused = DecodeEngine.create(model, opts);
      using products = DecodeEngine.create(model, { ...opts, epilogues: false });
      await plain.forward(prompt);
      await fused.forward(prompt);
      await products.forward(prompt);
      const exact = device === "cpu" || quantized.size > 0;
      let worst = 0;
      for (let step = 0; step < 8; step++) {
        const a = plain.logits(), b = fused.logits();
        if (exact) {
          const what = `${kind} ${hidden}/${mlp} step ${step} (seed ${seed})`;
          assertEquals(Array.from(b), Array.from(a), what);
          assertEquals(Array.from(products.logits()), Array.from(a), `without epilogues: ${what}`);
        } else {
          const scale = Math.max(...a.map(Math.abs));
          worst = Math.max(worst, maxAbsDiff(a, b) / scale);
          assert(worst <= 2 ** -7, `${kind} step ${step}: ${worst} of the scale (seed ${seed})`);
        }
        const t = plain.argmax();
        await plain.forward(new Int32Array([t]));
        await fused.forward(new Int32Array([t]));
        await products.forward(new Int32Array([t]));
      }
      if (!exact) {
        console.log(`${device} ${kind}: fused vs unfused logits within ${worst} of scale`);
      }
      // Replacing one member unfuses its group; the engines stay equal.
      const up = "model.layers.1.mlp.up_proj";
      const w = model.weight(`${up}.weight`);
      const repl = quantized.get(up) ??
        {
          ...w,
          data: Float32Array.from({ length: w.data.length }, () => Math.random() - 0.5),
          dtype: "f32" as const,
        };
      for (const e of [plain, fused]) {
        e.setLinear(up, repl);
        e.reset();
        await e.forward(prompt);
        await e.forward(new Int32Array([1]));
      }
      const a = plain.logits(), b = fused.logits();
      if (exact) assertEquals(Array.from(b), Array.from(a), `${kind} after setLinear`);
      else {assert(
          maxAbsDiff(a, b) <= 2 ** -7 * Math.max(...a.map(Math.abs)),
          `${kind} after setLinear`,
        );}
    }
  });
}
