// The tokenizer must give the ids Python's `tokenizers` gives: compared against the fixture
// written on the GPU machine by tests/gpu/make_tokenizer_fixture.py (the test fails while the
// fixture is missing), plus properties that hold regardless of the fixture.
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { HfTokenizer } from "../mod.ts";
import { testModelDir } from "../lib/paths.ts";

const FIXTURE = new URL("./fixtures/model/tokenizer_brown-llama-29m.json", import.meta.url);

interface Fixture {
  strings: { text: string; ids: number[] }[];
  valid_prefix: { text: string; ids: number[] };
  valid_full: { count: number; sha256: string };
}

async function fixture(): Promise<Fixture> {
  try {
    return JSON.parse(await Deno.readTextFile(FIXTURE));
  } catch (e) {
    throw new Error(
      `tokenizer fixture ${FIXTURE.pathname} is missing or unreadable: run ` +
        `\`python3 tests/gpu/make_tokenizer_fixture.py MODEL_DIR\` where the Python tokenizers ` +
        `package is installed (${(e as Error).message})`,
    );
  }
}

const tokenizer = HfTokenizer.load(testModelDir());

Deno.test("ids of the fixture strings equal Python tokenizers'", async () => {
  const tok = await tokenizer;
  const fx = await fixture();
  assert(fx.strings.length > 3);
  for (const { text, ids } of fx.strings) {
    assertEquals(Array.from(tok.encode(text)), ids, JSON.stringify(text));
  }
});

Deno.test("ids of the first characters of valid.txt equal Python tokenizers'", async () => {
  const tok = await tokenizer;
  const { text, ids } = (await fixture()).valid_prefix;
  assert(ids.length > 1000);
  assertEquals(Array.from(tok.encode(text)), ids);
});

Deno.test("the whole of valid.txt tokenizes to Python's ids (count and SHA-256)", async () => {
  const tok = await tokenizer;
  const { count, sha256 } = (await fixture()).valid_full;
  const ids = tok.encode(await Deno.readTextFile(`${testModelDir()}/valid.txt`));
  assertEquals(ids.length, count);
  const le = new Uint8Array(ids.length * 4);
  const view = new DataView(le.buffer);
  ids.forEach((id, i) => view.setInt32(i * 4, id, true));
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", le));
  assertEquals(Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""), sha256);
});

Deno.test("decode inverts encode on a random slice of valid.txt; no special tokens added", async () => {
  const tok = await tokenizer;
  const text = await Deno.readTextFile(`${testModelDir()}/valid.txt`);
  const start = Math.floor(Math.random() * (text.length - 5000));
  const slice = text.slice(start, start + 5000);
  const ids = tok.encode(slice);
  assertEquals(tok.decode(ids), slice, `slice at ${start}`);
  assert(ids.every((id) => id > 1 && id < tok.vocabSize), "a special or out-of-range id");
  assertEquals(Array.from(tok.encode("<|bos|>")), [0]);
  assertEquals(tok.vocabSize, 4096);
});

Deno.test("a missing or malformed tokenizer.json is reported with its path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertRejects(() => HfTokenizer.load(dir), Error, `${dir}/tokenizer.json`);
    await Deno.writeTextFile(`${dir}/tokenizer.json`, "{");
    await assertRejects(() => HfTokenizer.load(dir), Error, "not valid JSON");
    await Deno.writeTextFile(`${dir}/tokenizer.json`, `{"model": {}}`);
    await assertRejects(() => HfTokenizer.load(dir), Error, "model.vocab");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
