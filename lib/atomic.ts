/**
 * Atomic file replacement: the content is written to a temporary file beside the target,
 * flushed to disk, then renamed over the target, so that readers of the target see either the
 * old file or the complete new one, never a half-written file.
 *
 * @module
 */

function splitPath(path: string): { dir: string; base: string } {
  const slash = path.lastIndexOf("/");
  if (slash < 0) return { dir: ".", base: path };
  return { dir: slash === 0 ? "/" : path.slice(0, slash), base: path.slice(slash + 1) };
}

function randomSuffix(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The temporary-file name pattern used by {@linkcode writeFileAtomic} for `path`: a hidden
 * file in the same folder, `.<name>.<random>.tmp`. Exposed so that tests can check that no
 * temporary file is left behind.
 *
 * @example
 * ```ts
 * import { isAtomicTempFor } from "./atomic.ts";
 * console.assert(isAtomicTempFor("/tmp/a.bin", ".a.bin.0123456789ab.tmp"));
 * ```
 */
export function isAtomicTempFor(path: string, name: string): boolean {
  const { base } = splitPath(path);
  return name.startsWith(`.${base}.`) && name.endsWith(".tmp") &&
    /^[0-9a-f]{12}$/.test(name.slice(base.length + 2, -4));
}

/**
 * Writes a file atomically: `write` fills a fresh temporary file in the same folder as `path`
 * (same filesystem, so the rename is atomic); the file is then fsynced and renamed over
 * `path`. If `write` (or the flush, or the rename) throws, the temporary file is removed, the
 * error is rethrown and `path` is left untouched. The folder is fsynced after the rename
 * where the platform allows opening folders, so that the rename itself survives a crash.
 *
 * @example
 * ```ts
 * import { writeFileAtomic } from "./atomic.ts";
 * const path = await Deno.makeTempFile();
 * await writeFileAtomic(path, async (file) => {
 *   await file.write(new TextEncoder().encode("hello"));
 * });
 * console.assert(await Deno.readTextFile(path) === "hello");
 * await Deno.remove(path);
 * ```
 */
export async function writeFileAtomic(
  path: string,
  write: (file: Deno.FsFile) => Promise<void>,
): Promise<void> {
  const { dir, base } = splitPath(path);
  const temp = `${dir}/.${base}.${randomSuffix()}.tmp`;
  const file = await Deno.open(temp, { write: true, createNew: true });
  let open = true;
  try {
    await write(file);
    await file.sync();
    file.close();
    open = false;
    await Deno.rename(temp, path);
  } catch (e) {
    if (open) file.close();
    await Deno.remove(temp).catch(() => {});
    throw e;
  }
  await syncDir(dir);
}

async function syncDir(dir: string): Promise<void> {
  let handle: Deno.FsFile;
  try {
    handle = await Deno.open(dir, { read: true });
  } catch {
    return; // folders cannot be opened on this platform: the rename is as durable as it gets
  }
  try {
    await handle.sync();
  } catch {
    // Some filesystems refuse fsync on a folder; the data file itself is already synced.
  } finally {
    handle.close();
  }
}
