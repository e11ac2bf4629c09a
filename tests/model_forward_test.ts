// The native forward pass against a float64 reference on fresh random tiny Llamas (GQA, odd
// sizes that hit every tile edge of the matmul, tied and untied heads, llama3 rope), the
// native matmul against its error bound, the linear hook, and bad input.
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { f32ToBf16 } from "../lib/dtype.ts";
import {
  forwardLogits,
  forwardNll,
  type Linear,
  LlamaModel,
  matmulWeight,
  nativeLinear,
  nllOf,
  parseLlamaConfig,
} from "../mod.ts";
import { referenceLogits, relativeMaxError } from "./model_reference.ts";

const seed = (Math.random() * 2 ** 31) >>> 0;
console.log(`model_forward_test seed ${seed}`);

function tinyConfig(extra: Record<string, unknown> = {}) {
  return parseLlamaConfig({
    model_type: "llama",
    hidden_size: 40,
    intermediate_size: 52,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 37,
    rms_norm_eps: 1e-5,
    rope_theta: 500,
    ...extra,
  });
}

function randomIds(n: number, vocab: number): Int32Array {
  return Int32Array.from({ length: n }, () => Math.floor(Math.random() * vocab));
}

// f32 accumulation error of a k-term dot product, in any order: at most k * 2^-24 * sum|x w|
// (first-order bound; FMA only lowers it).
Deno.test("native linear is within the f32 summation bound of an exact product", async () => {
  for (const dtype of ["f32", "bf16"] as const) {
    for (const [rows, out, inF] of [[1, 1, 1], [7, 9, 37], [50, 70, 64], [4, 130, 200]]) {
      const x = Float32Array.from({ length: rows * inF }, () => Math.random() * 2 - 1);
      const wf = Float32Array.from({ length: out * inF }, () => Math.random() * 2 - 1);
      const data = dtype === "f32" ? wf : Uint16Array.from(wf, f32ToBf16);
      const wv = dtype === "f32" ? wf : Float32Array.from(
        data as Uint16Array,
        (b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0],
      );
      const y = await matmulWeight(x, rows, { dtype, shape: [out, inF], data });
      for (let r = 0; r < rows; r++) {
        for (let o = 0; o < out; o++) {
          let exact = 0, abs = 0;
          for (let i = 0; i < inF; i++) {
            exact += x[r * inF + i] * wv[o * inF + i];
            abs += Math.abs(x[r * inF + i] * wv[o * inF + i]);
          }
          const err = Math.abs(y[r * out + o] - exact);
          assert(
            err <= inF * 2 ** -24 * abs + 1e-30,
            `${dtype} [${rows},${out},${inF}] at (${r},${o}): |${
              y[r * out + o]
            } - ${exact}| = ${err}`,
          );
        }
      }
    }
  }
});

// Bound: the f32 forward's logits differ from float64 by at most 1e-5 of the largest logit
// (observed 1e-7 to 3e-7 with weights of std 0.2; a 10% slip in one rope component already
// gives 3e-2, so the bound has room on both sides).
const LOGIT_REL_BOUND = 1e-5;

for (
  const [label, extra, dtype] of [
    ["GQA, untied, bf16 weights", {}, "bf16"],
    ["MHA, tied, f32 weights", { num_key_value_heads: 4, tie_word_embeddings: true }, "f32"],
    [
      "llama3 rope scaling, head_dim set",
      {
        head_dim: 12,
        rope_parameters: {
          rope_type: "llama3",
          rope_theta: 10000,
          factor: 8,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 16,
        },
      },
      "bf16",
    ],
  ] as const
) {
  Deno.test(`native forward matches the float64 reference: ${label}`, async () => {
    const config = tinyConfig(extra);
    const model = LlamaModel.random(config, { seed, dtype, std: 0.2 });
    const ids = randomIds(23, config.vocabSize);
    const got = await forwardLogits(model, ids);
    const want = referenceLogits(model, ids);
    assertEquals(got.length, want.length);
    const err = relativeMaxError(got, want);
    assert(err < LOGIT_REL_BOUND, `relative logit error ${err} (seed ${seed})`);
    // Random weights must give varied logits, or the comparison proves little.
    assert(Math.max(...want) - Math.min(...want) > 0.1, "degenerate logits");
  });
}

Deno.test("forwardNll equals log-softmax of the logits at the next tokens", async () => {
  const config = tinyConfig();
  const model = LlamaModel.random(config, { seed });
  const ids = randomIds(17, config.vocabSize);
  const nll = await forwardNll(model, ids);
  const ref = referenceLogits(model, ids);
  const V = config.vocabSize;
  for (let t = 0; t < ids.length - 1; t++) {
    const row = ref.subarray(t * V, (t + 1) * V);
    const mx = Math.max(...row);
    const lse = mx + Math.log(row.reduce((a, b) => a + Math.exp(b - mx), 0));
    const want = lse - row[ids[t + 1]];
    assert(Math.abs(nll[t] - want) < 1e-4 * Math.max(1, want), `t=${t}: ${nll[t]} vs ${want}`);
  }
});

Deno.test("every linear goes through the hook, by module name, in forward order", async () => {
  const config = tinyConfig();
  const model = LlamaModel.random(config, { seed });
  const ids = randomIds(9, config.vocabSize);
  const seen: string[] = [];
  const base = nativeLinear(model);
  const hook: Linear = (name, x, rows) => {
    seen.push(name);
    return base(name, x, rows);
  };
  const a = await forwardLogits(model, ids, { linear: hook });
  assertEquals(seen, model.linearNames());
  const b = await forwardLogits(model, ids);
  assertEquals(Array.from(a), Array.from(b));
  // A hook that changes one layer changes the output.
  const zeroDown: Linear = async (name, x, rows) => {
    const y = await base(name, x, rows);
    return name.endsWith("1.mlp.down_proj") ? y.fill(0) : y;
  };
  const c = await forwardLogits(model, ids, { linear: zeroDown });
  assert(relativeMaxError(c, b) > 1e-4, "zeroing a layer did not change the logits");
  // A hook returning the wrong size is caught before any native call reads it.
  const short: Linear = async (name, x, rows) => (await base(name, x, rows)).subarray(1);
  await assertRejects(
    () => forwardLogits(model, ids, { linear: short }),
    Error,
    `linear "model.layers.0.self_attn.q_proj" returned`,
  );
});

Deno.test("forward rejects token ids outside the vocabulary and empty input", async () => {
  const config = tinyConfig();
  const model = LlamaModel.random(config, { seed });
  await assertRejects(
    () => forwardLogits(model, new Int32Array([1, 37])),
    Error,
    "outside [0, 37)",
  );
  await assertRejects(() => forwardLogits(model, new Int32Array([-1])), Error, "outside");
  await assertRejects(() => forwardLogits(model, new Int32Array(0)), Error, "no tokens");
  await assertRejects(() => forwardNll(model, new Int32Array([3])), Error, "at least 2");
});

Deno.test("native model ops report bad arguments instead of crashing", async () => {
  await assertRejects(
    () => nllOf(new Float32Array([0, 1, 2, 3]), new Int32Array([0, 4]), 2),
    Error,
    "outside the vocabulary",
  );
  await assertRejects(
    () =>
      matmulWeight(new Float32Array(3), 1, {
        dtype: "f32",
        shape: [2, 2],
        data: new Float32Array(4),
      }),
    Error,
    "is not [1, 2]",
  );
  assertThrows(() => tinyConfig({ num_key_value_heads: 3 }), Error, "multiple");
});
