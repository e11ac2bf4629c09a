// `deno task generate` end to end on the shared test model: streamed text equals the
// tokenizer's decoding of the tokens reported by --json, stats on stderr, and clear errors for
// bad input (prompt or --max-tokens beyond the context, CUDA without a GPU, bad options).
import { assert, assertEquals } from "./assert.ts";
import { cudaStatus } from "../lib/device.ts";
import { HfTokenizer } from "../lib/model/tokenizer.ts";
import { testModelDir } from "../lib/paths.ts";

const cli = new URL("../lib/cli/generate.ts", import.meta.url).pathname;

async function run(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("generate CLI streams the decoded tokens and reports tokens/s", async () => {
  const r = await run("--prompt", "The jury said", "--max-tokens", "12", "--json");
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split("\n");
  const json = JSON.parse(lines[lines.length - 1]);
  assertEquals(json.tokens.length, json.generatedTokens);
  assert(json.generatedTokens >= 1 && json.generatedTokens <= 12);
  const tok = await HfTokenizer.load(testModelDir());
  const text = r.stdout.slice(0, r.stdout.lastIndexOf(lines[lines.length - 1]));
  assertEquals(text, tok.decode(json.tokens) + "\n");
  assert(/prefill: \d+ tokens, [\d.]+ tokens\/s; decode: \d+ tokens/.test(r.stderr), r.stderr);
});

Deno.test("generate CLI: bad input gives clear errors", async () => {
  const long = "the ".repeat(2100);
  const cases: [string[], string][] = [
    [["--prompt", long], "more than the model's context of 2048"],
    [["--prompt", "hi", "--max-tokens", "5000"], "exceed the model's context of 2048"],
    [["--prompt", "hi", "--top-p", "2"], "top-p"],
    [["--prompt", "hi", "--max-tokens", "x"], "not a number"],
    [["--max-tokens", "3"], "--prompt is required"],
    [["--prompt", "hi", "--model", "/nonexistent"], "/nonexistent"],
    [["--prompt", "hi", "--weights", "int3"], "--weights must be fp4 or dense"],
  ];
  if (!cudaStatus().available) cases.push([["--prompt", "hi", "--device", "cuda"], "cuda"]);
  for (const [args, msg] of cases) {
    const r = await run(...args);
    assertEquals(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
    assert(r.stderr.includes(msg), `${args.join(" ")}: "${r.stderr}" lacks "${msg}"`);
  }
  const help = await run("--help");
  assertEquals(help.code, 0);
  assert(help.stdout.includes("--max-tokens") && help.stdout.includes("--weights"));
});
