// `deno task quantize`, `deno task reproduce` and `deno task demo` end to end in subprocesses,
// on a tiny random Llama written to a temp folder: help, --json, the exported folder and its
// manifest, an exact reproduction, and clear failures for bad input.
import { assert, assertEquals } from "./assert.ts";
import { cudaStatus } from "../lib/device.ts";
import { testSeed, tinyModelDir } from "./pipeline_fixture.ts";

const CONFIG = new URL("../deno.json", import.meta.url).pathname;
const cli = (name: string) => new URL(`../lib/cli/${name}.ts`, import.meta.url).pathname;

async function run(
  name: string,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", CONFIG, cli(name), ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const lastJson = (s: string) => JSON.parse(s.trim().split("\n").at(-1)!);

Deno.test("quantize, demo and reproduce --help describe their options", async () => {
  const q = await run("quantize", "--help");
  assertEquals(q.code, 0);
  for (
    const opt of [
      "--model",
      "--out",
      "--format",
      "--method",
      "--act-format",
      "--hadamard",
      "--calib",
      "--nsamples",
      "--device",
      "--seed",
      "--force",
      "--json",
      "--eval",
    ]
  ) {
    assert(q.stdout.includes(opt), `quantize help lacks ${opt}`);
  }
  const d = await run("demo", "--help");
  assertEquals(d.code, 0);
  assert(d.stdout.includes("--nsamples") && d.stdout.includes("--eval-windows"));
  const r = await run("reproduce", "--help");
  assertEquals(r.code, 0);
  assert(r.stdout.includes("MANIFEST"));
});

Deno.test("quantize --json exports a model with a manifest that reproduce matches", async () => {
  const seed = testSeed();
  const model = await tinyModelDir(seed);
  const out = `${model}/q`;
  const r = await run(
    "quantize",
    "--model",
    model,
    "--out",
    out,
    "--format",
    "mxfp4",
    "--method",
    "mr-gptq",
    "--act-format",
    "mxfp4",
    "--nsamples",
    "2",
    "--eval",
    "--eval-windows",
    "2",
    "--json",
  );
  assertEquals(r.code, 0, r.stderr);
  const res = lastJson(r.stdout);
  // MR-GPTQ rotates FP4 weights by 16 by default (lib/gptq mrGptqRotation), MXFP4 included.
  assertEquals([res.hadamard, res.calibrationWindows, res.evalWindows], [16, 2, 2]);
  assert(res.ppl > 1 && Number.isFinite(res.proxyLossSum), JSON.stringify(res));
  assertEquals(Object.keys(res.proxyLoss).length, 14);
  const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
  assertEquals(names, ["config.json", "manifest.json", "model.safetensors", "tokenizer.json"]);
  const manifest = JSON.parse(await Deno.readTextFile(`${out}/manifest.json`));
  assertEquals(manifest.command, "quantize");
  assertEquals(manifest.results.ppl, res.ppl);
  assertEquals(manifest.results.outputs["model.safetensors"], res.outputs["model.safetensors"]);
  assert(manifest.inputs.some((i: { path: string }) => i.path.endsWith("calib.txt")));
  assert(manifest.inputs.some((i: { path: string }) => i.path.endsWith("model.safetensors")));
  const cfg = JSON.parse(await Deno.readTextFile(`${out}/config.json`));
  assertEquals(cfg.quantization_config.calibration.windows, 2);
  assertEquals(cfg.quantization_config.rotation.block, 16);

  const again = await run("reproduce", `${out}/manifest.json`, "--json");
  assertEquals(again.code, 0, again.stderr + again.stdout);
  const rep = lastJson(again.stdout);
  assert(rep.match, JSON.stringify(rep.items));

  // deno task eval on the exported folder gives the in-memory model's perplexity bit for bit,
  // and its manifest reproduces.
  const ev = await run(
    "eval",
    "--model",
    out,
    "--data",
    `${model}/valid.txt`,
    "--windows",
    "2",
    "--manifest",
    `${model}/eval.json`,
    "--json",
  );
  assertEquals(ev.code, 0, ev.stderr);
  assertEquals(lastJson(ev.stdout).ppl, res.ppl);
  const evAgain = await run("reproduce", `${model}/eval.json`, "--json");
  assertEquals(evAgain.code, 0, evAgain.stderr + evAgain.stdout);
  // Without --data, the exported folder (which holds no text) is evaluated on the text its
  // quantize manifest names.
  const evDefault = await run("eval", "--model", out, "--windows", "2", "--json");
  assertEquals(evDefault.code, 0, evDefault.stderr);
  assertEquals(lastJson(evDefault.stdout).data, `${model}/valid.txt`);
  assertEquals(lastJson(evDefault.stdout).ppl, res.ppl);

  // The exported folder is refused as --out unless --force.
  const refused = await run(
    "quantize",
    "--model",
    model,
    "--out",
    out,
    "--method",
    "rtn",
    "--nsamples",
    "0",
  );
  assertEquals(refused.code, 1);
  assert(refused.stderr.includes("exists (pass --force"), refused.stderr);

  // A changed input makes reproduce report a mismatch (exit 1).
  await Deno.writeTextFile(`${model}/calib.txt`, " extra", { append: true });
  const changed = await run("reproduce", `${out}/manifest.json`, "--json");
  assertEquals(changed.code, 1);
  assert(!lastJson(changed.stdout).match);
  await Deno.remove(model, { recursive: true });
});

Deno.test("quantize fails clearly on bad input and leaves no output folder", async () => {
  const seed = testSeed();
  const model = await tinyModelDir(seed, 20);
  const out = `${model}/q`;
  const missing = await run("quantize", "--model", `${model}/nope`, "--out", out);
  assertEquals(missing.code, 1);
  assert(missing.stderr.includes("config.json is missing"), missing.stderr);
  const short = await run("quantize", "--model", model, "--out", out, "--method", "gptq");
  assertEquals(short.code, 1);
  assert(short.stderr.includes("fewer than one window"), short.stderr);
  const group = await run(
    "quantize",
    "--model",
    model,
    "--out",
    out,
    "--format",
    "int4:g48",
    "--method",
    "rtn",
    "--nsamples",
    "0",
  );
  assertEquals(group.code, 1);
  assert(group.stderr.includes("not divisible by the group size 48"), group.stderr);
  const method = await run("quantize", "--model", model, "--out", out, "--method", "awq");
  assertEquals(method.code, 2);
  assert(method.stderr.includes("--method must be one of"), method.stderr);
  if (!cudaStatus().available) {
    const cuda = await run("quantize", "--model", model, "--out", out, "--device", "cuda");
    assertEquals(cuda.code, 1);
    assert(cuda.stderr.includes(`device "cuda" is not usable here`), cuda.stderr);
  }
  let left = true;
  try {
    await Deno.stat(out);
  } catch {
    left = false;
  }
  assert(!left, "an output folder was left behind");
  await Deno.remove(model, { recursive: true });
});

Deno.test("demo runs on a model folder and prints the table with --json", async () => {
  const seed = testSeed();
  const model = await tinyModelDir(seed);
  const r = await run(
    "demo",
    "--model",
    model,
    "--formats",
    "nvfp4",
    "--nsamples",
    "1",
    "--eval-windows",
    "1",
    "--json",
  );
  assertEquals(r.code, 0, r.stderr);
  const res = lastJson(r.stdout);
  assertEquals(res.rows.map((x: { format: string; method: string }) => `${x.format} ${x.method}`), [
    "bf16 -",
    "nvfp4 rtn",
    "nvfp4 mr-gptq (had 16)",
  ]);
  assert(r.stdout.includes("delta vs bf16"));
  await Deno.remove(model, { recursive: true });
});
