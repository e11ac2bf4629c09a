/**
 * Static (calibrated) activation tensor scales for W4A4 formats with a tensor scale (NVFP4).
 * By default a layer's input gets its tensor scale s_t from each call's own input (dynamic:
 * `amax / 2688` over the call's `[rows, in]`), which costs the quantizer a pass over the input
 * before it can choose any block scale. A static scale fixes s_t per layer from calibration
 * data, as deployed NVFP4 checkpoints do (compressed-tensors' `input_global_scale`): the largest
 * dynamic s_t any calibration window gave that layer's (rotated) input, so no calibration input
 * saturates; quantizing then reads the input once (lib/formats `tensorScale: number`).
 *
 * The calibration windows run through the quantized model on the decode engine (CPU or CUDA),
 * every layer with its dynamic scheme; layers that share an input (q/k/v, gate/up) share one
 * scale. A layer whose calibration inputs are all zero gets s_t = 1 (the amax rule's value).
 *
 * @module
 */
import type { Device } from "../device.ts";
import { disposeQuantized, quantizeOn, rotateQuantizeOn } from "../formats/native.ts";
import { resolveSpec } from "../formats/spec.ts";
import { DecodeEngine } from "../generate/engine.ts";
import type { LlamaModel } from "../model/llama.ts";
import type { Tensor } from "../tensor.ts";
import type { InputScheme } from "./act_quant.ts";
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

/** Options of {@linkcode calibrateActScales}. */
export interface ActScaleOptions {
  /** Where the calibration windows run (default `"cpu"`). */
  device?: Device;
  /** Called after each window. */
  onWindow?: () => void;
}

/**
 * The static activation tensor scale of every layer in `schemes` whose format has an amax
 * tensor scale: the largest dynamic s_t (`amax / 2688` of NVFP4) that the layer's (rotated)
 * input gets in any of `windows` (token ids), with `model` running the given schemes on a
 * {@linkcode DecodeEngine} of `options.device`. The largest s_t is the s_t of the largest
 * |value|: the amax rule is monotonic.
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
  options: ActScaleOptions = {},
): Promise<Map<string, number>> {
  if (windows.length === 0) throw new Error("static activation scales need calibration windows");
  const device = options.device ?? "cpu";
  const longest = Math.max(...windows.map((w) => w.length));
  using engine = DecodeEngine.create(model, {
    device,
    contextLength: Math.min(longest, model.config.maxPositionEmbeddings),
    graphs: false,
    schemes,
  });
  const byGroup = new Map<string, number>();
  const observe = async (name: string, x: Tensor) => {
    const scheme = schemes.get(name);
    if (!scheme || !takesStaticScale(scheme)) return;
    const q = scheme.rotation
      ? await rotateQuantizeOn(device, x, scheme.rotation, scheme.act!)
      : await quantizeOn(device, x, scheme.act!);
    try {
      const s = (q.tensorScale!.toArray() as Float32Array)[0];
      const group = hessianGroup(name);
      byGroup.set(group, Math.max(byGroup.get(group) ?? 0, s));
    } finally {
      disposeQuantized(q);
    }
  };
  for (const ids of windows) {
    using hidden = engine.embed(ids);
    for (let b = 0; b < model.config.numLayers; b++) await engine.runBlock(b, hidden, observe);
    options.onWindow?.();
  }
  const out = new Map<string, number>();
  for (const [name, scheme] of schemes) {
    if (!takesStaticScale(scheme)) continue;
    const s = byGroup.get(hessianGroup(name));
    if (s === undefined) throw new Error(`no calibration input reached "${name}"`);
    out.set(name, s);
  }
  return out;
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
