// The forward pass on brown-llama-29m against transformers (float32), from the fixture that
// tests/gpu/make_logits_fixture.py writes on the GPU machine (the test fails while it is
// missing), and the perplexity of a few windows of valid.txt.
import { assert, assertEquals } from "./assert.ts";
import { forwardLogits, HfTokenizer, LlamaModel, nllOf, perplexity } from "../mod.ts";
import { SafetensorsFile } from "../lib/safetensors.ts";
import { testModelDir } from "../lib/paths.ts";

const FIXTURE = new URL("./fixtures/model/logits_brown-llama-29m.safetensors", import.meta.url);

// Our bf16 weights are exactly transformers' float32 weights; only the order of f32 sums
// differs, so logits (magnitude up to ~20) agree to ~1e-5 of their range. Bounds, with room:
const MAX_ABS_LOGIT_ERROR = 2e-3;
const MAX_REL_LOGIT_ERROR = 1e-4; // max |ours - theirs| / max |theirs|, per prompt
const MAX_NLL_ERROR = 1e-3; // nats, per predicted token
const MAX_PPL_ERROR = 0.01; // perplexity of the first windows of valid.txt

const model = LlamaModel.load(testModelDir());

async function openFixture(): Promise<SafetensorsFile> {
  try {
    return await SafetensorsFile.open(FIXTURE.pathname);
  } catch (e) {
    throw new Error(
      `logits fixture ${FIXTURE.pathname} is missing or unreadable: run ` +
        "`python3 tests/gpu/make_logits_fixture.py MODEL_DIR` where torch and transformers " +
        `are installed (${(e as Error).message})`,
    );
  }
}

async function f32(file: SafetensorsFile, name: string): Promise<Float32Array> {
  const raw = await file.read(name);
  assertEquals(raw.dtype, "F32", name);
  return new Float32Array(raw.data.buffer, raw.data.byteOffset, raw.data.byteLength / 4);
}

async function i32(file: SafetensorsFile, name: string): Promise<Int32Array> {
  const raw = await file.read(name);
  assertEquals(raw.dtype, "I32", name);
  return new Int32Array(raw.data.buffer, raw.data.byteOffset, raw.data.byteLength / 4);
}

Deno.test("logits and next-token NLLs match transformers float32 on the fixture prompts", async () => {
  const m = await model;
  using file = await openFixture();
  const prompts = Number(file.metadata.prompts);
  assert(prompts >= 2, `fixture has ${prompts} prompts`);
  const V = m.config.vocabSize;
  for (let p = 0; p < prompts; p++) {
    const ids = await i32(file, `prompt${p}.ids`);
    const positions = await i32(file, `prompt${p}.positions`);
    const want = await f32(file, `prompt${p}.logits`);
    const wantNll = await f32(file, `prompt${p}.nll`);
    const got = await forwardLogits(m, ids);
    let maxAbs = 0, scale = 0;
    positions.forEach((t, r) => {
      for (let v = 0; v < V; v++) {
        maxAbs = Math.max(maxAbs, Math.abs(got[t * V + v] - want[r * V + v]));
        scale = Math.max(scale, Math.abs(want[r * V + v]));
      }
    });
    console.log(
      `prompt ${p} (${ids.length} tokens): max abs logit error ${
        maxAbs.toExponential(2)
      }, relative ${(maxAbs / scale).toExponential(2)}`,
    );
    assert(maxAbs <= MAX_ABS_LOGIT_ERROR, `prompt ${p}: max abs logit error ${maxAbs}`);
    assert(maxAbs / scale <= MAX_REL_LOGIT_ERROR, `prompt ${p}: relative error ${maxAbs / scale}`);
    // Per-token NLLs of the whole prompt, through our log-softmax.
    const nll = await nllOf(got, ids.subarray(1), V);
    let worst = 0;
    for (let t = 0; t < nll.length; t++) worst = Math.max(worst, Math.abs(nll[t] - wantNll[t]));
    assert(worst <= MAX_NLL_ERROR, `prompt ${p}: NLL differs by ${worst} nats`);
  }
});

Deno.test("perplexity of the first windows of valid.txt matches transformers", async () => {
  const m = await model;
  using file = await openFixture();
  const windows = Number(file.metadata.ppl_windows);
  const want = Number(file.metadata.ppl);
  const tok = await HfTokenizer.load(testModelDir());
  const ids = tok.encode(await Deno.readTextFile(`${testModelDir()}/valid.txt`));
  const r = await perplexity(m, ids, { maxWindows: windows });
  assertEquals(r.predictions, windows * 511);
  assert(Math.abs(r.ppl - want) <= MAX_PPL_ERROR, `ppl ${r.ppl} vs transformers ${want}`);
});

Deno.test("perplexity of two windows of valid.txt is in the model's range", async () => {
  // Full valid.txt is 54.43 (DESIGN.md); the first windows of the text score 40-50, a random
  // model ~4096: a broken forward pass lands far outside [30, 80].
  const m = await model;
  const tok = await HfTokenizer.load(testModelDir());
  const ids = tok.encode(await Deno.readTextFile(`${testModelDir()}/valid.txt`));
  const r = await perplexity(m, ids, { maxWindows: 2 });
  assertEquals([r.windows, r.tokens, r.predictions], [2, 1024, 1022]);
  assert(r.ppl > 30 && r.ppl < 80, `ppl ${r.ppl}`);
});
