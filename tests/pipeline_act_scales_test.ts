// Static activation scales (lib/pipeline/act_scales.ts): each layer's calibrated s_t is the
// largest dynamic s_t its (rotated) input gets over the calibration windows, recomputed here
// with the TypeScript reference on inputs captured by lib/model's forward pass (the engine's
// attention sums in another order, so the inputs agree to f32 rounding and the scales to 1e-5
// relative); on CUDA (bf16 activations) within 2^-3 of the CPU engine's. quantizeModel installs
// them (shared by q/k/v and gate/up), they change the W4A4 forward pass, and bad requests fail.
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { calibrateActScales, staticScheme } from "../lib/pipeline/act_scales.ts";
import { type InputScheme, quantizedLinear } from "../lib/pipeline/act_quant.ts";
import { quantizeModel } from "../lib/pipeline/quantize_model.ts";
import { hadamard } from "../lib/formats/hadamard.ts";
import { quantize } from "../lib/formats/quantize.ts";
import { resolveSpec } from "../lib/formats/spec.ts";
import { embed, forwardLogits, runLayer } from "../lib/model/forward.ts";
import { blockLinears } from "../lib/pipeline/calibrate.ts";
import { cudaStatus } from "../lib/device.ts";
import { testSeed, tinyModel, tokenWindows } from "./pipeline_fixture.ts";

const ACT = resolveSpec("nvfp4");

function schemesOf(rotation: InputScheme["rotation"]): Map<string, InputScheme> {
  const scheme: InputScheme = { rotation, act: ACT };
  return new Map([0, 1].flatMap((b) => blockLinears(b)).map((n) => [n, scheme]));
}

for (const rotation of [null, { block: 16 }]) {
  Deno.test(`calibrated scales are the largest reference s_t of each layer's input over the windows (rotation ${rotation?.block ?? "none"})`, async () => {
    const seed = testSeed();
    const model = tinyModel(seed);
    const schemes = schemesOf(rotation);
    const windows = tokenWindows(seed, 3, 40);
    const scales = await calibrateActScales(model, schemes, windows);
    assertEquals(scales.size, 14);

    // Capture every layer's input on the same (dynamic) forward pass, and take the reference's
    // dynamic NVFP4 tensor scale of its rotated copy, window by window.
    const want = new Map<string, number>();
    const dynamic = quantizedLinear(model, schemes);
    const capture = async (name: string, x: Float32Array, rows: number) => {
      const cols = x.length / rows;
      const v = rotation ? hadamard(x, [rows, cols], rotation) : x;
      const s = quantize(v, [rows, cols], ACT).tensorScale!;
      want.set(name, Math.max(want.get(name) ?? 0, s));
      return await dynamic(name, x, rows);
    };
    for (const ids of windows) {
      const h = embed(model, ids);
      for (let b = 0; b < 2; b++) await runLayer(model, b, h, { linear: capture });
    }
    for (const [name, s] of scales) {
      const w = want.get(name)!;
      assert(Math.abs(s - w) <= 1e-5 * w, `${name}: ${s} vs ${w} (seed ${seed})`);
    }
    // Layers reading one input share its scale; different inputs get different ones.
    const q = "model.layers.1.self_attn.q_proj";
    assertEquals(scales.get("model.layers.1.self_attn.v_proj"), scales.get(q));
    assert(scales.get("model.layers.1.mlp.down_proj") !== scales.get(q));
    // The maximum over windows: never below any single window's scale, equal to one of them.
    const single = await Promise.all(windows.map((w) => calibrateActScales(model, schemes, [w])));
    for (const [name, s] of scales) {
      const each = single.map((m) => m.get(name)!);
      assertEquals(s, Math.max(...each), name);
    }
  });
}

Deno.test("quantizeModel with static activation scales installs them and they change the forward pass", async () => {
  const seed = testSeed();
  const windows = tokenWindows(seed, 2, 48);
  const options = { format: "nvfp4", method: "rtn", actFormat: "nvfp4" } as const;
  const dyn = await quantizeModel(tinyModel(seed), windows, options);
  const stat = await quantizeModel(tinyModel(seed), windows, { ...options, actScale: "static" });
  assertEquals(dyn.actScale, "dynamic");
  assertEquals(stat.actScale, "static");
  const l = (n: string) => stat.layers.get(`model.layers.0.${n}`)!.scheme;
  assert(l("self_attn.q_proj") === l("self_attn.k_proj"), "q/k/v share one scheme");
  assert(l("mlp.gate_proj") === l("mlp.up_proj"), "gate/up share one scheme");
  // RTN weights are the same in both runs, so the scales equal a calibration of the dynamic
  // model (the calibration pass runs every layer with its dynamic scheme).
  const schemes = new Map([...dyn.layers].map(([n, x]) => [n, x.scheme]));
  const scales = await calibrateActScales(dyn.model, schemes, windows);
  for (const [name, layer] of stat.layers) {
    assertEquals(layer.scheme.act!.tensorScale, scales.get(name), name);
    assertEquals(layer.scheme.rotation, dyn.layers.get(name)!.scheme.rotation);
  }
  const ids = tokenWindows(seed + 1, 1, 32)[0];
  const a = await forwardLogits(dyn.model, ids, { linear: dyn.linear });
  const b = await forwardLogits(stat.model, ids, { linear: stat.linear });
  assert(a.some((v, i) => v !== b[i]), "static scales left every logit unchanged");
});

Deno.test("static activation scales are refused where they make no sense", async () => {
  const seed = testSeed();
  const windows = tokenWindows(seed, 1, 16);
  const run = (o: Record<string, unknown>, w = windows) =>
    quantizeModel(tinyModel(seed), w, { format: "nvfp4", method: "rtn", ...o });
  await assertRejects(() => run({ actScale: "static" }), Error, "needs an activation format");
  await assertRejects(
    () => run({ actFormat: "mxfp4", actScale: "static" }),
    Error,
    "does not have",
  );
  await assertRejects(
    () => run({ actFormat: "nvfp4", actScale: "static" }, []),
    Error,
    "needs calibration windows",
  );
  await assertRejects(() => run({ actFormat: "nvfp4", actScale: "yes" }), Error, "--act-scale");
  assertThrows(
    () => staticScheme({ rotation: null, act: resolveSpec("mxfp4") }, 0.5),
    Error,
    "amax tensor scale",
  );
  await assertRejects(
    () => calibrateActScales(tinyModel(seed), schemesOf(null), []),
    Error,
    "need calibration windows",
  );
});

Deno.test({
  name: "CUDA calibration of static scales agrees with the CPU engine's",
  ignore: !cudaStatus().available,
  fn: async () => {
    const seed = testSeed();
    const model = tinyModel(seed);
    const schemes = schemesOf({ block: 16 });
    const windows = tokenWindows(seed, 2, 40);
    const cpu = await calibrateActScales(model, schemes, windows);
    const cuda = await calibrateActScales(model, schemes, windows, { device: "cuda" });
    // Measured on an H100 over 40 seeds (2026-12-07): the worst layer of a seed differs by 1.5 %
    // (median) to 7.5 % (max), always o_proj or down_proj, whose inputs come out of bf16 softmax
    // and SiLU; 9 of the 40 exceeded the 2^-5 first assumed here. The statistic itself is pinned
    // exactly by the CPU tests above.
    const bound = 2 ** -3;
    for (const [name, s] of cpu) {
      const g = cuda.get(name)!;
      assert(Math.abs(g - s) <= bound * s, `${name}: cuda ${g} vs cpu ${s} (seed ${seed})`);
    }
    // The CUDA pipeline installs its own calibration (RTN: the same weights as on the CPU).
    const o = { format: "nvfp4", method: "rtn", actFormat: "nvfp4", actScale: "static" } as const;
    const a = await quantizeModel(tinyModel(seed), windows, o);
    const b = await quantizeModel(tinyModel(seed), windows, { ...o, device: "cuda" });
    for (const [name, l] of a.layers) {
      const s = l.scheme.act!.tensorScale as number;
      const g = b.layers.get(name)!.scheme.act!.tensorScale as number;
      assert(Math.abs(g - s) <= bound * s, `pipeline ${name}: cuda ${g} vs cpu ${s}`);
    }
  },
});
