/**
 * Run manifests: what a quantize or eval run needs to be repeated and checked — tool version
 * and git commit, every option, sha256 of the model files and data it read, seed, device,
 * timings and results — written as `manifest.json` beside the run's output.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { writeFileAtomic } from "../atomic.ts";
import denoJson from "../../deno.json" with { type: "json" };

/** Name and version of this tool (deno.json). */
export const TOOL: { readonly name: string; readonly version: string } = Object.freeze({
  name: denoJson.name,
  version: denoJson.version,
});

/** Manifest schema version. */
export const MANIFEST_VERSION = 1;

/** One file a run read, with its checksum. */
export interface FileDigest {
  /** Path as given to the run. */
  path: string;
  /** Hex sha256 of the contents. */
  sha256: string;
  /** Size in bytes. */
  bytes: number;
}

/** The record of one run. */
export interface Manifest {
  /** Schema version ({@linkcode MANIFEST_VERSION}). */
  manifestVersion: number;
  /** `"quantize"`, `"eval"` or `"demo"`. */
  command: string;
  /** Tool name and version. */
  tool: { name: string; version: string };
  /** Git commit of the source tree (with `-dirty` when it had uncommitted changes), or null. */
  commit: string | null;
  /** Every option of the run, as the CLI resolved them (defaults filled in). */
  options: Record<string, unknown>;
  /** Arguments that re-run it (`deno run -A lib/cli/<command>.ts ...argv`), output excluded. */
  argv: string[];
  /** Files read: model files, calibration and evaluation text. */
  inputs: FileDigest[];
  /** Seed of the run. */
  seed: number;
  /** Device the run used. */
  device: string;
  /** When the run started (ISO 8601). */
  started: string;
  /** Seconds per stage. */
  timings: Record<string, number>;
  /** What the run measured (perplexities, proxy losses, output checksums). */
  results: Record<string, unknown>;
}

/**
 * Hex sha256 of a file, read in chunks (large checkpoints are never held whole).
 *
 * @example
 * ```ts
 * import { sha256File } from "./manifest.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeTextFile(path, "abc");
 * console.assert((await sha256File(path)).startsWith("ba7816bf"));
 * await Deno.remove(path);
 * ```
 */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path, { read: true });
  const buf = new Uint8Array(1 << 20);
  for (;;) {
    const n = await file.read(buf);
    if (n === null) break;
    hash.update(buf.subarray(0, n));
  }
  return hash.digest("hex");
}

/**
 * {@linkcode FileDigest}s of `paths`, in order.
 *
 * @example
 * ```ts
 * import { digestFiles } from "./manifest.ts";
 * const path = await Deno.makeTempFile();
 * console.assert((await digestFiles([path]))[0].bytes === 0);
 * await Deno.remove(path);
 * ```
 */
export async function digestFiles(paths: readonly string[]): Promise<FileDigest[]> {
  const out: FileDigest[] = [];
  for (const path of paths) {
    const { size } = await Deno.stat(path);
    out.push({ path, sha256: await sha256File(path), bytes: size });
  }
  return out;
}

/**
 * The files of a Hugging Face model folder a run depends on: config, weights (single or
 * sharded, with the index) and tokenizer files, sorted by name.
 *
 * @example
 * ```ts
 * import { modelFiles } from "./manifest.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/config.json`, "{}");
 * console.assert((await modelFiles(dir)).length === 1);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function modelFiles(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!e.isFile) continue;
    if (
      e.name === "config.json" || e.name.endsWith(".safetensors") ||
      e.name === "model.safetensors.index.json" || e.name.startsWith("tokenizer")
    ) names.push(e.name);
  }
  return names.sort().map((n) => `${dir}/${n}`);
}

/**
 * The git commit of the fp4lab source tree, with `-dirty` when files differ from it; null
 * where git or the repository is not available.
 *
 * @example
 * ```ts
 * import { gitCommit } from "./manifest.ts";
 * const c = await gitCommit();
 * console.assert(c === null || /^[0-9a-f]{40}/.test(c));
 * ```
 */
export async function gitCommit(): Promise<string | null> {
  const root = new URL("../..", import.meta.url).pathname;
  const run = async (args: string[]): Promise<string | null> => {
    try {
      const out = await new Deno.Command("git", { args: ["-C", root, ...args], stderr: "null" })
        .output();
      return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
    } catch {
      return null;
    }
  };
  const head = await run(["rev-parse", "HEAD"]);
  if (head === null) return null;
  const status = await run(["status", "--porcelain", "--untracked-files=no"]);
  return status ? `${head}-dirty` : head;
}

/**
 * Writes `manifest` to `path` atomically (pretty-printed JSON).
 *
 * @example
 * ```ts
 * import { readManifest, writeManifest, TOOL } from "./manifest.ts";
 * const path = `${await Deno.makeTempDir()}/manifest.json`;
 * await writeManifest(path, {
 *   manifestVersion: 1, command: "eval", tool: { ...TOOL }, commit: null, options: {}, argv: [], inputs: [],
 *   seed: 0, device: "cpu", started: new Date().toISOString(), timings: {}, results: { ppl: 2 },
 * });
 * console.assert((await readManifest(path)).results.ppl === 2);
 * ```
 */
export async function writeManifest(path: string, manifest: Manifest): Promise<void> {
  const text = JSON.stringify(manifest, null, 2) + "\n";
  const bytes = new TextEncoder().encode(text);
  await writeFileAtomic(path, async (file) => {
    for (let off = 0; off < bytes.length;) off += await file.write(bytes.subarray(off));
  });
}

/**
 * Reads and checks a manifest; throws an Error naming the file when it is not one.
 *
 * @example
 * ```ts
 * import { readManifest } from "./manifest.ts";
 * try {
 *   await readManifest("/nonexistent/manifest.json");
 * } catch (e) {
 *   console.assert((e as Error).message.includes("/nonexistent/manifest.json"));
 * }
 * ```
 */
export async function readManifest(path: string): Promise<Manifest> {
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(`${path}: cannot read the manifest: ${(e as Error).message}`, { cause: e });
  }
  const m = json as Partial<Manifest>;
  if (
    typeof m !== "object" || m === null || m.manifestVersion !== MANIFEST_VERSION ||
    typeof m.command !== "string" || typeof m.options !== "object" || m.options === null ||
    !Array.isArray(m.argv) || !Array.isArray(m.inputs) || typeof m.results !== "object" ||
    m.results === null
  ) {
    throw new Error(
      `${path}: not an fp4lab manifest (version ${MANIFEST_VERSION}: command, options, ` +
        `argv, inputs and results are required)`,
    );
  }
  return m as Manifest;
}
