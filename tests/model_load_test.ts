// Loading Hugging Face folders: single and sharded safetensors in BF16/F16/F32 give the
// weights that were written, and every kind of bad folder fails with an Error naming it.
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { f32ToBf16, f32ToF16 } from "../lib/dtype.ts";
import { forwardLogits, LlamaModel, llamaWeightShapes, parseLlamaConfig } from "../mod.ts";
import { type SafetensorsEntry, writeSafetensors } from "../lib/safetensors.ts";

const seed = (Math.random() * 2 ** 31) >>> 0;
console.log(`model_load_test seed ${seed}`);

const configJson = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 24,
  intermediate_size: 40,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 30,
  rms_norm_eps: 1e-5,
  rope_parameters: { rope_type: "default", rope_theta: 10000 },
  tie_word_embeddings: false,
};

type StDType = "BF16" | "F16" | "F32";

// Values exactly representable in every dtype (multiples of 1/64 below 4), so a round trip
// through any of them is exact.
function randomValues(n: number): Float32Array {
  return Float32Array.from({ length: n }, () => Math.round((Math.random() * 2 - 1) * 64) / 64);
}

function encode(values: Float32Array, dtype: StDType): ArrayBufferView {
  if (dtype === "F32") return values;
  return Uint16Array.from(values, dtype === "BF16" ? f32ToBf16 : f32ToF16);
}

async function writeModel(
  dir: string,
  dtype: StDType,
  options: { shards?: number; edit?: (t: Record<string, SafetensorsEntry>) => void } = {},
): Promise<Map<string, Float32Array>> {
  const config = parseLlamaConfig(configJson);
  const values = new Map<string, Float32Array>();
  const tensors: Record<string, SafetensorsEntry> = {};
  for (const [name, shape] of llamaWeightShapes(config)) {
    const v = randomValues(shape.reduce((a, b) => a * b, 1));
    values.set(name, v);
    tensors[name] = { dtype, shape, data: encode(v, dtype) };
  }
  options.edit?.(tensors);
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(configJson));
  const shards = options.shards ?? 1;
  if (shards === 1) {
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    return values;
  }
  const names = Object.keys(tensors);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${s + 1}-of-${shards}.safetensors`;
    const part = names.filter((_, i) => i % shards === s);
    await writeSafetensors(`${dir}/${file}`, Object.fromEntries(part.map((n) => [n, tensors[n]])));
    for (const n of part) weightMap[n] = file;
  }
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
  return values;
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "fp4lab-model-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

for (const dtype of ["BF16", "F16", "F32"] as const) {
  for (const shards of [1, 3]) {
    Deno.test(`loads ${dtype} weights from ${shards} shard(s) exactly`, () =>
      withDir(async (dir) => {
        const values = await writeModel(dir, dtype, { shards });
        let progress = 0;
        const model = await LlamaModel.load(dir, { onProgress: (d) => (progress = d) });
        assertEquals(progress, values.size);
        for (const [name, v] of values) {
          const w = model.weight(name);
          assertEquals(w.dtype, dtype === "BF16" ? "bf16" : "f32");
          const got = w.dtype === "bf16"
            ? Float32Array.from(w.data as Uint16Array, (b) => {
              return new Float32Array(new Uint32Array([b << 16]).buffer)[0];
            })
            : w.data;
          assertEquals(Array.from(got), Array.from(v), name);
        }
        const ids = Int32Array.from({ length: 11 }, () => Math.floor(Math.random() * 30));
        const logits = await forwardLogits(model, ids);
        assert(logits.every(Number.isFinite));
      }));
  }
}

Deno.test("loaded and in-memory models with the same weights give the same logits", () =>
  withDir(async (dir) => {
    await writeModel(dir, "BF16");
    const loaded = await LlamaModel.load(dir);
    const config = parseLlamaConfig(configJson);
    const weights = new Map(
      [...llamaWeightShapes(config).keys()].map((n) => [n, loaded.weight(n)]),
    );
    const copy = LlamaModel.fromWeights(config, weights);
    const ids = Int32Array.from({ length: 9 }, () => Math.floor(Math.random() * 30));
    assertEquals(
      Array.from(await forwardLogits(copy, ids)),
      Array.from(await forwardLogits(loaded, ids)),
    );
  }));

Deno.test("a missing tensor is named", () =>
  withDir(async (dir) => {
    await writeModel(dir, "BF16", { edit: (t) => delete t["model.layers.1.mlp.up_proj.weight"] });
    await assertRejects(() => LlamaModel.load(dir), Error, `"model.layers.1.mlp.up_proj.weight"`);
  }));

Deno.test("a tensor of the wrong shape is named with both shapes", () =>
  withDir(async (dir) => {
    await writeModel(dir, "F32", {
      edit: (t) => {
        t["model.layers.0.self_attn.k_proj.weight"] = {
          dtype: "F32",
          shape: [24, 24],
          data: new Float32Array(24 * 24),
        };
      },
    });
    await assertRejects(
      () => LlamaModel.load(dir),
      Error,
      "has shape [24, 24], the config implies [12, 24]",
    );
  }));

Deno.test("NaN or infinite weights are refused", async () => {
  for (const [dtype, bad] of [["BF16", NaN], ["F32", Infinity], ["F16", NaN]] as const) {
    await withDir(async (dir) => {
      await writeModel(dir, dtype, {
        edit: (t) => {
          const v = randomValues(24);
          v[Math.floor(Math.random() * 24)] = bad;
          t["model.norm.weight"] = { dtype, shape: [24], data: encode(v, dtype) };
        },
      });
      await assertRejects(() => LlamaModel.load(dir), Error, `"model.norm.weight" holds a NaN`);
    });
  }
});

Deno.test("unsupported dtypes, missing files and non-CPU devices are refused", () =>
  withDir(async (dir) => {
    await writeModel(dir, "F32", {
      edit: (t) => {
        t["model.norm.weight"] = { dtype: "I32", shape: [24], data: new Int32Array(24) };
      },
    });
    await assertRejects(() => LlamaModel.load(dir), Error, "is I32");
    await Deno.remove(`${dir}/model.safetensors`);
    await assertRejects(() => LlamaModel.load(dir), Error, "model.safetensors");
    await Deno.remove(`${dir}/config.json`);
    await assertRejects(() => LlamaModel.load(dir), Error, "config.json");
    await assertRejects(
      () => LlamaModel.load(dir, { device: "cuda" }),
      Error,
      "only implemented on the CPU",
    );
  }));
