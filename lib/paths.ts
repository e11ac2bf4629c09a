/**
 * Where fp4lab finds things outside the repository: the shared test models.
 *
 * @module
 */

/**
 * The folder holding test models: `$FP4LAB_MODELS`, else `../shared/models` beside this
 * repository.
 *
 * @example
 * ```ts
 * import { modelsDir } from "./paths.ts";
 * console.log(modelsDir());
 * ```
 */
export function modelsDir(): string {
  return Deno.env.get("FP4LAB_MODELS") ??
    new URL("../../shared/models", import.meta.url).pathname.replace(/\/$/, "");
}

/**
 * The folder of the shared test model `name` (default `brown-llama-29m`); throws an Error
 * saying where it looked and how to point elsewhere when it is missing.
 *
 * @example
 * ```ts
 * import { testModelDir } from "./paths.ts";
 * try { console.log(testModelDir()); } catch (e) { console.log((e as Error).message); }
 * ```
 */
export function testModelDir(name = "brown-llama-29m"): string {
  const dir = `${modelsDir()}/${name}`;
  try {
    Deno.statSync(`${dir}/config.json`);
  } catch {
    throw new Error(
      `test model not found: ${dir}/config.json is missing (set FP4LAB_MODELS to the folder ` +
        `that holds ${name}/)`,
    );
  }
  return dir;
}
