/**
 * `deno task eval`: perplexity of a Hugging Face Llama checkpoint on a text file, under the
 * protocol of DESIGN.md (whole text tokenized without special tokens, windows of 512,
 * remainder dropped, ppl = exp(mean NLL)).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { HfTokenizer } from "../model/tokenizer.ts";
import { LlamaModel } from "../model/llama.ts";
import { perplexity, WINDOW_TOKENS } from "../model/perplexity.ts";
import { testModelDir } from "../paths.ts";
import { parseDevice, requireDevice } from "../device.ts";
import { DecodeEngine } from "../generate/engine.ts";
import type { Fp4Weights } from "../kernels/fp4_linear.ts";
import type { InputScheme } from "../pipeline/act_quant.ts";
import { formatTable, Progress } from "./table.ts";
import type { Linear } from "../model/forward.ts";
import { loadQuantized } from "../pipeline/export.ts";
import {
  digestFiles,
  gitCommit,
  MANIFEST_VERSION,
  modelFiles,
  TOOL,
  writeManifest,
} from "../pipeline/manifest.ts";

const HELP = `deno task eval [options]

Perplexity of a Llama-family Hugging Face checkpoint on a text file: the whole text is
tokenized with the model's tokenizer.json (no special tokens), cut into windows of
${WINDOW_TOKENS} tokens (remainder dropped), every next token in each window is scored, and
ppl = exp(mean NLL).

Options:
  --model DIR     model folder (config.json, tokenizer.json, *.safetensors), also a
                  quantized one written by deno task quantize
                  [default: the shared test model brown-llama-29m]
  --data FILE     evaluation text [default: valid.txt in the model folder; for a folder
                  written by deno task quantize, the text its manifest names]
  --device NAME   cpu | cuda [default: cpu]. cuda runs the decode engine's kernels with
                  bf16 activations between ops (f32 on the CPU), cuBLAS for the dense
                  products when it can be loaded, and a quantized checkpoint's input
                  rotations and activation quantization on the GPU
  --windows N     evaluate only the first N windows
  --manifest FILE write a manifest of the run (options, checksums of the model files and
                  the text, result) to FILE; deno task reproduce FILE re-runs it
  --json          print a machine-readable result as the last line:
                  {"ppl", "tokens", "windows", "seconds", ...}
  -h, --help      show this help
`;

/** What one evaluation reports. */
export interface EvalResult {
  /** Perplexity. */
  ppl: number;
  /** Tokens in the evaluated windows. */
  tokens: number;
  /** Windows evaluated. */
  windows: number;
  /** Wall time of the forward passes, seconds (loading excluded). */
  seconds: number;
  /** Scored predictions (windows x 511). */
  predictions: number;
  /** Tokens the whole text has. */
  textTokens: number;
  /** Model folder. */
  model: string;
  /** Evaluation text. */
  data: string;
  /** Device used. */
  device: string;
}

/**
 * Runs the CLI on `args`; returns the process exit code.
 *
 * @example
 * ```ts
 * import { main } from "./eval.ts";
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
        data: { type: "string" },
        device: { type: "string", default: "cpu" },
        windows: { type: "string" },
        manifest: { type: "string" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    console.error(`eval: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  try {
    const started = new Date().toISOString();
    const result = await evaluate(values);
    if (values.manifest !== undefined) await writeEvalManifest(values.manifest, result, started);
    if (values.json) {
      console.log(JSON.stringify(result));
    } else {
      console.log(formatTable(["model", "data", "device", "windows", "tokens", "ppl", "seconds"], [
        [
          result.model,
          result.data,
          result.device,
          result.windows,
          result.tokens,
          result.ppl,
          result.seconds,
        ],
      ]));
    }
    return 0;
  } catch (e) {
    console.error(`eval: ${(e as Error).message}`);
    return 1;
  }
}

/**
 * valid.txt beside the model; for a checkpoint written by `deno task quantize` (which copies no
 * text), the evaluation text its manifest names.
 */
async function defaultData(modelDir: string): Promise<string> {
  const beside = `${modelDir}/valid.txt`;
  try {
    await Deno.stat(beside);
    return beside;
  } catch {
    // not there: look for the quantize run's own text
  }
  try {
    const manifest = JSON.parse(await Deno.readTextFile(`${modelDir}/manifest.json`));
    const data = manifest?.options?.data;
    if (typeof data === "string") {
      await Deno.stat(data);
      return data;
    }
  } catch {
    // no manifest, or its text is gone: report the plain default below
  }
  return beside;
}

async function evaluate(values: {
  model?: string;
  data?: string;
  device?: string;
  windows?: string;
}): Promise<EvalResult> {
  const device = parseDevice(values.device ?? "cpu");
  if (device === "cuda") requireDevice("cuda");
  let maxWindows: number | undefined;
  if (values.windows !== undefined) {
    maxWindows = Number(values.windows);
    if (!Number.isInteger(maxWindows) || maxWindows < 1) {
      throw new Error(`--windows must be a positive integer, got "${values.windows}"`);
    }
  }
  const modelDir = values.model ?? testModelDir();
  const dataPath = values.data ?? await defaultData(modelDir);
  let text: string;
  try {
    text = await Deno.readTextFile(dataPath);
  } catch (e) {
    throw new Error(`cannot read the evaluation text ${dataPath}: ${(e as Error).message}`);
  }
  // Progress goes to stderr even with --json: stdout's last line stays the result.
  const tokenizer = await HfTokenizer.load(modelDir);
  let loading: Progress | undefined;
  let model: LlamaModel;
  let linear: Linear | undefined;
  let schemes: ReadonlyMap<string, InputScheme> = new Map();
  let fp4: ReadonlyMap<string, Fp4Weights> = new Map();
  const config = JSON.parse(await Deno.readTextFile(`${modelDir}/config.json`).catch(() => "{}"));
  if (config.quantization_config) {
    ({ model, linear, schemes, fp4 } = await loadQuantized(modelDir));
  } else {
    model = await LlamaModel.load(modelDir, {
      onProgress: (_done, total) => (loading ??= new Progress("load", total)).tick(),
    });
  }
  loading?.done();
  if (model.config.maxPositionEmbeddings < WINDOW_TOKENS) {
    throw new Error(
      `the model's max_position_embeddings ${model.config.maxPositionEmbeddings} is below the ${WINDOW_TOKENS}-token window`,
    );
  }
  // MXFP4/NVFP4 checkpoints run their packed weights through the FP4 kernels on CUDA.
  using engine = device === "cuda"
    ? DecodeEngine.create(model, { device, contextLength: WINDOW_TOKENS, schemes, quantized: fp4 })
    : undefined;
  const ids = tokenizer.encode(text);
  const available = Math.floor(ids.length / WINDOW_TOKENS);
  const total = Math.min(available, maxWindows ?? available);
  const bar = new Progress("eval", total);
  const start = performance.now();
  const r = await perplexity(model, ids, {
    linear,
    scoreWindow: engine ? (w) => engine.nll(w) : undefined,
    maxWindows,
    onProgress: (_done, _total, ppl) => bar.tick(1, `ppl ${ppl.toFixed(3)}`),
  });
  bar.done();
  const seconds = (performance.now() - start) / 1000;
  return {
    ppl: r.ppl,
    tokens: r.tokens,
    windows: r.windows,
    seconds: Number(seconds.toFixed(2)),
    predictions: r.predictions,
    textTokens: ids.length,
    model: modelDir,
    data: dataPath,
    device,
  };
}

async function writeEvalManifest(path: string, r: EvalResult, started: string): Promise<void> {
  const argv = ["--model", r.model, "--data", r.data, "--device", r.device];
  if (r.windows < Math.floor(r.textTokens / WINDOW_TOKENS)) argv.push("--windows", `${r.windows}`);
  await writeManifest(path, {
    manifestVersion: MANIFEST_VERSION,
    command: "eval",
    tool: { ...TOOL },
    commit: await gitCommit(),
    options: { model: r.model, data: r.data, device: r.device, windows: r.windows },
    argv,
    inputs: await digestFiles([...await modelFiles(r.model), r.data]),
    seed: 0,
    device: r.device,
    started,
    timings: { eval: r.seconds },
    results: { ppl: r.ppl, tokens: r.tokens, windows: r.windows, predictions: r.predictions },
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));
