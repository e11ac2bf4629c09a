/**
 * `deno task demo`: the README's main command. Quantizes a model with MR-GPTQ (W4A16, NVFP4
 * and MXFP4), with RTN as the baseline, evaluates each against BF16 under the perplexity
 * protocol of DESIGN.md and prints the table. The model is `--model DIR`, else the shared test
 * model when it is on this machine, else a small Llama with seeded random weights evaluated on
 * synthetic tokens (labelled as such: its numbers only show that the pipeline runs).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { LlamaModel } from "../model/llama.ts";
import { parseLlamaConfig } from "../model/config.ts";
import { perplexity, WINDOW_TOKENS } from "../model/perplexity.ts";
import { HfTokenizer } from "../model/tokenizer.ts";
import { testModelDir } from "../paths.ts";
import { calibrationWindows } from "../pipeline/calibrate.ts";
import { METHODS, quantizeModel } from "../pipeline/quantize_model.ts";
import type { GptqMethod } from "../gptq/layer.ts";
import { formatTable, Progress } from "./table.ts";
import type { Linear } from "../model/forward.ts";
import { resolveSpec } from "../formats/spec.ts";

const HELP = `deno task demo [options]

Quantizes a Llama model to FP4 weights (W4A16) with MR-GPTQ and with RTN, in NVFP4 and MXFP4,
and prints perplexity against BF16. Defaults keep the run to a few minutes on 2 CPU cores; use
--nsamples 128 and --eval-windows 0 for the full protocol.

Options:
  --model DIR         model folder [default: the shared test model brown-llama-29m when present,
                      else a small Llama with seeded random weights on synthetic tokens]
  --random            use the generated random model even when the test model is present
  --formats LIST      comma-separated presets [default: nvfp4,mxfp4]
  --methods LIST      comma-separated methods [default: rtn,mr-gptq]
  --act-format P      also quantize activations (e.g. nvfp4 for W4A4) [default: none]
  --nsamples N        calibration windows of ${WINDOW_TOKENS} tokens [default: 16]
  --eval-windows N    evaluation windows, 0 = all [default: 32]
  --json              print a machine-readable result as the last line
  -h, --help          show this help
`;

/** One row of the demo's table. */
export interface DemoRow {
  /** Weight format ("bf16" for the baseline). */
  format: string;
  /** Method ("-" for the baseline). */
  method: string;
  /** Weights/activations, e.g. "W4A16". */
  scheme: string;
  /** Perplexity. */
  ppl: number;
  /** ppl - BF16 ppl. */
  delta: number;
  /** Seconds (quantization + evaluation). */
  seconds: number;
}

interface Source {
  label: string;
  load: () => Promise<LlamaModel>;
  calib: Int32Array;
  valid: Int32Array;
}

const RANDOM_SEED = 1;

// A Zipf-like token stream from a seeded LCG: text-like frequencies without any download.
function syntheticTokens(n: number, vocab: number, seed: number): Int32Array {
  let s = seed >>> 0;
  const cdf = new Float64Array(vocab);
  let acc = 0;
  for (let i = 0; i < vocab; i++) cdf[i] = acc += 1 / (i + 1);
  const ids = new Int32Array(n);
  for (let t = 0; t < n; t++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const u = (s / 2 ** 32) * acc;
    let lo = 0, hi = vocab - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    ids[t] = lo;
  }
  return ids;
}

async function source(dir: string | undefined, random: boolean): Promise<Source> {
  if (!random) {
    let modelDir = dir;
    if (modelDir === undefined) {
      try {
        modelDir = testModelDir();
      } catch {
        modelDir = undefined;
      }
    }
    if (modelDir !== undefined) {
      const tok = await HfTokenizer.load(modelDir);
      const read = (name: string) => Deno.readTextFile(`${modelDir}/${name}`);
      return {
        label: modelDir,
        load: () => LlamaModel.load(modelDir!),
        calib: tok.encode(await read("calib.txt")),
        valid: tok.encode(await read("valid.txt")),
      };
    }
  }
  const config = parseLlamaConfig({
    model_type: "llama",
    hidden_size: 128,
    intermediate_size: 384,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 512,
  });
  return {
    label: `RANDOM Llama (seeded weights, seed ${RANDOM_SEED}; synthetic Zipf tokens) — ` +
      `the numbers only show that the pipeline runs`,
    load: () => Promise.resolve(LlamaModel.random(config, { seed: RANDOM_SEED })),
    calib: syntheticTokens(64 * WINDOW_TOKENS, 512, 11),
    valid: syntheticTokens(64 * WINDOW_TOKENS, 512, 12),
  };
}

function bitsOf(preset: string): number {
  const e = resolveSpec(preset).element;
  return ["e2m1", "int4", "uint4"].includes(e) ? 4 : ["e2m3", "e3m2"].includes(e) ? 6 : 8;
}

function list(v: string): string[] {
  return v.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}

function count(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} must be an integer >= 0, got "${v}"`);
  return n;
}

/**
 * Runs the CLI on `args`; returns the process exit code.
 *
 * @example
 * ```ts
 * import { main } from "./demo.ts";
 * console.assert(await main(["--help"]) === 0);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        model: { type: "string" },
        random: { type: "boolean", default: false },
        formats: { type: "string", default: "nvfp4,mxfp4" },
        methods: { type: "string", default: "rtn,mr-gptq" },
        "act-format": { type: "string" },
        nsamples: { type: "string", default: "16" },
        "eval-windows": { type: "string", default: "32" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    console.error(`demo: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  try {
    const methods = list(values.methods) as GptqMethod[];
    for (const m of methods) {
      if (!METHODS.includes(m)) throw new Error(`unknown method "${m}" in --methods`);
    }
    const formats = list(values.formats);
    const nsamples = count(values.nsamples, "--nsamples");
    const evalWindows = count(values["eval-windows"], "--eval-windows") || undefined;
    const act = values["act-format"] ?? null;
    const src = await source(values.model, values.random);
    console.error(`model: ${src.label}`);
    const calib = nsamples > 0 ? calibrationWindows(src.calib, nsamples) : [];

    const evaluate = async (model: LlamaModel, label: string, linear?: Linear) => {
      const total = Math.min(Math.floor(src.valid.length / WINDOW_TOKENS), evalWindows ?? Infinity);
      const bar = new Progress(`eval ${label}`, total);
      const r = await perplexity(model, src.valid, {
        linear,
        maxWindows: evalWindows,
        onProgress: (_d, _t, p) => bar.tick(1, `ppl ${p.toFixed(3)}`),
      });
      bar.done();
      return r;
    };

    let t = performance.now();
    const base = await evaluate(await src.load(), "bf16");
    const rows: DemoRow[] = [{
      format: "bf16",
      method: "-",
      scheme: "W16A16",
      ppl: base.ppl,
      delta: 0,
      seconds: (performance.now() - t) / 1000,
    }];
    for (const format of formats) {
      for (const method of methods) {
        t = performance.now();
        const model = await src.load();
        let bar: Progress | null = null;
        const q = await quantizeModel(model, method === "rtn" ? [] : calib, {
          format,
          method,
          actFormat: act,
          onProgress: (p) => {
            if (p.done === 0) {
              bar = new Progress(`${format} ${method} block ${p.block} ${p.stage}`, p.total);
              return;
            }
            bar!.tick();
            if (p.done === p.total) bar!.done();
          },
        });
        const r = await evaluate(model, `${format} ${method}`, q.linear);
        rows.push({
          format,
          method: q.hadamard ? `${method} (had ${q.hadamard})` : method,
          scheme: `W${bitsOf(format)}A${act ? bitsOf(act) : 16}`,
          ppl: r.ppl,
          delta: r.ppl - base.ppl,
          seconds: (performance.now() - t) / 1000,
        });
      }
    }
    console.log(`model: ${src.label}`);
    console.log(
      `calibration: ${calib.length} windows; evaluation: ${base.windows} windows of ` +
        `${WINDOW_TOKENS} tokens (${base.predictions} predictions)\n`,
    );
    console.log(formatTable(
      ["format", "method", "scheme", "ppl", "delta vs bf16", "seconds"],
      rows.map((r) => [
        r.format,
        r.method,
        r.scheme,
        Number(r.ppl.toFixed(3)),
        r.format === "bf16" ? "-" : `${r.delta >= 0 ? "+" : ""}${r.delta.toFixed(3)}`,
        Number(r.seconds.toFixed(1)),
      ]),
    ));
    if (values.json) {
      console.log(JSON.stringify({
        model: src.label,
        calibrationWindows: calib.length,
        evalWindows: base.windows,
        rows,
      }));
    }
    return 0;
  } catch (e) {
    console.error(`demo: ${(e as Error).message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
