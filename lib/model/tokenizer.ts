/**
 * A model's `tokenizer.json`, run by `@huggingface/tokenizers` (the pure TypeScript port of
 * the Hugging Face tokenizers pipeline: normalizer, pre-tokenizer, BPE model, decoder), so
 * that token ids equal those Python's `tokenizers` produces for the same file.
 *
 * @module
 */
// Pinned inline rather than through deno.json's import map, so that mod.ts also works when it is
// imported from outside this repository (a notebook elsewhere), where that map does not apply.
// deno-lint-ignore no-import-prefix
import { Tokenizer } from "npm:@huggingface/tokenizers@0.2.0";

/** Options of {@linkcode HfTokenizer.encode}. */
export interface EncodeOptions {
  /** Add the post-processor's special tokens (BOS, ...). Default false, as the perplexity
   * protocol needs. */
  addSpecialTokens?: boolean;
}

async function readJson(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read the ${what}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * A Hugging Face tokenizer loaded from `tokenizer.json` (plus `tokenizer_config.json` when
 * present).
 *
 * @example
 * ```ts
 * import { HfTokenizer } from "./tokenizer.ts";
 * import { testModelDir } from "../paths.ts";
 * try {
 *   const tok = await HfTokenizer.load(testModelDir());
 *   const ids = tok.encode("The jury said.");
 *   console.assert(tok.decode(ids) === "The jury said.");
 * } catch (e) {
 *   console.assert(e instanceof Error); // the shared test model is not on this machine
 * }
 * ```
 */
export class HfTokenizer {
  #tok: Tokenizer;
  /** Number of ids, added tokens included. */
  readonly vocabSize: number;

  private constructor(tok: Tokenizer, vocabSize: number) {
    this.#tok = tok;
    this.vocabSize = vocabSize;
  }

  /**
   * Builds the tokenizer from the parsed JSON objects; throws when `tokenizer.json` is not
   * one the library understands.
   *
   * @example
   * ```ts
   * import { HfTokenizer } from "./tokenizer.ts";
   * const tok = HfTokenizer.fromJson({
   *   normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, added_tokens: [],
   *   model: { type: "BPE", vocab: { a: 0, b: 1, ab: 2 }, merges: [["a", "b"]] },
   * });
   * console.assert(tok.encode("ab")[0] === 2);
   * ```
   */
  static fromJson(tokenizerJson: unknown, tokenizerConfig: unknown = {}): HfTokenizer {
    if (typeof tokenizerJson !== "object" || tokenizerJson === null) {
      throw new Error("tokenizer.json: expected a JSON object");
    }
    const model = (tokenizerJson as { model?: { vocab?: unknown } }).model;
    if (typeof model !== "object" || model === null || typeof model.vocab !== "object") {
      throw new Error("tokenizer.json: no model.vocab object");
    }
    const ids = Object.values(model.vocab as Record<string, number>);
    const added = (tokenizerJson as { added_tokens?: { id: number }[] }).added_tokens ?? [];
    const vocabSize = Math.max(-1, ...ids, ...added.map((t) => t.id)) + 1;
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(tokenizerJson, tokenizerConfig ?? {});
    } catch (e) {
      throw new Error(`tokenizer.json: unsupported or malformed: ${(e as Error).message}`, {
        cause: e,
      });
    }
    return new HfTokenizer(tok, vocabSize);
  }

  /**
   * Reads `dir/tokenizer.json` (and `dir/tokenizer_config.json` if there).
   *
   * @example
   * ```ts
   * import { HfTokenizer } from "./tokenizer.ts";
   * try {
   *   await HfTokenizer.load("/nonexistent");
   * } catch (e) {
   *   console.assert((e as Error).message.includes("tokenizer.json"));
   * }
   * ```
   */
  static async load(dir: string): Promise<HfTokenizer> {
    const json = await readJson(`${dir}/tokenizer.json`, "tokenizer");
    const cfgPath = `${dir}/tokenizer_config.json`;
    const cfg = await exists(cfgPath) ? await readJson(cfgPath, "tokenizer config") : {};
    try {
      return HfTokenizer.fromJson(json, cfg);
    } catch (e) {
      throw new Error(`${dir}/${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Token ids of `text` (no special tokens unless asked).
   *
   * @example
   * ```ts
   * import { HfTokenizer } from "./tokenizer.ts";
   * const tok = HfTokenizer.fromJson({
   *   normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, added_tokens: [],
   *   model: { type: "BPE", vocab: { a: 0, b: 1, ab: 2 }, merges: [["a", "b"]] },
   * });
   * console.assert(tok.encode("ba").join() === "1,0" && tok.encode("ab").join() === "2");
   * ```
   */
  encode(text: string, options: EncodeOptions = {}): Int32Array {
    const enc = this.#tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? false });
    return Int32Array.from(enc.ids);
  }

  /**
   * The text of `ids` (special tokens kept).
   *
   * @example
   * ```ts
   * import { HfTokenizer } from "./tokenizer.ts";
   * const tok = HfTokenizer.fromJson({
   *   normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, added_tokens: [],
   *   model: { type: "BPE", vocab: { a: 0, b: 1, ab: 2 }, merges: [["a", "b"]] },
   * });
   * console.assert(tok.decode([2]) === "ab");
   * ```
   */
  decode(ids: ArrayLike<number>): string {
    return this.#tok.decode(Array.from(ids), { clean_up_tokenization_spaces: false });
  }
}
