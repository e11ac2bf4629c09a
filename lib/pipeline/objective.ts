/**
 * What GPTQ minimises per layer in {@linkcode quantizeModel}, and the block calibration that
 * gathers it. X are the unquantized inputs of a linear layer in the quantized model's stream,
 * X~ = R^T Q_a(R X) what its FP4 GEMM sees (the online rotation R and activation quantization
 * Q_a of act_quant.ts, brought back to the original space; X~ = X without an activation
 * format), X_fp the inputs of the full-precision model (a second stream run alongside):
 *
 * - `"weights"`: ||(W - Q) X|| with H = X^T X: GPTQ and MR-GPTQ as published (HessianCapture);
 * - `"act"`: ||(W - Q) X~||: the Hessian of the inputs the GEMM sees;
 * - `"output"`: ||W X - Q X~||: asymmetric, the layer's own unquantized input as reference;
 * - `"teacher"`: ||W X_fp - Q X~||: asymmetric against the full-precision model (GPTAQ), which
 *   also asks the weights to undo the error of the blocks quantized before.
 *
 * The asymmetric objectives run GPTQ on the least-squares target W* with H~ (lib/gptq
 * asymmetric.ts). Within a block the calibration pass computes every layer with the full-
 * precision weights on its X~ (the outputs of q/k/v and gate/up feeding o and down are then
 * those of activation-quantized inputs); the teacher stream runs plainly.
 *
 * @module
 */
import { inverseHadamard } from "../formats/hadamard.ts";
import { AsymmetricTarget, CrossCovariance } from "../gptq/asymmetric.ts";
import { Hessian } from "../gptq/hessian.ts";
import type { GptqMethod } from "../gptq/layer.ts";
import { type Linear, nativeLinear, runLayer } from "../model/forward.ts";
import type { LlamaModel } from "../model/llama.ts";
import { type InputScheme, transformInput } from "./act_quant.ts";
import { blockLinears, hessianGroup } from "./calibrate.ts";

/** The per-layer objectives of {@linkcode quantizeModel} (see the module doc). */
export type CalibrationObjective = "weights" | "act" | "output" | "teacher";

/** Every {@linkcode CalibrationObjective}. */
export const OBJECTIVES: readonly CalibrationObjective[] = ["weights", "act", "output", "teacher"];

/**
 * The objective of a run: `given` when set (RTN ignores it: it has no objective), else
 * `"weights"` (GPTQ as published); `"teacher"` runs on the CPU pipeline only.
 * `"output"` measured best for MR-GPTQ W4A4 on brown-llama-29m
 * (bench/results/accuracy-objective-brown-llama-29m-2026-11-23.md). Throws on an unknown name.
 *
 * @example
 * ```ts
 * import { resolveObjective } from "./objective.ts";
 * console.assert(resolveObjective("mr-gptq", true) === "weights");
 * console.assert(resolveObjective("mr-gptq", true, "output") === "output");
 * console.assert(resolveObjective("rtn", true, "teacher") === "weights");
 * ```
 */
export function resolveObjective(
  method: GptqMethod,
  _actQuant: boolean,
  given?: CalibrationObjective,
): CalibrationObjective {
  if (given !== undefined && !OBJECTIVES.includes(given)) {
    throw new Error(`unknown objective "${given}"; expected one of ${OBJECTIVES.join(", ")}`);
  }
  if (method === "rtn") return "weights";
  return given ?? "weights";
}

/** The GEMM's view of `x` (`[rows, cols]`) under `scheme`, in the original (unrotated) space. */
async function gemmInput(
  x: Float32Array,
  rows: number,
  cols: number,
  scheme: InputScheme,
): Promise<Float32Array> {
  if (!scheme.act) return x;
  const y = await transformInput(x, rows, cols, scheme);
  return scheme.rotation ? inverseHadamard(y, [rows, cols], scheme.rotation) : y;
}

/**
 * One block's calibration for an objective other than `"weights"`: H~ per Hessian group and,
 * for the asymmetric objectives, the cross term D = (2 / n) (X_ref - X~)^T X~. Run every window
 * with {@linkcode ObjectiveCapture.window}, then read {@linkcode hessians} and
 * {@linkcode target}.
 *
 * @example
 * ```ts
 * import { ObjectiveCapture } from "./objective.ts";
 * import { embed } from "../model/forward.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 4,
 * }));
 * const c = new ObjectiveCapture(model, 0, "output", { rotation: null, act: null });
 * await c.window(embed(model, new Int32Array([1, 2, 3])), null);
 * console.assert(c.hessians.get("model.layers.0.mlp.down_proj")!.samples === 3);
 * ```
 */
export class ObjectiveCapture {
  /** H~ per group (keyed by lib/pipeline/calibrate `hessianGroup`). */
  readonly hessians: Map<string, Hessian> = new Map();
  readonly #cross = new Map<string, CrossCovariance>();
  readonly #targets = new Map<string, AsymmetricTarget>();
  readonly #model: LlamaModel;
  readonly #layer: number;
  readonly #names: Set<string>;
  readonly #objective: CalibrationObjective;
  readonly #scheme: InputScheme;

  /** A capture for block `layer` of `model` whose linears will have the input `scheme`. */
  constructor(
    model: LlamaModel,
    layer: number,
    objective: CalibrationObjective,
    scheme: InputScheme,
  ) {
    if (objective === "weights" || !OBJECTIVES.includes(objective)) {
      throw new Error(`ObjectiveCapture: objective "${objective}" is not one it gathers`);
    }
    this.#model = model;
    this.#layer = layer;
    this.#names = new Set(blockLinears(layer));
    this.#objective = objective;
    this.#scheme = scheme;
  }

  /**
   * Runs one window through the block (its current, full-precision weights): `state` is the
   * quantized model's residual stream entering the block (left unchanged); `teacher` the
   * full-precision model's (required by `"teacher"`, advanced through the block in place).
   */
  async window(state: Float32Array, teacher: Float32Array | null): Promise<void> {
    const plain = nativeLinear(this.#model);
    const reference = new Map<string, Float32Array>();
    if (this.#objective === "teacher") {
      if (!teacher) throw new Error('the "teacher" objective needs the full-precision stream');
      await runLayer(this.#model, this.#layer, teacher, {
        linear: (name, x, rows) => {
          if (this.#names.has(name)) reference.set(hessianGroup(name), x);
          return plain(name, x, rows);
        },
      });
    }
    const pending: Promise<void>[] = [];
    let last: { x: Float32Array; xq: Float32Array } | null = null;
    const linear: Linear = async (name, x, rows) => {
      if (!this.#names.has(name)) return plain(name, x, rows);
      const cols = x.length / rows;
      // q/k/v (and gate/up) receive the very same array: transform and count it once.
      if (last?.x !== x) {
        last = { x, xq: await gemmInput(x, rows, cols, this.#scheme) };
        pending.push(this.#add(hessianGroup(name), x, last.xq, rows, cols, reference));
      }
      return plain(name, last.xq, rows);
    };
    // The block's output is thrown away: only its linears' inputs are wanted here.
    await runLayer(this.#model, this.#layer, state.slice(), { linear });
    await Promise.all(pending);
  }

  async #add(
    group: string,
    x: Float32Array,
    xq: Float32Array,
    rows: number,
    cols: number,
    reference: Map<string, Float32Array>,
  ): Promise<void> {
    let h = this.hessians.get(group);
    if (!h) this.hessians.set(group, h = new Hessian(cols));
    const adds = [h.add(xq, rows)];
    if (this.#objective !== "act") {
      const ref = this.#objective === "teacher" ? reference.get(group) : x;
      if (!ref || ref.length !== xq.length) {
        throw new Error(`internal: no reference input for ${group} in this window`);
      }
      const e = new Float32Array(xq.length);
      for (let i = 0; i < e.length; i++) e[i] = ref[i] - xq[i];
      let c = this.#cross.get(group);
      if (!c) this.#cross.set(group, c = new CrossCovariance(cols));
      adds.push(c.add(e, xq, rows));
    }
    await Promise.all(adds);
  }

  /**
   * The weights GPTQ should round for layer `name` (`w`: rows x cols, original space): `w`
   * itself for `"act"`, the least-squares target W* of lib/gptq asymmetric.ts otherwise, with
   * GPTQ's relative damping `damp` (default 0.01) as its ridge.
   */
  async target(name: string, w: Float32Array, rows: number, damp = 0.01): Promise<Float32Array> {
    const group = hessianGroup(name);
    const cross = this.#cross.get(group);
    if (this.#objective === "act") return w;
    if (!cross) throw new Error(`no calibration inputs were seen for ${name}`);
    let t = this.#targets.get(group);
    if (!t) {
      const h = this.hessians.get(group)!;
      this.#targets.set(group, t = new AsymmetricTarget(h.matrix(), cross.matrix(), h.cols, damp));
    }
    return await t.apply(w, rows);
  }
}
