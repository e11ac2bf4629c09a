/**
 * The end-to-end pipeline: sequential calibration and quantization of a Llama model (RTN,
 * GPTQ, MR-GPTQ; optional online activation quantization), export of the quantized checkpoint
 * and its loader, and run manifests.
 *
 * @example
 * ```ts
 * import { exportQuantized, loadQuantized, quantizeModel } from "./mod.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 16,
 * }));
 * const windows = [Int32Array.from({ length: 16 }, (_, i) => i)];
 * const q = await quantizeModel(model, windows, { format: "nvfp4", method: "mr-gptq" });
 * const out = `${await Deno.makeTempDir()}/q`;
 * await exportQuantized(q, out);
 * console.assert((await loadQuantized(out)).schemes.size === 7);
 * ```
 *
 * @module
 */
export * from "./calibrate.ts";
export * from "./act_quant.ts";
export * from "./act_scales.ts";
export * from "./objective.ts";
export * from "./quantize_model.ts";
export * from "./export.ts";
export * from "./manifest.ts";
