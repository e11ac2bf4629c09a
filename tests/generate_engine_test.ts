// The KV-cache engine against the full forward pass of lib/model: greedy generation on fresh
// random tiny Llamas (GQA, bf16 and f32 weights) must pick the tokens that re-running
// forwardLogits on the growing sequence picks, with every step's logits within a stated bound;
// plus bad input (context overflow, bad ids, CUDA without a GPU).
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { DecodeEngine, generate } from "../lib/generate/mod.ts";
import { forwardLogits, LlamaModel, parseLlamaConfig } from "../lib/model/mod.ts";
import { HfTokenizer } from "../lib/model/tokenizer.ts";
import { cudaStatus } from "../lib/device.ts";
import { testModelDir } from "../lib/paths.ts";

const seed = (Math.random() * 2 ** 31) >>> 0;
console.log(`generate_engine_test seed ${seed}`);

function tiny(extra: Record<string, unknown> = {}) {
  return parseLlamaConfig({
    model_type: "llama",
    hidden_size: 48,
    intermediate_size: 72,
    num_hidden_layers: 2,
    num_attention_heads: 6,
    num_key_value_heads: 2,
    vocab_size: 53,
    rope_theta: 300,
    max_position_embeddings: 40,
    ...extra,
  });
}

function maxAbsDiff(a: Float32Array, b: Float32Array): { err: number; scale: number } {
  let err = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    err = Math.max(err, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return { err, scale };
}

// f32 cache: the same ops in the same precision as forwardLogits, differing only in the
// summation order of the attention dot products, so 1e-5 of the logits' scale is ample
// (observed ~1e-7). bf16 cache: keys and values rounded to 8 bits of mantissa (relative 2^-9),
// which moves logits by about 1e-3 of their scale; 2e-2 bounds it.
for (const [cacheDtype, bound] of [["f32", 1e-5], ["bf16", 2e-2]] as const) {
  Deno.test(`greedy KV-cache decode (${cacheDtype} cache) equals re-running the full forward`, async () => {
    for (const [i, dtype] of (["bf16", "f32"] as const).entries()) {
      const model = LlamaModel.random(tiny(), { seed: seed + i, dtype, std: 0.15 });
      const V = model.config.vocabSize;
      const prompt = Int32Array.from({ length: 5 }, () => Math.floor(Math.random() * V));
      using engine = DecodeEngine.create(model, { cacheDtype, contextLength: 20 });
      const seq = Array.from(prompt);
      await engine.forward(prompt);
      let agreeing = 0;
      for (let step = 0; step < 12; step++) {
        const logits = engine.logits();
        const full = await forwardLogits(model, Int32Array.from(seq));
        const ref = full.subarray((seq.length - 1) * V, seq.length * V);
        const { err, scale } = maxAbsDiff(logits, ref);
        assert(
          err <= bound * scale,
          `seed ${seed} step ${step}: |dlogit| ${err} > ${bound} * ${scale}`,
        );
        const mine = engine.argmax();
        let best = 0;
        for (let v = 1; v < V; v++) if (ref[v] > ref[best]) best = v;
        // Greedy picks agree unless the top two reference logits are closer than the bound.
        const sorted = Array.from(ref).sort((a, b) => b - a);
        if (mine !== best) {
          assert(
            sorted[0] - sorted[1] <= 2 * err,
            `seed ${seed} step ${step}: token ${mine} != ${best}`,
          );
          break;
        }
        agreeing++;
        seq.push(mine);
        await engine.forward(new Int32Array([mine]));
      }
      assert(agreeing >= 1);
      assertEquals(engine.position, seq.length);
    }
  });
}

Deno.test("generate() yields the engine's greedy tokens and fills the stats", async () => {
  const model = LlamaModel.random(tiny(), { seed, std: 0.15 });
  const prompt = new Int32Array([1, 2, 3, 4]);
  const run = generate(model, prompt, { maxTokens: 6 });
  const got: number[] = [];
  for await (const t of run) got.push(t.token);
  const seq = Array.from(prompt);
  for (let i = 0; i < 6; i++) {
    const full = await forwardLogits(model, Int32Array.from(seq));
    const V = model.config.vocabSize;
    const row = full.subarray((seq.length - 1) * V);
    let best = 0;
    for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
    seq.push(best);
  }
  assertEquals(got, seq.slice(4));
  const s = run.stats!;
  assertEquals([s.promptTokens, s.generatedTokens, s.decodeSteps], [4, 6, 5]);
  assert(s.prefillTokensPerSecond > 0 && s.decodeTokensPerSecond > 0);
});

Deno.test("sampling is reproducible under a seed and differs across seeds", async () => {
  const model = LlamaModel.random(tiny(), { seed, std: 0.05 });
  const run = async (s: number) => {
    const out: number[] = [];
    for await (
      const t of generate(model, new Int32Array([3, 1]), {
        maxTokens: 12,
        temperature: 1.5,
        topP: 0.95,
        seed: s,
      })
    ) out.push(t.token);
    return out.join();
  };
  assertEquals(await run(7), await run(7));
  const others = new Set([await run(8), await run(9), await run(10)]);
  assert(others.size > 1 || !others.has(await run(7)), "seeds give the same tokens");
});

Deno.test("bad input: context overflow, empty prompt, bad ids, bad options", async () => {
  const model = LlamaModel.random(tiny(), { seed });
  const long = new Int32Array(41);
  assertThrows(() => generate(model, long), Error, "more than the model's context of 40");
  assertThrows(() => generate(model, new Int32Array(30), { maxTokens: 12 }), Error, "at most 11");
  assertThrows(() => generate(model, new Int32Array(0)), Error, "no tokens");
  assertThrows(() => generate(model, "hi"), Error, "tokenizer");
  assertThrows(() => generate(model, new Int32Array([1]), { topP: 0 }), Error, "top-p");
  assertThrows(
    () => generate(model, new Int32Array([1]), { temperature: -1 }),
    Error,
    "temperature",
  );
  assertThrows(() => generate(model, new Int32Array([1]), { maxTokens: 0 }), Error, "maxTokens");
  assertThrows(() => DecodeEngine.create(model, { contextLength: 41 }), Error, "max_position");
  using engine = DecodeEngine.create(model, { contextLength: 4 });
  await assertRejects(() => engine.forward(new Int32Array([53])), Error, "outside [0, 53)");
  await engine.forward(new Int32Array([1, 2, 3]));
  await assertRejects(() => engine.forward(new Int32Array([1, 2])), Error, "do not fit");
  if (!cudaStatus().available) {
    assertThrows(() => DecodeEngine.create(model, { device: "cuda" }), Error, "cuda");
  }
});

Deno.test("brown-llama-29m: greedy KV-cache tokens equal the full forward's", async () => {
  const dir = testModelDir();
  const model = await LlamaModel.load(dir);
  const tok = await HfTokenizer.load(dir);
  const prompt = tok.encode("The jury said", { addSpecialTokens: true });
  const got: number[] = [];
  for await (const t of generate(model, prompt, { maxTokens: 8 })) got.push(t.token);
  const seq = Array.from(prompt);
  const V = model.config.vocabSize;
  for (let i = 0; i < 8; i++) {
    const full = await forwardLogits(model, Int32Array.from(seq));
    const row = full.subarray((seq.length - 1) * V);
    let best = 0;
    for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
    seq.push(best);
  }
  assertEquals(got, seq.slice(prompt.length));
});

// CUDA runs bf16 activations and a bf16 cache; teacher-forced on the same tokens, its logits
// stay within 5e-2 of the scale of the CPU engine's f32 logits (bf16 rounding of every
// activation between ops, 8 layers deep).
Deno.test({
  name: "CUDA engine: teacher-forced logits match the CPU engine's on brown-llama-29m",
  ignore: !cudaStatus().available,
  async fn() {
    const dir = testModelDir();
    const model = await LlamaModel.load(dir);
    const tok = await HfTokenizer.load(dir);
    const prompt = tok.encode("The jury said that the", { addSpecialTokens: true });
    using cpu = DecodeEngine.create(model, { contextLength: 64 });
    using gpu = DecodeEngine.create(model, { device: "cuda", contextLength: 64 });
    await cpu.forward(prompt);
    await gpu.forward(prompt);
    let same = 0;
    for (let step = 0; step < 16; step++) {
      const { err, scale } = maxAbsDiff(gpu.logits(), cpu.logits());
      assert(err <= 5e-2 * scale, `step ${step}: |dlogit| ${err} > 5e-2 * ${scale}`);
      const t = cpu.argmax();
      if (gpu.argmax() === t) same++;
      await cpu.forward(new Int32Array([t]));
      await gpu.forward(new Int32Array([t]));
    }
    console.log(`CUDA vs CPU greedy picks agree on ${same}/16 teacher-forced steps`);
    assert(same >= 12, `only ${same}/16 greedy picks agree`);
  },
});

// DecodeEngine.greedy chooses each next input on the device; the tokens, the position and the
// last logits must equal the host loop's (forward + argmax) bit for bit: the same kernels run on
// the same inputs, only the token's route differs.
async function hostLoop(engine: DecodeEngine, prompt: Int32Array, limit: number) {
  await engine.forward(prompt);
  const tokens = [engine.argmax()];
  while (tokens.length < limit) {
    await engine.forward(new Int32Array([tokens[tokens.length - 1]]));
    tokens.push(engine.argmax());
  }
  return tokens;
}

async function deviceLoop(engine: DecodeEngine, prompt: Int32Array, limit: number, chunk: number) {
  await engine.forward(prompt);
  const tokens: number[] = [];
  for await (const t of engine.greedy(limit, chunk)) tokens.push(t);
  return tokens;
}

Deno.test("greedy() on the device yields the host loop's tokens, position and logits", async () => {
  const model = LlamaModel.random(tiny(), { seed: seed + 7, std: 0.3 });
  const V = model.config.vocabSize;
  const prompt = Int32Array.from({ length: 4 }, () => Math.floor(Math.random() * V));
  using a = DecodeEngine.create(model, { contextLength: 20 });
  using b = DecodeEngine.create(model, { contextLength: 20 });
  const want = await hostLoop(a, prompt, 11);
  // 11 tokens in chunks of 3: 10 steps as 3 + 3 + 3 + 1; then the context's last position.
  assertEquals(await deviceLoop(b, prompt, 11, 3), want);
  assertEquals(b.position, a.position);
  assertEquals(b.logits(), a.logits());
  a.reset();
  b.reset();
  assertEquals(await deviceLoop(b, prompt, 17, 16), await hostLoop(a, prompt, 17));
  assertEquals(b.position, 20);
});

Deno.test("greedy() bad input: before forward, bad limit or chunk, past the context", async () => {
  const model = LlamaModel.random(tiny(), { seed, std: 0.15 });
  using engine = DecodeEngine.create(model, { contextLength: 8 });
  const drain = async (limit: number, chunk?: number) => {
    for await (const _ of engine.greedy(limit, chunk)) { /* consume */ }
  };
  await assertRejects(() => drain(2), Error, "no logits yet");
  await engine.forward(new Int32Array([1, 2, 3]));
  await assertRejects(() => drain(0), Error, "limit must be an integer >= 1");
  await assertRejects(() => drain(2, 0), Error, "chunk must be an integer >= 1");
  await assertRejects(() => drain(7), Error, "6 more steps after 3 do not fit the context of 8");
  assertEquals(engine.position, 3);
  await drain(6, 4);
  assertEquals(engine.position, 8);
});

Deno.test({
  name: "CUDA greedy() on the device equals the CUDA host loop, with and without graphs",
  ignore: !cudaStatus().available,
  async fn() {
    const model = LlamaModel.random(tiny({ max_position_embeddings: 64 }), {
      seed: seed + 11,
      std: 0.3,
    });
    const V = model.config.vocabSize;
    const prompt = Int32Array.from({ length: 5 }, () => Math.floor(Math.random() * V));
    for (const graphs of [true, false]) {
      using a = DecodeEngine.create(model, { device: "cuda", contextLength: 48, graphs });
      using b = DecodeEngine.create(model, { device: "cuda", contextLength: 48, graphs });
      const want = await hostLoop(a, prompt, 40);
      assertEquals(await deviceLoop(b, prompt, 40, 7), want, `graphs ${graphs}`);
      assertEquals(b.position, a.position);
      assertEquals(b.logits(), a.logits(), `graphs ${graphs}`);
    }
  },
});
