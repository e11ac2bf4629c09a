/**
 * MR-GPTQ, GPTQ and RTN for one linear layer: the Hessian accumulator, the layer-level
 * `quantizeLayer`, the float64 reference solver and the pieces they share.
 *
 * @example
 * ```ts
 * import { Hessian, quantizeLayer, syntheticLayer } from "./mod.ts";
 * const l = syntheticLayer(4, 32, 64, 3);
 * const h = new Hessian(32);
 * await h.add(l.x, 64);
 * const q = await quantizeLayer(l.w, 4, 32, h, { format: "nvfp4", method: "gptq" });
 * console.assert(q.rotation === null && q.proxyLoss >= 0);
 * ```
 *
 * @module
 */
export * from "./hessian.ts";
export * from "./asymmetric.ts";
export * from "./layer.ts";
export * from "./quantizer.ts";
export * from "./reference.ts";
export * from "./native.ts";
export * from "./synthetic.ts";
export * from "./linalg.ts";
