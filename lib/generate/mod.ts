/**
 * KV-cache text generation: the decode engine, token sampling, and the `generate` iterator.
 *
 * @module
 */
export * from "./engine.ts";
export * from "./sampling.ts";
export * from "./generate.ts";
