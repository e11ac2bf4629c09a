/**
 * Calibration for sequential (block-by-block) quantization: the calibration windows of the
 * protocol in DESIGN.md, and the capture of a block's linear-layer inputs into Hessians
 * H = (2 / n) X^T X through the forward pass's {@linkcode Linear} hook. Layers that read the
 * same input share one Hessian: q/k/v (the attention input) and gate/up (the MLP input); o and
 * down have their own.
 *
 * @module
 */
import { Hessian } from "../gptq/hessian.ts";
import { type Linear, nativeLinear } from "../model/forward.ts";
import type { LlamaModel } from "../model/llama.ts";
import { WINDOW_TOKENS } from "../model/perplexity.ts";

/** Default number of calibration windows (DESIGN.md). */
export const DEFAULT_CALIBRATION_WINDOWS = 128;

/**
 * The first `count` consecutive windows of `windowTokens` tokens of `ids` (fewer when the text
 * is shorter). Throws when not even one window fits.
 *
 * @example
 * ```ts
 * import { calibrationWindows } from "./calibrate.ts";
 * const w = calibrationWindows(new Int32Array(1200), 128);
 * console.assert(w.length === 2 && w[0].length === 512);
 * ```
 */
export function calibrationWindows(
  ids: Int32Array,
  count: number = DEFAULT_CALIBRATION_WINDOWS,
  windowTokens: number = WINDOW_TOKENS,
): Int32Array[] {
  if (!Number.isInteger(count) || count < 1) {
    throw new Error(`the number of calibration windows must be a positive integer, got ${count}`);
  }
  const n = Math.min(count, Math.floor(ids.length / windowTokens));
  if (n < 1) {
    throw new Error(
      `the calibration text has ${ids.length} tokens, fewer than one window of ${windowTokens}`,
    );
  }
  return Array.from({ length: n }, (_, i) => ids.slice(i * windowTokens, (i + 1) * windowTokens));
}

/**
 * The Hessian group of a linear layer: the name of the layer whose input it shares (the first
 * of q/k/v, of gate/up), or the layer itself.
 *
 * @example
 * ```ts
 * import { hessianGroup } from "./calibrate.ts";
 * console.assert(hessianGroup("model.layers.3.self_attn.v_proj") === "model.layers.3.self_attn.q_proj");
 * console.assert(hessianGroup("model.layers.3.mlp.down_proj") === "model.layers.3.mlp.down_proj");
 * ```
 */
export function hessianGroup(name: string): string {
  return name.replace(/\.self_attn\.[kv]_proj$/, ".self_attn.q_proj").replace(
    /\.mlp\.up_proj$/,
    ".mlp.gate_proj",
  );
}

/**
 * The linear layers of decoder block `layer`, in forward order.
 *
 * @example
 * ```ts
 * import { blockLinears } from "./calibrate.ts";
 * console.assert(blockLinears(2)[6] === "model.layers.2.mlp.down_proj");
 * ```
 */
export function blockLinears(layer: number): string[] {
  const p = `model.layers.${layer}`;
  return [
    ...["q", "k", "v", "o"].map((s) => `${p}.self_attn.${s}_proj`),
    ...["gate", "up", "down"].map((s) => `${p}.mlp.${s}_proj`),
  ];
}

/**
 * Streams the inputs of one block's linear layers into Hessians while the block runs with its
 * current weights: pass {@linkcode HessianCapture.linear} as the forward pass's hook.
 *
 * @example
 * ```ts
 * import { HessianCapture } from "./calibrate.ts";
 * import { embed, runLayer } from "../model/forward.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 8, intermediate_size: 8, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 4,
 * }));
 * const capture = new HessianCapture(model, 0);
 * await runLayer(model, 0, embed(model, new Int32Array([1, 2, 3])), { linear: capture.linear });
 * await capture.flush();
 * console.assert(capture.hessians.get("model.layers.0.self_attn.q_proj")!.samples === 3);
 * ```
 */
export class HessianCapture {
  /** Hessian per group (keyed by {@linkcode hessianGroup}). */
  readonly hessians: Map<string, Hessian> = new Map();
  /** The hook: records the input, then computes the layer with the model's weights. */
  readonly linear: Linear;
  #pending: Promise<void>[] = [];

  /** A capture for block `layer` of `model` (Hessians accumulate on the CPU). */
  constructor(model: LlamaModel, layer: number) {
    const names = new Set(blockLinears(layer));
    const last = new Map<string, Float32Array>();
    const plain = nativeLinear(model);
    this.linear = (name, x, rows) => {
      if (names.has(name)) {
        const group = hessianGroup(name);
        // q/k/v (and gate/up) receive the very same array: count it once.
        if (last.get(group) !== x) {
          last.set(group, x);
          let h = this.hessians.get(group);
          if (!h) {
            h = new Hessian(model.weight(`${name}.weight`).shape[1]);
            this.hessians.set(group, h);
          }
          this.#pending.push(h.add(x, rows));
        }
      }
      return plain(name, x, rows);
    };
  }

  /** Waits until every captured input is in its Hessian (rejects if one failed). */
  async flush(): Promise<void> {
    const pending = this.#pending;
    this.#pending = [];
    await Promise.all(pending);
  }
}
