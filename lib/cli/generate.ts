/**
 * `deno task generate`: text generation from a Llama-family checkpoint (dense, or quantized by
 * fp4lab's exporter) with a KV cache; streams the text to stdout as tokens come and reports
 * prefill and decode tokens/s on stderr.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { generate, type GenerationStats } from "../generate/generate.ts";
import { requireDevice } from "../device.ts";
import { HfTokenizer } from "../model/tokenizer.ts";
import { loadQuantized } from "../pipeline/export.ts";
import { testModelDir } from "../paths.ts";

const HELP = `deno task generate --prompt TEXT [options]

Generates text after the prompt with a KV cache (the prompt runs in one prefill pass, then one
token per decode step), streaming it to stdout; prefill and decode tokens/s go to stderr.

Options:
  --model DIR         model folder: a Hugging Face Llama checkpoint, or one written by
                      fp4lab's exporter [default: the shared test model brown-llama-29m]
  --prompt TEXT       the prompt (tokenized with the model's tokenizer, special tokens added)
  --max-tokens N      new tokens at most [default: 64]; prompt + N must fit the context
  --temperature T     0 = greedy [default: 0]
  --top-p P           nucleus mass in (0, 1] [default: 1]
  --seed S            seed of the sampling generator [default: 0]
  --device NAME       cpu | cuda [default: cpu]
  --weights KIND      fp4 | dense: an MXFP4/NVFP4 checkpoint's linears run packed through the
                      FP4 kernels (fp4, the default on cuda) or dequantized (dense, the
                      default on cpu, where the f32 engine is the faster and exact one)
  --json              after the text, print one JSON line with the tokens and the stats
  -h, --help          show this help
`;

function number(v: string | undefined, name: string, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n)) throw new Error(`--${name}: not a number: "${v}"`);
  return n;
}

async function eosIds(dir: string): Promise<number[]> {
  const ids: number[] = [];
  for (const file of ["generation_config.json", "config.json"]) {
    try {
      const json = JSON.parse(await Deno.readTextFile(`${dir}/${file}`));
      const e = json.eos_token_id;
      if (typeof e === "number") ids.push(e);
      else if (Array.isArray(e)) ids.push(...e.filter((x) => typeof x === "number"));
      if (ids.length) return ids;
    } catch {
      // optional file
    }
  }
  return ids;
}

function statsLine(s: GenerationStats): string {
  const f = (x: number) => Number.isFinite(x) ? x.toFixed(1) : "n/a";
  return `prefill: ${s.promptTokens} tokens, ${f(s.prefillTokensPerSecond)} tokens/s; ` +
    `decode: ${s.decodeSteps} tokens, ${f(s.decodeTokensPerSecond)} tokens/s`;
}

/**
 * Runs the CLI on `args`; returns the process exit code.
 *
 * @example
 * ```ts
 * import { main } from "./generate.ts";
 * console.assert(await main(["--help"]) === 0);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  let opts;
  try {
    opts = parseArgs({
      args,
      options: {
        model: { type: "string" },
        prompt: { type: "string" },
        "max-tokens": { type: "string" },
        temperature: { type: "string" },
        "top-p": { type: "string" },
        seed: { type: "string" },
        device: { type: "string" },
        weights: { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    console.error(`${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (opts.help) {
    console.log(HELP);
    return 0;
  }
  try {
    if (opts.prompt === undefined) throw new Error("--prompt is required (see --help)");
    const dir = opts.model ?? testModelDir();
    const device = requireDevice(opts.device ?? "cpu");
    const maxTokens = number(opts["max-tokens"], "max-tokens", 64);
    const temperature = number(opts.temperature, "temperature", 0);
    const topP = number(opts["top-p"], "top-p", 1);
    const seed = number(opts.seed, "seed", 0);
    if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`--seed must be an integer >= 0`);
    const weights = opts.weights ?? (device === "cuda" ? "fp4" : "dense");
    if (weights !== "fp4" && weights !== "dense") {
      throw new Error(`--weights must be fp4 or dense, got "${weights}"`);
    }
    const loaded = await loadQuantized(dir);
    const tokenizer = await HfTokenizer.load(dir);
    const run = generate(loaded.model, opts.prompt, {
      maxTokens,
      temperature,
      topP,
      seed,
      device,
      tokenizer,
      stopTokens: await eosIds(dir),
      schemes: loaded.schemes,
      quantized: weights === "fp4" ? loaded.fp4 : undefined,
    });
    const out = new TextEncoder();
    const tokens: number[] = [];
    for await (const t of run) {
      tokens.push(t.token);
      await Deno.stdout.write(out.encode(t.text));
    }
    await Deno.stdout.write(out.encode("\n"));
    const stats = run.stats!;
    console.error(statsLine(stats));
    if (opts.json) {
      const kernels = weights === "fp4" && loaded.fp4.size > 0 ? "fp4" : "dense";
      console.log(JSON.stringify({ model: dir, device, weights: kernels, tokens, ...stats }));
    }
    return 0;
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
