/**
 * Llama-family models: configuration, tokenizer, weights, the forward pass on the native
 * backend, and perplexity under the protocol of DESIGN.md.
 *
 * @module
 */
export * from "./config.ts";
export * from "./tokenizer.ts";
export * from "./llama.ts";
export * from "./forward.ts";
export * from "./perplexity.ts";
