/**
 * Loads the native library once, checks its ABI version and turns native status codes into
 * JS Errors that carry the native message.
 *
 * The library is `build/libfp4lab.so` beside this repository (built by `deno task build`), or
 * the file named by the `FP4LAB_LIB` environment variable.
 *
 * @module
 */
import { ABI_VERSION, symbols } from "./symbols.ts";

/** The bound native library. */
export type NativeLibrary = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** Native status codes, as in `cuda/include/fp4lab/core.h`. */
export const Status = {
  OK: 0,
  INVALID_ARGUMENT: 1,
  OUT_OF_MEMORY: 2,
  NO_CUDA_BUILD: 3,
  NO_DEVICE: 4,
  CUDA: 5,
  NUMERIC: 6,
  INTERNAL: 7,
} as const;

/** Name of a native status code. */
export type StatusName = keyof typeof Status;

const statusNames = new Map<number, StatusName>(
  Object.entries(Status).map(([k, v]) => [v, k as StatusName]),
);

/**
 * An error reported by the native library: `code` is the status name, the message is the
 * native one prefixed by the call that failed.
 *
 * @example
 * ```ts
 * import { NativeError } from "./library.ts";
 * const e = new NativeError("OUT_OF_MEMORY", "fp4_alloc", "out of GPU memory");
 * console.assert(e.message === "fp4_alloc: out of GPU memory");
 * ```
 */
export class NativeError extends Error {
  /** The status name, e.g. `"INVALID_ARGUMENT"`. */
  readonly code: StatusName | "UNKNOWN";
  /** Builds the error from the status name, the failing call and the native message. */
  constructor(code: StatusName | "UNKNOWN", call: string, message: string) {
    super(`${call}: ${message}`);
    this.name = "NativeError";
    this.code = code;
  }
}

/**
 * The native library could not be loaded (missing file, wrong ABI version).
 *
 * @example
 * ```ts
 * import { LibraryLoadError } from "./library.ts";
 * console.assert(new LibraryLoadError("x").name === "LibraryLoadError");
 * ```
 */
export class LibraryLoadError extends Error {
  /** Wraps the reason the library could not be used. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LibraryLoadError";
  }
}

/**
 * Path of the native library: `$FP4LAB_LIB` if set, else `build/libfp4lab.so` in this repository.
 *
 * @example
 * ```ts
 * import { libraryPath } from "./library.ts";
 * console.assert(libraryPath().endsWith(".so"));
 * ```
 */
export function libraryPath(): string {
  const fromEnv = Deno.env.get("FP4LAB_LIB");
  if (fromEnv) return fromEnv;
  return new URL("../build/libfp4lab.so", import.meta.url).pathname;
}

let loaded: NativeLibrary | undefined;

/**
 * Opens the library at `path` and checks its ABI version; throws {@linkcode LibraryLoadError}.
 * Exposed for tests; normal code calls {@linkcode native}.
 *
 * @example
 * ```ts
 * import { libraryPath, openLibrary } from "./library.ts";
 * const lib = openLibrary(libraryPath());
 * console.assert(lib.fp4_noop() === 0);
 * ```
 */
export function openLibrary(path: string): NativeLibrary {
  let lib: Deno.DynamicLibrary<typeof symbols>;
  try {
    Deno.statSync(path);
  } catch {
    throw new LibraryLoadError(
      `fp4lab native library not found at ${path}: run \`deno task build\` ` +
        `(or set FP4LAB_LIB to the library's path)`,
    );
  }
  try {
    lib = Deno.dlopen(path, symbols);
  } catch (e) {
    throw new LibraryLoadError(
      `cannot load fp4lab native library ${path}: ${(e as Error).message} ` +
        `(rebuild it with \`deno task build\`)`,
      { cause: e },
    );
  }
  const version = lib.symbols.fp4_abi_version();
  if (version !== ABI_VERSION) {
    lib.close();
    throw new LibraryLoadError(
      `fp4lab native library ${path} has ABI version ${version}, but this module needs ` +
        `${ABI_VERSION}: rebuild it with \`deno task build\``,
    );
  }
  return lib.symbols;
}

/**
 * The loaded native library (opened on first use).
 *
 * @example
 * ```ts
 * import { native } from "./library.ts";
 * console.assert(native().fp4_abi_version() >= 1);
 * ```
 */
export function native(): NativeLibrary {
  loaded ??= openLibrary(libraryPath());
  return loaded;
}

/**
 * The native library's last error message.
 *
 * @example
 * ```ts
 * import { lastError } from "./library.ts";
 * console.assert(typeof lastError() === "string");
 * ```
 */
export function lastError(): string {
  const lib = native();
  let buf = new Uint8Array(1024);
  const n = lib.fp4_last_error(buf, buf.length);
  if (n >= buf.length) {
    buf = new Uint8Array(n + 1);
    lib.fp4_last_error(buf, buf.length);
  }
  return new TextDecoder().decode(buf.subarray(0, Math.min(n, buf.length - 1)));
}

/**
 * Throws a {@linkcode NativeError} naming `call` when `status` is not OK.
 *
 * @example
 * ```ts
 * import { check, native } from "./library.ts";
 * check(native().fp4_noop(), "fp4_noop");
 * ```
 */
export function check(status: number, call: string): void {
  if (status === Status.OK) return;
  throw new NativeError(statusNames.get(status) ?? "UNKNOWN", call, lastError());
}

// Arrays and tensors whose memory a nonblocking native call is using: a worker thread reads them
// through raw pointers, so nothing on the JS side may let them be collected before it returns.
const inFlight = new Set<readonly unknown[]>();

/**
 * Awaits a nonblocking native call and checks its status. `keepAlive` lists the arrays and
 * tensors the call reads or writes through pointers; they stay referenced until it settles, since
 * the native worker thread does not keep them alive.
 *
 * @example
 * ```ts
 * import { checkAsync, native } from "./library.ts";
 * await checkAsync(Promise.resolve(native().fp4_noop()), "fp4_noop");
 * ```
 */
export async function checkAsync(
  status: Promise<number>,
  call: string,
  keepAlive: readonly unknown[] = [],
): Promise<void> {
  inFlight.add(keepAlive);
  try {
    check(await status, call);
  } finally {
    inFlight.delete(keepAlive);
  }
}
