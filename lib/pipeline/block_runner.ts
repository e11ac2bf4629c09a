/**
 * Where sequential quantization runs its per-block work: the calibration windows' residual
 * streams, the block forward passes that capture Hessians (calibrate) and feed the next block
 * (propagate), and the weights those passes use. {@linkcode cpuBlockRunner} keeps f32 streams on
 * the host and runs lib/model's forward pass; {@linkcode cudaBlockRunner} keeps them on the GPU
 * and runs the decode engine's kernels (BF16 activations between ops, f32 residual stream and
 * Hessians, the quantized layers' input schemes on the device), so that nothing but the GPTQ
 * bookkeeping of one layer at a time touches the host.
 *
 * @module
 */
import { checkAsync, native } from "../../ffi/library.ts";
import { deviceId } from "../device.ts";
import { abiDType, toFloat32 } from "../dtype.ts";
import { hadamard, type HadamardOptions, inverseHadamard } from "../formats/hadamard.ts";
import { disposeQuantized, fakeQuantizeOn } from "../formats/native.ts";
import { AsymmetricTarget, CrossCovariance } from "../gptq/asymmetric.ts";
import { DecodeEngine } from "../generate/engine.ts";
import { Hessian } from "../gptq/hessian.ts";
import { embed, type Linear, runLayer } from "../model/forward.ts";
import type { LlamaModel, Weight } from "../model/llama.ts";
import type { Tensor } from "../tensor.ts";
import type { Quantized } from "../formats/quantize.ts";
import { fp4WeightsOf } from "../kernels/fp4_linear.ts";
import type { InputScheme } from "./act_quant.ts";
import { blockLinears, HessianCapture, hessianGroup } from "./calibrate.ts";
import { type CalibrationObjective, ObjectiveCapture } from "./objective.ts";

/** The block-level operations of sequential quantization over a fixed set of windows. */
export interface BlockRunner {
  /** Calibration windows held. */
  readonly windows: number;
  /**
   * The rotation whose Hessians {@linkcode calibrate} returns (those of the rotated inputs,
   * R^T H R), or null for the Hessians of the inputs as they are.
   */
  readonly hessianRotation: HadamardOptions | null;
  /**
   * Hessians (keyed by {@linkcode hessianGroup}) of the inputs of block `block`'s linear layers
   * over every window, the block running with its current weights; `onWindow` after each window.
   */
  calibrate(block: number, onWindow: () => void): Promise<Map<string, Hessian>>;
  /**
   * With a calibration objective other than `"weights"` (objective.ts): the weights GPTQ rounds
   * for layer `name` of the block last calibrated (`w` itself for `"act"`, else the least-squares
   * target W*), in the original space.
   */
  target?(name: string, w: Float32Array, rows: number, damp?: number): Promise<Float32Array>;
  /** Runs every window through block `block` as it now is, giving the next block's inputs. */
  propagate(block: number, onWindow: () => void): Promise<void>;
  /**
   * Layer `name` computes from now on with input `scheme` and its quantized weights, given both
   * as the dense dequantized `weight` and as `quantized` (the CUDA runner runs the FP4 kernels
   * on the packed form when they take its format).
   */
  update(name: string, weight: Weight, scheme: InputScheme, quantized: Quantized): void;
  /** Frees what the runner holds. */
  dispose(): void;
}

/**
 * The host runner: f32 residual streams, lib/model's forward pass with `linear` (the quantized
 * model's hook, which reads the weights and schemes the caller keeps in `model`) for propagation.
 *
 * @example
 * ```ts
 * import { cpuBlockRunner } from "./block_runner.ts";
 * import { quantizedLinear } from "./act_quant.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 8,
 * }));
 * const runner = cpuBlockRunner(model, [new Int32Array([1, 2, 3])], quantizedLinear(model, new Map()));
 * const hs = await runner.calibrate(0, () => {});
 * console.assert(hs.size === 4 && hs.get("model.layers.0.mlp.gate_proj")!.samples === 3);
 * ```
 */
export function cpuBlockRunner(
  model: LlamaModel,
  calibration: readonly Int32Array[],
  linear: Linear,
  objective: { objective: CalibrationObjective; scheme: InputScheme } | null = null,
): BlockRunner {
  const states = calibration.map((ids) => embed(model, ids));
  const asymmetric = objective !== null && objective.objective !== "weights";
  // The full-precision model's streams, advanced block by block beside the quantized ones.
  const teachers = objective?.objective === "teacher" ? states.map((s) => s.slice()) : null;
  let capture: ObjectiveCapture | null = null;
  return {
    windows: states.length,
    hessianRotation: null,
    async calibrate(block, onWindow) {
      if (asymmetric) {
        capture = new ObjectiveCapture(model, block, objective.objective, objective.scheme);
        for (const [i, s] of states.entries()) {
          await capture.window(s, teachers?.[i] ?? null);
          onWindow();
        }
        return capture.hessians;
      }
      const hessians = new HessianCapture(model, block);
      for (const s of states) {
        // The block's output is thrown away: only its linears' inputs are wanted here.
        await runLayer(model, block, s.slice(), { linear: hessians.linear });
        await hessians.flush();
        onWindow();
      }
      return hessians.hessians;
    },
    target: asymmetric
      ? (name, w, rows, damp) => {
        if (!capture) throw new Error("target: no block has been calibrated");
        return capture.target(name, w, rows, damp);
      }
      : undefined,
    async propagate(block, onWindow) {
      for (const s of states) {
        await runLayer(model, block, s, { linear });
        onWindow();
      }
    },
    update() {},
    dispose() {},
  };
}

/**
 * The GPU runner: one {@linkcode DecodeEngine} on CUDA holding the model, every window's
 * residual stream on the device, Hessians accumulated on the device from the engine's
 * activations (BF16 widened to f32; with `rotation`, rotated there first, so the GPTQ solver gets
 * R^T H R without rotating it on the host), and each quantized layer swapped into the engine as soon as
 * it is quantized with its input scheme: as packed MXFP4/NVFP4 for the W4A16 kernels (exact
 * dequantization, f32 accumulation), other formats as dequantized f32 weights.
 *
 * With the `"act"` or `"output"` objective (objective.ts; `"teacher"` runs on the CPU runner
 * only), calibration runs the block's full-precision weights on the inputs its FP4 GEMMs will
 * see, as the CPU runner does: each linear computes with the rotated weight W R^T on the
 * transformed input Q_a(R x). The Hessians are those of Q_a(R x) (in the rotated space, like
 * every Hessian of this runner), and for `"output"` the cross product C = (2 / n) (R x)^T Q_a(R x)
 * accumulates beside them on the device; the target takes D = C - H~, which is
 * (2 / n) (R x - Q_a(R x))^T Q_a(R x), solves W*_r = W_r + W_r D (H~ + lambda I)^-1 in the rotated
 * space, and rotates it back (R is orthogonal, so the objective is the CPU runner's).
 *
 * @example
 * ```ts
 * import { cudaBlockRunner } from "./block_runner.ts";
 * import { cudaStatus } from "../device.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * if (cudaStatus().available) {
 *   const model = LlamaModel.random(parseLlamaConfig({
 *     model_type: "llama", hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
 *     num_attention_heads: 2, vocab_size: 8,
 *   }));
 *   using runner = cudaBlockRunner(model, [new Int32Array([1, 2, 3])]);
 *   const hs = await runner.calibrate(0, () => {});
 *   console.assert(hs.get("model.layers.0.self_attn.q_proj")!.device === "cuda");
 * }
 * ```
 */
export function cudaBlockRunner(
  model: LlamaModel,
  calibration: readonly Int32Array[],
  rotation: HadamardOptions | null = null,
  objective: { objective: CalibrationObjective; scheme: InputScheme } | null = null,
): BlockRunner & Disposable {
  if (objective?.objective === "teacher") {
    throw new Error('the "teacher" calibration objective runs on the CPU pipeline only');
  }
  if (objective && objective.objective !== "weights" && objective.scheme.rotation !== rotation) {
    throw new Error("cudaBlockRunner: the objective's input scheme must rotate by `rotation`");
  }
  const gemmView = objective !== null && objective.objective !== "weights";
  const cross = new Map<string, CrossCovariance>();
  const targets = new Map<string, AsymmetricTarget>();
  let hessians = new Map<string, Hessian>();
  const longest = Math.max(1, ...calibration.map((ids) => ids.length));
  const engine = DecodeEngine.create(model, {
    device: "cuda",
    contextLength: Math.min(longest, model.config.maxPositionEmbeddings),
    graphs: false,
  });
  const states: Tensor[] = [];
  const dropCross = () => {
    for (const c of cross.values()) c.dispose();
    cross.clear();
    targets.clear();
  };
  const dispose = () => {
    dropCross();
    for (const s of states) s.dispose();
    engine.dispose();
  };
  try {
    for (const ids of calibration) states.push(engine.embed(ids));
  } catch (e) {
    dispose();
    throw e;
  }
  const seed = rotation?.seed === undefined ? null : BigInt(rotation.seed);
  // In place, in f32: the capture buffer is the engine's and is not read again.
  const rotate = (x: Tensor) =>
    checkAsync(
      native().fp4_hadamard(
        deviceId("cuda"),
        abiDType("f32"),
        x.pointer(),
        abiDType("f32"),
        x.pointer(),
        BigInt(x.shape[0]),
        BigInt(x.shape[1]),
        rotation!.block,
        0,
        seed === null ? 0 : 1,
        seed ?? 0n,
      ),
      "fp4_hadamard",
      [x],
    );
  return {
    windows: states.length,
    hessianRotation: rotation,
    async calibrate(block, onWindow) {
      hessians = new Map<string, Hessian>();
      dropCross();
      const scheme = objective?.scheme;
      if (gemmView) {
        // The block's full-precision layers, computing on what their FP4 GEMMs will see.
        for (const name of blockLinears(block)) {
          const w = model.weight(`${name}.weight`);
          const [rows, cols] = w.shape;
          const f32 = toFloat32(w.data, w.dtype);
          const data = rotation ? hadamard(f32, [rows, cols], rotation) : f32;
          engine.setLinear(name, { dtype: "f32", shape: [rows, cols], data }, scheme);
        }
      }
      try {
        for (const s of states) {
          await engine.runBlock(block, s, async (name, x) => {
            const group = hessianGroup(name);
            const [rows, cols] = x.shape;
            let h = hessians.get(group);
            if (!h) {
              h = new Hessian(cols, { device: "cuda" });
              hessians.set(group, h);
            }
            const fake = gemmView && scheme?.act
              ? fakeQuantizeOn("cuda", x, scheme.act, rotation)
              : null;
            try {
              if (rotation) await rotate(x);
              const xq = fake?.y ?? x;
              await h.add(xq, rows);
              if (objective?.objective === "output") {
                let c = cross.get(group);
                if (!c) cross.set(group, c = new CrossCovariance(cols, { device: "cuda" }));
                await c.add(x, xq, rows);
              }
            } finally {
              if (fake) {
                fake.y.dispose();
                disposeQuantized(fake.q);
              }
            }
          });
          onWindow();
        }
      } catch (e) {
        for (const h of hessians.values()) h.dispose();
        dropCross();
        throw e;
      }
      return hessians;
    },
    target: gemmView
      ? async (name, w, rows, damp = 0.01) => {
        if (objective.objective === "act") return w;
        const group = hessianGroup(name);
        const h = hessians.get(group), c = cross.get(group);
        if (!h || !c) throw new Error(`no calibration inputs were seen for ${name}`);
        const cols = h.cols;
        let t = targets.get(group);
        if (!t) {
          const hm = h.matrix(), d = c.matrix();
          for (let i = 0; i < d.length; i++) d[i] -= hm[i];
          targets.set(group, t = new AsymmetricTarget(hm, d, cols, damp));
        }
        if (!rotation) return await t.apply(w, rows);
        const wr = await t.apply(hadamard(w, [rows, cols], rotation), rows);
        return inverseHadamard(wr, [rows, cols], rotation);
      }
      : undefined,
    async propagate(block, onWindow) {
      for (const s of states) {
        await engine.runBlock(block, s);
        onWindow();
      }
    },
    update(name, weight, scheme, quantized) {
      engine.setLinear(name, fp4WeightsOf(quantized) ?? weight, scheme);
    },
    dispose,
    [Symbol.dispose]: dispose,
  };
}
