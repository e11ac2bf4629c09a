/**
 * A Llama-3-8B-shaped model with random BF16 weights for the GPU benchmarks (hidden 4096,
 * intermediate 14336, 32 heads, 8 KV heads, vocab 128256; the number of layers is a parameter).
 * One random array per weight shape is shared by every layer's host `Weight` (each its own
 * object, so engines upload one device copy per layer, as a real model needs), which keeps the
 * host side at ~2 GB whatever the depth.
 *
 * @module
 */
import { LlamaModel, llamaWeightShapes, type Weight } from "../../lib/model/llama.ts";
import { parseLlamaConfig } from "../../lib/model/config.ts";

/** xorshift32 stream. */
export function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
}

/** `n` bf16 weights drawn from 4096 values uniform in (-amp, amp). */
export function randomBf16(n: number, seed: number, amp: number): Uint16Array {
  const next = xorshift(seed);
  const table = new Uint16Array(4096);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < table.length; i++) {
    f[0] = (next() / 2 ** 32 * 2 - 1) * amp;
    table[i] = u[0] >>> 16;
  }
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = table[next() & 4095];
  return out;
}

/** The 8B-shaped model with `layers` decoder blocks (norm weights 1, linears random). */
export function llama8b(layers: number): LlamaModel {
  const config = parseLlamaConfig({
    model_type: "llama",
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: layers,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 128256,
    max_position_embeddings: 8192,
    rope_theta: 500000,
    rms_norm_eps: 1e-5,
  });
  const byShape = new Map<string, Uint16Array>();
  const weights = new Map<string, Weight>();
  for (const [name, shape] of llamaWeightShapes(config)) {
    const key = shape.join("x");
    let data = byShape.get(key);
    if (!data) {
      const n = shape.reduce((a, b) => a * b, 1);
      data = shape.length === 1
        ? new Uint16Array(n).fill(0x3f80)
        : randomBf16(n, byShape.size + 1, 1.5 / Math.sqrt(shape[1]));
      byShape.set(key, data);
    }
    weights.set(name, { dtype: "bf16", shape: [...shape], data });
  }
  return LlamaModel.fromWeights(config, weights);
}
