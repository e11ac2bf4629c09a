// `deno task eval` end to end in a subprocess: help, a one-window evaluation with --json, and
// clear failures for bad options.
import { assert, assertEquals } from "./assert.ts";
import { cudaStatus } from "../lib/device.ts";

const CLI = new URL("../lib/cli/eval.ts", import.meta.url).pathname;

async function run(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("eval --help describes the options and exits 0", async () => {
  const r = await run("--help");
  assertEquals(r.code, 0);
  for (const opt of ["--model", "--data", "--device", "--windows", "--json"]) {
    assert(r.stdout.includes(opt), `help lacks ${opt}`);
  }
});

Deno.test("eval --windows 1 --json prints the result as the last line", async () => {
  const r = await run("--windows", "1", "--json");
  assertEquals(r.code, 0, r.stderr);
  const last = r.stdout.trim().split("\n").at(-1)!;
  const result = JSON.parse(last);
  assertEquals([result.windows, result.tokens, result.predictions], [1, 512, 511]);
  assert(result.ppl > 20 && result.ppl < 100, `ppl ${result.ppl}`);
  assert(result.seconds > 0 && result.textTokens > 100_000);
});

Deno.test("eval refuses bad options with a message", async () => {
  if (!cudaStatus().available) {
    const cuda = await run("--device", "cuda");
    assertEquals(cuda.code, 1);
    assert(cuda.stderr.includes(`device "cuda" is not usable here`), cuda.stderr);
  }
  const windows = await run("--windows", "0");
  assertEquals(windows.code, 1);
  assert(windows.stderr.includes("--windows must be a positive integer"), windows.stderr);
  const data = await run("--data", "/nonexistent.txt");
  assertEquals(data.code, 1);
  assert(data.stderr.includes("/nonexistent.txt"), data.stderr);
  const unknown = await run("--frobnicate");
  assertEquals(unknown.code, 2);
});

// The CUDA engine's bf16 activations against the CPU's f32 forward: the same window's ppl within
// 1% (observed ~0.1%).
Deno.test({
  name: "eval --device cuda agrees with the CPU evaluation on one window",
  ignore: !cudaStatus().available,
  async fn() {
    const results = [];
    for (const device of ["cpu", "cuda"]) {
      const r = await run("--windows", "2", "--device", device, "--json");
      assertEquals(r.code, 0, r.stderr);
      results.push(JSON.parse(r.stdout.trim().split("\n").at(-1)!).ppl);
    }
    const [cpu, gpu] = results;
    assert(Math.abs(gpu - cpu) < 0.01 * cpu, `cuda ppl ${gpu} vs cpu ${cpu}`);
  },
});
