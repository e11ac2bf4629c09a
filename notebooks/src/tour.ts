// %% [markdown]
// # A tour of fp4lab
//
// fp4lab runs from this notebook on the Deno kernel: the TypeScript API in `mod.ts`, the native
// library behind it (CPU always, CUDA when a GPU is there), and inline Observable Plot figures.
// %%
import * as fp4 from "../mod.ts";
const cuda = fp4.cudaStatus();
({ cuda: cuda.available ? cuda.name : `not available: ${cuda.reason}`, device: fp4.defaultDevice() });
// %% [markdown]
// ## Tensors
//
// A `Tensor` holds a dtype, a shape, a device and its data. Device memory is freed with
// `dispose()` or `using`.
// %%
const x = new Float32Array(1024).map(() => Math.random() * 2 - 1);
using t = fp4.Tensor.from(x, [32, 32]);
({ dtype: t.dtype, shape: t.shape, device: t.device, bytes: t.byteLength });
// %% [markdown]
// ## BF16 rounding
//
// The 16-bit storage types convert exactly to f32 and round to nearest-even from it. The figure
// shows the rounding error of BF16 over a range of values: relative error stays within the unit roundoff 2^-8.
// %%
import * as Plot from "@observablehq/plot";
import { DOMParser } from "linkedom";
const document = new DOMParser().parseFromString("<!DOCTYPE html><html></html>", "text/html");
const points = Array.from({ length: 400 }, (_, i) => {
  const v = 2 ** (i / 50 - 4) * (1 + Math.random());
  const r = fp4.bf16ToF32(fp4.f32ToBf16(v));
  return { value: v, relError: (r - v) / v };
});
const worst = Math.max(...points.map((p) => Math.abs(p.relError)));
if (worst > 2 ** -8) throw new Error(`bf16 relative error ${worst} exceeds 2^-8`);
Plot.plot({
  document,
  x: { type: "log", label: "value" },
  y: { label: "relative error of bf16" },
  marks: [Plot.dot(points, { x: "value", y: "relError", r: 1.5 }), Plot.ruleY([0])],
});
