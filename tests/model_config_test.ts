// config.json parsing: the Llama fields, defaults, both rope layouts, Llama 3 rope scaling,
// and clear errors for unsupported or malformed configs.
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { loadLlamaConfig, parseLlamaConfig, ropeInvFreq } from "../mod.ts";
import { testModelDir } from "../lib/paths.ts";

const base = {
  model_type: "llama",
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 100,
  rms_norm_eps: 1e-6,
};

Deno.test("the shared test model's config parses to its documented shape", async () => {
  const c = await loadLlamaConfig(testModelDir());
  assertEquals(
    [c.hiddenSize, c.numLayers, c.numHeads, c.numKvHeads, c.headDim, c.intermediateSize],
    [512, 8, 8, 4, 64, 1536],
  );
  assertEquals([c.vocabSize, c.rmsNormEps, c.tieWordEmbeddings], [4096, 1e-5, false]);
  assertEquals(c.rope, { theta: 10000, type: "default" });
});

Deno.test("defaults: head_dim = hidden / heads, kv heads = heads, untied, theta 10000", () => {
  const { num_key_value_heads: _, ...noKv } = base;
  const c = parseLlamaConfig(noKv);
  assertEquals([c.headDim, c.numKvHeads, c.tieWordEmbeddings, c.rope.theta], [16, 4, false, 10000]);
});

Deno.test("rope_theta at top level and rope_parameters give the same frequencies", () => {
  const a = parseLlamaConfig({ ...base, rope_theta: 500000 });
  const b = parseLlamaConfig({
    ...base,
    rope_parameters: { rope_type: "default", rope_theta: 500000 },
  });
  assertEquals(a.rope, b.rope);
  const f = ropeInvFreq(a.rope, 16);
  assertEquals(f[0], 1);
  // 1 / 500000^(2i/16) in f32.
  for (let i = 0; i < 8; i++) assertEquals(f[i], Math.fround(1 / Math.fround(500000 ** (i / 8))));
});

Deno.test("Llama 3 rope scaling keeps high, divides low and blends middle frequencies", () => {
  const rope = {
    rope_type: "llama3",
    rope_theta: 500000,
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  };
  const scaled = parseLlamaConfig({ ...base, hidden_size: 512, rope_scaling: rope }).rope;
  const plain = parseLlamaConfig({ ...base, hidden_size: 512, rope_theta: 500000 }).rope;
  assertEquals(scaled.type, "llama3");
  const s = ropeInvFreq(scaled, 128), p = ropeInvFreq(plain, 128);
  let kept = 0, divided = 0, blended = 0;
  for (let i = 0; i < 64; i++) {
    const wavelen = 2 * Math.PI / p[i];
    if (wavelen < 8192 / 4) {
      assertEquals(s[i], p[i]);
      kept++;
    } else if (wavelen > 8192) {
      assert(Math.abs(s[i] - p[i] / 8) <= 1e-12, `low frequency ${i} not divided by 8`);
      divided++;
    } else {
      const smooth = (8192 / wavelen - 1) / 3;
      const want = (1 - smooth) * p[i] / 8 + smooth * p[i];
      // s holds the f32 rounding of the blend: within half an ulp (2^-24 relative).
      assert(Math.abs(s[i] - want) <= 6e-8 * want, `middle frequency ${i}: ${s[i]} vs ${want}`);
      assert(s[i] < p[i] && s[i] > p[i] / 8);
      blended++;
    }
  }
  assert(kept > 0 && divided > 0 && blended > 0, `${kept} ${divided} ${blended}`);
});

Deno.test("unsupported architectures are refused with the list of supported ones", () => {
  assertThrows(
    () => parseLlamaConfig({ ...base, model_type: "gpt2", architectures: ["GPT2LMHeadModel"] }),
    Error,
    "supported: llama",
  );
  assertThrows(() => parseLlamaConfig({ ...base, attention_bias: true }), Error, "attention_bias");
  assertThrows(() => parseLlamaConfig({ ...base, hidden_act: "gelu" }), Error, "hidden_act");
  assertThrows(
    () => parseLlamaConfig({ ...base, rope_scaling: { rope_type: "yarn", factor: 4 } }),
    Error,
    "default, linear, llama3",
  );
});

Deno.test("missing or invalid fields are named in the error", () => {
  const { hidden_size: _, ...noHidden } = base;
  assertThrows(() => parseLlamaConfig(noHidden), Error, `"hidden_size" is missing`);
  assertThrows(() => parseLlamaConfig({ ...base, vocab_size: -3 }), Error, "vocab_size");
  assertThrows(() => parseLlamaConfig({ ...base, num_key_value_heads: 3 }), Error, "multiple");
  assertThrows(() => parseLlamaConfig({ ...base, hidden_size: 66 }), Error, "divisible");
  assertThrows(() => parseLlamaConfig([1, 2]), Error, "JSON object");
  assertThrows(
    () => parseLlamaConfig({ ...base, rope_scaling: { rope_type: "llama3", factor: 8 } }),
    Error,
    "low_freq_factor",
  );
});

Deno.test("a missing or malformed config.json file is reported with its path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertRejects(() => loadLlamaConfig(dir), Error, `${dir}/config.json: cannot read`);
    await Deno.writeTextFile(`${dir}/config.json`, "{ not json");
    await assertRejects(() => loadLlamaConfig(dir), Error, "not valid JSON");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
