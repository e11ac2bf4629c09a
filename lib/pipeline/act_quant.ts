/**
 * The forward-pass side of a quantized linear layer: what an FP4 engine does to a layer's
 * input before the GEMM. With a rotation the input is rotated by the same block Hadamard
 * transform as the stored weights (which live in the rotated space, so (x R) (W R)^T = x W^T
 * up to quantization); with an activation format the (rotated) input is then quantized
 * on the fly, per call, with the format's scale rule (dynamic scales, including NVFP4's
 * per-tensor scale over the call's `[rows, in]` input), and the GEMM sees its dequantized
 * values. The native CPU kernels compute exactly lib/formats `hadamard` / `quantize` /
 * `dequantize` (tested bit for bit).
 *
 * @module
 */
import type { HadamardOptions } from "../formats/hadamard.ts";
import {
  dequantizeOn,
  disposeQuantized,
  hadamardOn,
  quantizeOn,
  rotateQuantizeOn,
} from "../formats/native.ts";
import type { QuantSpec } from "../formats/spec.ts";
import { type Linear, matmulWeight, nativeLinear } from "../model/forward.ts";
import type { LlamaModel } from "../model/llama.ts";
import { Tensor } from "../tensor.ts";

/** How one quantized linear layer treats its input. */
export interface InputScheme {
  /** Block Hadamard rotation of the input features (the weights are stored rotated), or null. */
  readonly rotation: HadamardOptions | null;
  /** Format the (rotated) input is fake-quantized to on the fly (W4A4), or null (W4A16). */
  readonly act: QuantSpec | null;
}

/**
 * The input `x` (`[rows, cols]` f32) as the GEMM of a layer with `scheme` sees it: rotated,
 * then quantized and dequantized, on the native CPU backend. Returns `x` itself when the
 * scheme does nothing.
 *
 * @example
 * ```ts
 * import { transformInput } from "./act_quant.ts";
 * import { resolveSpec } from "../formats/spec.ts";
 * const x = new Float32Array([1, 1, 1, 1]);
 * const y = await transformInput(x, 1, 4, { rotation: { block: 4 }, act: resolveSpec("mxfp4:g4") });
 * console.assert(y.join() === "2,0,0,0");
 * ```
 */
export async function transformInput(
  x: Float32Array,
  rows: number,
  cols: number,
  scheme: InputScheme,
): Promise<Float32Array> {
  if (!scheme.rotation && !scheme.act) return x;
  using xt = Tensor.from(x, [rows, cols]);
  if (!scheme.act) {
    using y = await hadamardOn("cpu", xt, scheme.rotation!);
    return (y.toArray() as Float32Array).slice();
  }
  const q = scheme.rotation
    ? await rotateQuantizeOn("cpu", xt, scheme.rotation, scheme.act)
    : await quantizeOn("cpu", xt, scheme.act);
  try {
    using y = await dequantizeOn("cpu", q, "f32");
    return (y.toArray() as Float32Array).slice();
  } finally {
    disposeQuantized(q);
  }
}

/**
 * The {@linkcode Linear} hook of a quantized model: layers named in `schemes` get their input
 * transformed by {@linkcode transformInput} and multiplied by the model's (dequantized,
 * rotated-space) weight; every other layer (e.g. `lm_head`) is the plain native matmul.
 * Consecutive calls with the same input array and scheme (q/k/v, gate/up) reuse one transform,
 * so callers must not modify an input array in place and pass it again.
 *
 * @example
 * ```ts
 * import { quantizedLinear } from "./act_quant.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 4,
 * }));
 * const linear = quantizedLinear(model, new Map());
 * console.assert((await linear("lm_head", new Float32Array(8), 1)).length === 4);
 * ```
 */
export function quantizedLinear(
  model: LlamaModel,
  schemes: ReadonlyMap<string, InputScheme>,
): Linear {
  const plain = nativeLinear(model);
  // q/k/v (and gate/up) are called with the same input array, which the forward pass does not
  // modify in between: its transform is computed once.
  let last: { x: Float32Array; scheme: InputScheme; out: Float32Array } | null = null;
  return async (name, x, rows) => {
    const scheme = schemes.get(name);
    if (!scheme) return await plain(name, x, rows);
    const w = model.weight(`${name}.weight`);
    if (!last || last.x !== x || last.scheme !== scheme || last.out.length !== x.length) {
      last = { x, scheme, out: await transformInput(x, rows, w.shape[1], scheme) };
    }
    return await matmulWeight(last.out, rows, w);
  };
}
