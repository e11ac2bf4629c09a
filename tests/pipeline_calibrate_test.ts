// Calibration windows and the Hessians the sequential pipeline captures, checked against
// H = (2 / n) X^T X of block inputs computed independently (block 1's inputs come from the
// *quantized* block 0: GPTQ's sequential propagation).
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { calibrationWindows, hessianGroup } from "../lib/pipeline/calibrate.ts";
import { quantizeModel } from "../lib/pipeline/quantize_model.ts";
import { embed, type Linear, nativeLinear, runLayer } from "../lib/model/forward.ts";
import { fakeQuantize } from "../lib/formats/quantize.ts";
import { toFloat32 } from "../lib/dtype.ts";
import { testSeed, tinyModel, tokenWindows } from "./pipeline_fixture.ts";

Deno.test("calibrationWindows takes the first N windows, fewer when short, none is an Error", () => {
  const ids = Int32Array.from({ length: 3 * 512 + 100 }, (_, i) => i);
  const w = calibrationWindows(ids, 2);
  assertEquals(w.length, 2);
  assertEquals([w[0][0], w[1][0], w[1][511]], [0, 512, 1023]);
  assertEquals(calibrationWindows(ids, 128).length, 3);
  assertThrows(() => calibrationWindows(new Int32Array(511), 4), Error, "fewer than one window");
  assertThrows(() => calibrationWindows(ids, 0), Error, "positive integer");
});

function gram(xs: Float32Array[], cols: number): Float64Array {
  const h = new Float64Array(cols * cols);
  let n = 0;
  for (const x of xs) {
    const rows = x.length / cols;
    n += rows;
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < cols; i++) {
        const xi = x[r * cols + i];
        for (let j = 0; j < cols; j++) h[i * cols + j] += xi * x[r * cols + j];
      }
    }
  }
  return h.map((v) => (2 / n) * v);
}

Deno.test("captured Hessians equal (2/n) X^T X of the block inputs, block 1 fed by quantized block 0", async () => {
  const seed = testSeed();
  const windows = tokenWindows(seed, 3, 64);
  const captured = new Map<string, Float32Array>();
  await quantizeModel(tinyModel(seed), windows, {
    format: "nvfp4",
    method: "rtn",
    onHessians: (_b, hs) => {
      for (const [g, h] of hs) captured.set(g, h.matrix());
    },
  });
  assertEquals(captured.size, 8); // 2 blocks x (qkv, o, gate/up, down)

  // Independently: record every linear input with the original weights, then quantize block 0
  // by fakeQuantize and propagate.
  const model = tinyModel(seed);
  const inputs = new Map<string, Float32Array[]>();
  const plain = nativeLinear(model);
  const record: Linear = (name, x, rows) => {
    const g = hessianGroup(name);
    if (g === name) inputs.set(g, [...(inputs.get(g) ?? []), x.slice()]);
    return plain(name, x, rows);
  };
  const states = windows.map((ids) => embed(model, ids));
  for (let b = 0; b < 2; b++) {
    for (const s of states) await runLayer(model, b, s.slice(), { linear: record });
    for (const name of model.linearNames().filter((n) => n.startsWith(`model.layers.${b}.`))) {
      const w = model.weight(`${name}.weight`);
      const f = fakeQuantize(toFloat32(w.data as Uint16Array, "bf16"), w.shape, "nvfp4");
      model.setWeight(`${name}.weight`, { dtype: "f32", shape: w.shape, data: f });
    }
    for (const s of states) await runLayer(model, b, s);
  }
  for (const [g, xs] of inputs) {
    const cols = model.weight(`${g}.weight`).shape[1];
    const want = gram(xs, cols);
    const got = captured.get(g)!;
    assert(got, `no Hessian for ${g}`);
    let scale = 0;
    for (const v of want) scale = Math.max(scale, Math.abs(v));
    for (let i = 0; i < want.length; i++) {
      assert(
        Math.abs(got[i] - want[i]) <= 1e-5 * scale,
        `${g}[${i}]: ${got[i]} vs ${want[i]} (seed ${seed})`,
      );
    }
  }
});
