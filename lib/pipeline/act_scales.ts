/**
 * Static (calibrated) activation tensor scales for W4A4 formats with a tensor scale (NVFP4).
 * By default a layer's input gets its tensor scale s_t from each call's own input (dynamic:
 * `amax / 2688` over the call's `[rows, in]`), which costs the quantizer a pass over the input
 * before it can choose any block scale. A static scale fixes s_t per layer from calibration
 * data, as deployed NVFP4 checkpoints do (compressed-tensors' `input_global_scale`): the largest
 * dynamic s_t any calibration window gave that layer's (rotated) input, so no calibration input
 * saturates; quantizing then reads the input once (lib/formats `tensorScale: number`).
 *
 * The calibration windows run through the quantized model on the CPU backend, every layer with
 * its dynamic scheme; layers that share an input (q/k/v, gate/up) share one scale.
 *
 * @module
 */
import { hadamardOn } from "../formats/native.ts";
import { quantize } from "../formats/quantize.ts";
import { resolveSpec } from "../formats/spec.ts";
import { embed, runLayer } from "../model/forward.ts";
import type { LlamaModel } from "../model/llama.ts";
import { Tensor } from "../tensor.ts";
import { type InputScheme, quantizedLinear } from "./act_quant.ts";
import { hessianGroup } from "./calibrate.ts";

/**
 * Whether activations of `scheme` can take a static tensor scale: its format has one (`amax`).
 *
 * @example
 * ```ts
 * import { takesStaticScale } from "./act_scales.ts";
 * import { resolveSpec } from "../formats/spec.ts";
 * console.assert(takesStaticScale({ rotation: null, act: resolveSpec("nvfp4") }));
 * console.assert(!takesStaticScale({ rotation: null, act: resolveSpec("mxfp4") }));
 * ```
 */
export function takesStaticScale(scheme: InputScheme): boolean {
  return scheme.act !== null && scheme.act.tensorScale === "amax";
}

/**
 * The static activation tensor scale of every layer in `schemes` whose format has an amax
 * tensor scale: the format's s_t of the largest |value| of the layer's (rotated) input over
 * `windows` (token ids), i.e. the largest dynamic s_t of any window, with `model` running the
 * given schemes. `onWindow` is called after each window.
 *
 * @example
 * ```ts
 * import { calibrateActScales } from "./act_scales.ts";
 * import { resolveSpec } from "../formats/spec.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 16,
 * }));
 * const scheme = { rotation: { block: 16 }, act: resolveSpec("nvfp4") };
 * const schemes = new Map([["model.layers.0.mlp.down_proj", scheme]]);
 * const s = await calibrateActScales(model, schemes, [new Int32Array([1, 2, 3])]);
 * console.assert(s.get("model.layers.0.mlp.down_proj")! > 0);
 * ```
 */
export async function calibrateActScales(
  model: LlamaModel,
  schemes: ReadonlyMap<string, InputScheme>,
  windows: readonly Int32Array[],
  onWindow: () => void = () => {},
): Promise<Map<string, number>> {
  if (windows.length === 0) throw new Error("static activation scales need calibration windows");
  const dynamic = quantizedLinear(model, schemes);
  const amax = new Map<string, number>();
  let last: { group: string; x: Float32Array } | null = null;
  const linear = async (name: string, x: Float32Array, rows: number) => {
    const scheme = schemes.get(name);
    const group = hessianGroup(name);
    if (scheme && takesStaticScale(scheme) && !(last?.group === group && last.x === x)) {
      last = { group, x };
      const a = await inputAmax(x, rows, scheme);
      amax.set(group, Math.max(amax.get(group) ?? 0, a));
    }
    return await dynamic(name, x, rows);
  };
  for (const ids of windows) {
    const hidden = embed(model, ids);
    for (let b = 0; b < model.config.numLayers; b++) await runLayer(model, b, hidden, { linear });
    onWindow();
  }
  const out = new Map<string, number>();
  for (const [name, scheme] of schemes) {
    if (!takesStaticScale(scheme)) continue;
    const a = amax.get(hessianGroup(name));
    if (a === undefined) throw new Error(`no calibration input reached "${name}"`);
    if (a === 0) throw new Error(`the calibration inputs of "${name}" are all zero`);
    out.set(name, amaxScale(a, scheme));
  }
  return out;
}

// max |value| of the layer's input as its activation quantizer sees it (rotated).
async function inputAmax(x: Float32Array, rows: number, scheme: InputScheme): Promise<number> {
  let v = x;
  if (scheme.rotation) {
    using t = Tensor.from(x, [rows, x.length / rows]);
    using y = await hadamardOn("cpu", t, scheme.rotation);
    v = y.toArray() as Float32Array;
  }
  let a = 0;
  for (let i = 0; i < v.length; i++) a = Math.max(a, Math.abs(v[i]));
  return a;
}

// The format's own amax rule for a tensor whose largest |value| is `a`: one group holding it.
function amaxScale(a: number, scheme: InputScheme): number {
  const spec = scheme.act!;
  const g = typeof spec.groupSize === "number" ? spec.groupSize : 1;
  const probe = new Float32Array(g);
  probe[0] = a;
  return quantize(probe, [1, g], spec).tensorScale!;
}

/**
 * `scheme` with its activation format's tensor scale fixed to `scale` (a static scale).
 *
 * @example
 * ```ts
 * import { staticScheme } from "./act_scales.ts";
 * import { resolveSpec } from "../formats/spec.ts";
 * const s = staticScheme({ rotation: null, act: resolveSpec("nvfp4") }, 0.25);
 * console.assert(s.act!.tensorScale === 0.25);
 * ```
 */
export function staticScheme(scheme: InputScheme, scale: number): InputScheme {
  if (!takesStaticScale(scheme)) {
    throw new Error(
      "a static activation scale needs an activation format with an amax tensor scale",
    );
  }
  return Object.freeze({
    rotation: scheme.rotation,
    act: resolveSpec({ ...scheme.act!, tensorScale: scale }),
  });
}
