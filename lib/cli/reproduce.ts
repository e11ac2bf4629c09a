/**
 * `deno task reproduce MANIFEST`: re-runs the quantize or eval run a manifest records (same
 * arguments; a quantize run writes into a temporary folder) and reports, item by item, whether
 * the inputs still have the recorded checksums and the results match. On the CPU path the
 * exported weights and perplexities are deterministic and compared exactly; proxy losses to a
 * relative {@linkcode PROXY_TOLERANCE}.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { digestFiles, type Manifest, readManifest } from "../pipeline/manifest.ts";
import { formatTable } from "./table.ts";

const HELP = `deno task reproduce MANIFEST [--json]

Re-runs the run recorded in MANIFEST (a manifest.json written by deno task quantize or
deno task eval --manifest) and compares: input checksums, then the results: checksum of the
exported weights and perplexity exactly, proxy losses to a relative 1e-9 (the native GPTQ
solver sums them in a parallel reduction whose order varies).

Options:
  --json       print a machine-readable result as the last line: {"match", "items"}
  -h, --help   show this help
`;

/** Relative tolerance of the proxy-loss comparison (everything else is compared exactly). */
export const PROXY_TOLERANCE = 1e-9;

/** One compared item. */
export interface ReproduceItem {
  /** What is compared. */
  item: string;
  /** Recorded value. */
  recorded: unknown;
  /** Value now. */
  now: unknown;
  /** Whether they are equal. */
  match: boolean;
}

function lastJsonLine(text: string): Record<string, unknown> {
  const lines = text.trim().split("\n");
  try {
    return JSON.parse(lines[lines.length - 1]);
  } catch {
    throw new Error(
      `the re-run printed no JSON result line; its output ended with:\n${text.slice(-2000)}`,
    );
  }
}

/**
 * Re-runs `manifest` and compares; `onOutput` receives the re-run's stderr (progress).
 *
 * @example
 * ```ts
 * import { reproduce } from "./reproduce.ts";
 * try {
 *   await reproduce({
 *     manifestVersion: 1, command: "nope", tool: { name: "", version: "" }, commit: null,
 *     options: {}, argv: [], inputs: [], seed: 0, device: "cpu", started: "", timings: {},
 *     results: {},
 *   });
 * } catch (e) {
 *   console.assert((e as Error).message.includes("nope"));
 * }
 * ```
 */
export async function reproduce(
  manifest: Manifest,
  onOutput: (chunk: Uint8Array) => void = () => {},
): Promise<ReproduceItem[]> {
  if (manifest.command !== "quantize" && manifest.command !== "eval") {
    throw new Error(`cannot reproduce a "${manifest.command}" run (only quantize and eval)`);
  }
  const items: ReproduceItem[] = [];
  for (const d of manifest.inputs) {
    let now: string;
    try {
      now = (await digestFiles([d.path]))[0].sha256;
    } catch {
      now = "missing";
    }
    items.push({ item: `sha256 ${d.path}`, recorded: d.sha256, now, match: now === d.sha256 });
  }
  const script = new URL(`./${manifest.command}.ts`, import.meta.url).pathname;
  const args = [...manifest.argv, "--json"];
  let temp: string | null = null;
  if (manifest.command === "quantize") {
    temp = await Deno.makeTempDir({ prefix: "fp4lab-reproduce-" });
    args.push("--out", `${temp}/out`);
  }
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--config",
        new URL("../../deno.json", import.meta.url).pathname,
        script,
        ...args,
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const errDone = (async () => {
      for await (const chunk of child.stderr) onOutput(chunk);
    })();
    const out = await new Response(child.stdout).text();
    const status = await child.status;
    await errDone;
    if (!status.success) {
      throw new Error(`the re-run failed (exit ${status.code}); see its messages above`);
    }
    const now = lastJsonLine(out);
    const rec = manifest.results;
    const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
    const compare = (item: string, a: unknown, b: unknown) =>
      items.push({ item, recorded: a, now: b, match: same(a, b) });
    if (manifest.command === "quantize") {
      const ro = (rec.outputs ?? {}) as Record<string, string>;
      const no = (now.outputs ?? {}) as Record<string, string>;
      compare("sha256 model.safetensors", ro["model.safetensors"], no["model.safetensors"]);
      compare("ppl", rec.ppl, now.ppl);
      // Proxy losses are reports, not results: lib/gptq's native solver sums them in an OpenMP
      // reduction whose order varies run to run, so they agree to ~1e-15, not bit for bit.
      const close = (a: unknown, b: unknown) =>
        same(a, b) ||
        (typeof a === "number" && typeof b === "number" &&
          Math.abs(a - b) <= PROXY_TOLERANCE * Math.max(Math.abs(a), Math.abs(b)));
      items.push({
        item: `proxy loss sum (rel. ${PROXY_TOLERANCE})`,
        recorded: rec.proxyLossSum,
        now: now.proxyLossSum,
        match: close(rec.proxyLossSum, now.proxyLossSum),
      });
      const rl = (rec.proxyLoss ?? {}) as Record<string, unknown>;
      const nl = (now.proxyLoss ?? {}) as Record<string, unknown>;
      const differing = Object.keys({ ...rl, ...nl }).filter((k) => !close(rl[k], nl[k]));
      items.push({
        item: `proxy loss per layer (rel. ${PROXY_TOLERANCE})`,
        recorded: `${Object.keys(rl).length} layers`,
        now: differing.length ? `${differing.length} differ, e.g. ${differing[0]}` : "all equal",
        match: differing.length === 0,
      });
    } else {
      for (const k of ["ppl", "tokens", "windows"]) compare(k, rec[k], now[k]);
    }
  } finally {
    if (temp) await Deno.remove(temp, { recursive: true }).catch(() => {});
  }
  return items;
}

/**
 * Runs the CLI on `args`; returns 0 when everything matches, 1 otherwise, 2 on bad usage.
 *
 * @example
 * ```ts
 * import { main } from "./reproduce.ts";
 * console.assert(await main(["--help"]) === 0);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  let values, positionals;
  try {
    ({ values, positionals } = parseArgs({
      args,
      options: {
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: true,
    }));
  } catch (e) {
    console.error(`reproduce: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (positionals.length !== 1) {
    console.error(`reproduce: expected one MANIFEST argument\n\n${HELP}`);
    return 2;
  }
  try {
    const manifest = await readManifest(positionals[0]);
    const items = await reproduce(manifest, (c) => Deno.stderr.writeSync(c));
    const match = items.every((i) => i.match);
    if (values.json) {
      console.log(JSON.stringify({ match, items }));
    } else {
      // Checksums shortened to 16 hex digits for the table (--json has them whole).
      const show = (v: unknown) =>
        typeof v === "string"
          ? v.replace(/^([0-9a-f]{16})[0-9a-f]{48}$/, "$1…")
          : JSON.stringify(v) ?? "-";
      console.log(formatTable(
        ["item", "recorded", "now", "match"],
        items.map((i) => [i.item, show(i.recorded), show(i.now), i.match ? "yes" : "NO"]),
      ));
      console.log(
        match ? "\nreproduced: every item matches" : "\nNOT reproduced: see the items marked NO",
      );
    }
    return match ? 0 : 1;
  } catch (e) {
    console.error(`reproduce: ${(e as Error).message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
