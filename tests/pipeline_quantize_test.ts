// Sequential model quantization: RTN equals per-layer fakeQuantize (with and without rotation),
// GPTQ beats RTN in proxy loss, the online activation transform equals the TypeScript spec, and
// bad options fail before any work with a clear Error.
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { engineInputsOf, quantizeModel } from "../lib/pipeline/quantize_model.ts";
import { transformInput } from "../lib/pipeline/act_quant.ts";
import { fakeQuantize } from "../lib/formats/quantize.ts";
import { hadamard } from "../lib/formats/hadamard.ts";
import { resolveSpec } from "../lib/formats/spec.ts";
import { toFloat32 } from "../lib/dtype.ts";
import { forwardNll } from "../lib/model/forward.ts";
import { testSeed, tinyModel, tokenWindows } from "./pipeline_fixture.ts";

function sameBits(a: Float32Array, b: Float32Array, what: string): void {
  assertEquals(a.length, b.length, what);
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) throw new Error(`${what}[${i}]: ${a[i]} vs ${b[i]}`);
  }
}

for (const [format, hadamardBlock] of [["nvfp4", 0], ["mxfp4", 32], ["int4:g32", 16]] as const) {
  Deno.test(`RTN ${format} (hadamard ${hadamardBlock}) equals per-layer fakeQuantize`, async () => {
    const seed = testSeed();
    const original = tinyModel(seed);
    const model = tinyModel(seed);
    const q = await quantizeModel(model, [], { format, method: "rtn", hadamard: hadamardBlock });
    assertEquals(q.layers.size, 14);
    for (const name of original.linearNames()) {
      const w0 = original.weight(`${name}.weight`);
      const got = model.weight(`${name}.weight`);
      if (name === "lm_head") {
        assert(got === model.weight("lm_head.weight") && got.dtype === "bf16");
        sameBits(
          toFloat32(got.data as Uint16Array, "bf16"),
          toFloat32(w0.data as Uint16Array, "bf16"),
          name,
        );
        continue;
      }
      let w = toFloat32(w0.data as Uint16Array, "bf16");
      if (hadamardBlock) w = hadamard(w, w0.shape, { block: hadamardBlock });
      sameBits(got.data as Float32Array, fakeQuantize(w, w0.shape, format), name);
      assert(Number.isNaN(q.layers.get(name)!.proxyLoss), "no calibration, no proxy loss");
    }
  });
}

Deno.test("GPTQ and MR-GPTQ give a lower summed proxy loss than RTN, and finite NLLs", async () => {
  const seed = testSeed();
  const windows = tokenWindows(seed, 4, 128);
  const results = new Map<string, { loss: number; nll: number }>();
  for (const method of ["rtn", "gptq", "mr-gptq"] as const) {
    const model = tinyModel(seed);
    const q = await quantizeModel(model, windows, { format: "nvfp4", method });
    let loss = 0;
    for (const l of q.layers.values()) {
      assert(Number.isFinite(l.proxyLoss) && l.proxyLoss >= 0, `${method} ${l.name}`);
      loss += l.proxyLoss;
    }
    let nll = 0;
    for (const w of windows) {
      for (const v of await forwardNll(model, w, { linear: q.linear })) nll += v;
    }
    results.set(method, { loss, nll });
  }
  const r = results.get("rtn")!, g = results.get("gptq")!, m = results.get("mr-gptq")!;
  assert(g.loss < r.loss, `gptq ${g.loss} vs rtn ${r.loss} (seed ${seed})`);
  assert(m.loss < r.loss, `mr-gptq ${m.loss} vs rtn ${r.loss} (seed ${seed})`);
  assert(Number.isFinite(g.nll) && Number.isFinite(m.nll));
});

Deno.test("the online input transform equals fakeQuantize(hadamard(x)) bit for bit", async () => {
  const seed = testSeed();
  let s = seed;
  const x = Float32Array.from({ length: 8 * 64 }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * 4;
  });
  for (const act of ["nvfp4", "mxfp4", "int8", "fp8"]) {
    const spec = resolveSpec(act);
    sameBits(
      await transformInput(x, 8, 64, { rotation: { block: 32 }, act: spec }),
      fakeQuantize(hadamard(x, [8, 64], { block: 32 }), [8, 64], spec),
      `${act} rotated`,
    );
    sameBits(
      await transformInput(x, 8, 64, { rotation: null, act: spec }),
      fakeQuantize(x, [8, 64], spec),
      act,
    );
  }
  sameBits(
    await transformInput(x, 8, 64, { rotation: { block: 16 }, act: null }),
    hadamard(x, [8, 64], { block: 16 }),
    "rotation only",
  );
});

Deno.test("W4A4 quantizes activations: the NLL differs from W4A16's, and is finite", async () => {
  const seed = testSeed();
  const windows = tokenWindows(seed, 2, 64);
  const nll = async (actFormat: string | null) => {
    const model = tinyModel(seed);
    const q = await quantizeModel(model, windows, {
      format: "mxfp4",
      method: "mr-gptq",
      actFormat,
    });
    return await forwardNll(model, windows[0], { linear: q.linear });
  };
  const a16 = await nll(null), a4 = await nll("mxfp4");
  assert(a4.every(Number.isFinite));
  assert(a4.some((v, i) => v !== a16[i]), "activation quantization changed nothing");
});

Deno.test("bad options fail with a clear Error before any work", async () => {
  const seed = testSeed();
  const windows = tokenWindows(seed, 1, 32);
  const model = tinyModel(seed, {
    hidden_size: 48,
    num_attention_heads: 4,
    num_key_value_heads: 2,
  });
  await assertRejects(
    () => quantizeModel(model, windows, { format: "mxfp4", method: "rtn" }),
    Error,
    "not divisible by the group size 32",
  );
  await assertRejects(
    () => quantizeModel(model, windows, { format: "nvfp4", method: "rtn", hadamard: 32 }),
    Error,
    "not divisible by the rotation size 32",
  );
  await assertRejects(
    () => quantizeModel(model, windows, { format: "nvfp4", method: "rtn", hadamard: 12 }),
    Error,
    "power of two",
  );
  await assertRejects(
    () => quantizeModel(model, [], { format: "nvfp4", method: "gptq" }),
    Error,
    "needs calibration",
  );
  await assertRejects(
    () => quantizeModel(model, windows, { format: "fp8", method: "gptq" }),
    Error,
    "numeric group size",
  );
  await assertRejects(
    () => quantizeModel(model, windows, { format: "nvfp5", method: "rtn" }),
    Error,
    "unknown quantization preset",
  );
  await assertRejects(
    // deno-lint-ignore no-explicit-any
    () => quantizeModel(model, windows, { format: "nvfp4", method: "awq" as any }),
    Error,
    "unknown method",
  );
  // Nothing was touched by the failed calls.
  assertEquals(model.weight("model.layers.0.self_attn.q_proj.weight").dtype, "bf16");
});

Deno.test("engineInputsOf: every layer's input scheme, packed weights for the FP4 kernel formats only", async () => {
  const seed = testSeed();
  for (const [format, packed] of [["nvfp4", 14], ["mxfp4", 14], ["int4:g32", 0]] as const) {
    const q = await quantizeModel(tinyModel(seed), [], {
      format,
      method: "rtn",
      actFormat: format,
    });
    const { schemes, quantized } = engineInputsOf(q);
    assertEquals(schemes.size, 14);
    assertEquals(quantized.size, packed);
    for (const [name, w] of quantized) {
      const l = q.layers.get(name)!;
      assertEquals([w.n, w.k], [...l.quantized.shape]);
      assertEquals(w.codes.toArray(), l.quantized.codes);
      assert(schemes.get(name) === l.scheme);
    }
  }
});
