// Tiny Llama models for the pipeline tests: in memory (token ids directly) or written to a
// folder with the brown-llama tokenizer fixture and seeded English-like text, so that the CLIs
// run end to end in seconds.
import { LlamaModel, parseLlamaConfig } from "../lib/model/mod.ts";
import type { LlamaConfig } from "../lib/model/config.ts";
import { writeSafetensors } from "../lib/safetensors.ts";

/** A fresh random seed, printed so a failure can be replayed (PIPELINE_SEED=...). */
export function testSeed(): number {
  const env = Deno.env.get("PIPELINE_SEED");
  const seed = env ? Number(env) : 1 + Math.floor(Math.random() * 1e9);
  console.log(`pipeline test seed ${seed} (rerun with PIPELINE_SEED=${seed})`);
  return seed;
}

/** Config of the tiny test model. */
export function tinyConfig(over: Record<string, unknown> = {}): LlamaConfig {
  return parseLlamaConfig({
    model_type: "llama",
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 256,
    ...over,
  });
}

/** A tiny random Llama (bf16 weights, like a released checkpoint). */
export function tinyModel(seed: number, over: Record<string, unknown> = {}): LlamaModel {
  return LlamaModel.random(tinyConfig(over), { seed });
}

/** `count` windows of `tokens` ids drawn with a seeded LCG. */
export function tokenWindows(seed: number, count: number, tokens = 512, vocab = 256): Int32Array[] {
  let s = seed >>> 0;
  return Array.from({ length: count }, () =>
    Int32Array.from({ length: tokens }, () => {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      return (s >>> 8) % vocab;
    }));
}

const WORDS = (
  "the jury said a report of the city was to be in and that it had been for his election " +
  "but when they were not at all this year from her home there are more people who would " +
  "have made some money on their work after which we could find out what time is now"
).split(" ");

/** Seeded English-like text of `words` words. */
export function text(seed: number, words: number): string {
  let s = seed >>> 0;
  const out: string[] = [];
  for (let i = 0; i < words; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(WORDS[(s >>> 8) % WORDS.length]);
    if (i % 13 === 12) out[out.length - 1] += ".";
  }
  return out.join(" ");
}

// A character-level BPE (no merges): one token per character of the test text.
const CHARS = "abcdefghijklmnopqrstuvwxyz .";
const TOKENIZER = {
  normalizer: null,
  pre_tokenizer: null,
  post_processor: null,
  decoder: null,
  added_tokens: [],
  model: {
    type: "BPE",
    vocab: Object.fromEntries([...CHARS].map((c, i) => [c, i])),
    merges: [],
  },
};

/**
 * Writes a tiny random Llama to a new temp folder: config.json, model.safetensors (bf16),
 * a character-level tokenizer.json (one token per character), calib.txt (`calibWords` words,
 * about 5 tokens each) and valid.txt (1500 words).
 */
export async function tinyModelDir(seed: number, calibWords = 1500): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "fp4lab-tiny-" });
  const json = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 256,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
  };
  const model = LlamaModel.random(parseLlamaConfig(json), { seed });
  const tensors: Record<string, { dtype: "BF16"; shape: readonly number[]; data: Uint16Array }> =
    {};
  for (
    const name of [
      "model.embed_tokens.weight",
      "model.norm.weight",
      "lm_head.weight",
      ...model.linearNames().filter((n) => n !== "lm_head").map((n) => `${n}.weight`),
      ...Array.from({ length: 2 }, (_, i) => [
        `model.layers.${i}.input_layernorm.weight`,
        `model.layers.${i}.post_attention_layernorm.weight`,
      ]).flat(),
    ]
  ) {
    const w = model.weight(name);
    tensors[name] = { dtype: "BF16", shape: w.shape, data: w.data as Uint16Array };
  }
  await writeSafetensors(`${dir}/model.safetensors`, tensors, { format: "pt" });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(json));
  await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(TOKENIZER));
  await Deno.writeTextFile(`${dir}/calib.txt`, text(seed + 1, calibWords));
  await Deno.writeTextFile(`${dir}/valid.txt`, text(seed + 2, 1500));
  return dir;
}
