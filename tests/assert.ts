/**
 * The few assertions the tests use. `@std/assert` lives on JSR, which is out of reach here, so
 * these are re-exported from Node's `assert` with Deno-std-like names.
 *
 * @module
 */
import nodeAssert from "node:assert/strict";

/** Throws unless `cond` is truthy. */
export function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg);
}

/** Deep strict equality. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, msg);
}

/** Runs `fn`, requires it to throw an instance of `cls` whose message includes `includes`. */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  cls: new (...args: any[]) => E = Error as unknown as new (...args: any[]) => E,
  includes?: string,
): E {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof cls)) {
      throw new Error(`expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${e}`);
    }
    if (includes !== undefined && !e.message.includes(includes)) {
      throw new Error(`expected message to include "${includes}", got "${e.message}"`);
    }
    return e;
  }
  throw new Error(`expected ${cls.name} to be thrown, nothing was`);
}

/** Async twin of {@linkcode assertThrows}. */
export async function assertRejects<E extends Error = Error>(
  fn: () => Promise<unknown>,
  // deno-lint-ignore no-explicit-any
  cls: new (...args: any[]) => E = Error as unknown as new (...args: any[]) => E,
  includes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof cls)) {
      throw new Error(`expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${e}`);
    }
    if (includes !== undefined && !e.message.includes(includes)) {
      throw new Error(`expected message to include "${includes}", got "${e.message}"`);
    }
    return e;
  }
  throw new Error(`expected ${cls.name} to be rejected, nothing was`);
}
