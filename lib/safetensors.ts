/**
 * Reading and writing safetensors files (https://github.com/huggingface/safetensors), the
 * checkpoint format of Hugging Face models, without loading a whole checkpoint into memory.
 *
 * Layout of a file: an unsigned 64-bit little-endian header length N, N bytes of UTF-8 JSON
 * (an object mapping each tensor name to `{dtype, shape, data_offsets}`, plus an optional
 * `__metadata__` map of strings to strings), then the data section: every tensor's raw
 * little-endian bytes, C order, at `data_offsets` relative to the start of the section.
 *
 * The reader validates strictly and throws {@linkcode SafetensorsError} (naming the file and
 * the reason) for anything malformed. As the reference library does, it requires the tensors
 * to index the data section exactly: sorted by offset they must be contiguous from byte 0 to
 * the end of the file, with no overlap, no hole and no trailing bytes. Unknown keys inside a
 * tensor entry are ignored. Tensor data is read lazily, one tensor at a time, by seeking.
 *
 * The writer streams tensor by tensor into a temporary file that replaces the target only when
 * complete (see {@linkcode writeFileAtomic}). It pads the header with spaces to a multiple of
 * 8 bytes and orders tensors by decreasing item size, then by name, so that every tensor starts
 * at an offset that is a multiple of its item size within an 8-byte aligned data section (the
 * order the Python library uses).
 *
 * @module
 */
import { writeFileAtomic } from "./atomic.ts";
import { type Device, requireDevice } from "./device.ts";
import { type DType, hostArray, itemSize } from "./dtype.ts";
import { Tensor } from "./tensor.ts";

/** Element types of the safetensors format that fp4lab reads and writes. */
export type SafetensorsDType =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "F8_E4M3"
  | "F8_E5M2"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U8"
  | "BOOL";

const ITEM_SIZE: Record<SafetensorsDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

const TO_TENSOR: Partial<Record<SafetensorsDType, DType>> = {
  F64: "f64",
  F32: "f32",
  F16: "f16",
  BF16: "bf16",
  I64: "i64",
  I32: "i32",
  I16: "i16",
  I8: "i8",
  U8: "u8",
};

const FROM_TENSOR: Record<DType, SafetensorsDType> = {
  f64: "F64",
  f32: "F32",
  f16: "F16",
  bf16: "BF16",
  i64: "I64",
  i32: "I32",
  i16: "I16",
  i8: "I8",
  u8: "U8",
};

/** Every safetensors dtype name fp4lab accepts. */
export const SAFETENSORS_DTYPES: readonly SafetensorsDType[] = Object.keys(
  ITEM_SIZE,
) as SafetensorsDType[];

/** Largest header accepted, in bytes (the limit of the reference implementation). */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * Bytes per element of a safetensors dtype.
 *
 * @example
 * ```ts
 * import { safetensorsItemSize } from "./safetensors.ts";
 * console.assert(safetensorsItemSize("BF16") === 2);
 * ```
 */
export function safetensorsItemSize(dtype: SafetensorsDType): number {
  return ITEM_SIZE[dtype];
}

/**
 * The {@linkcode Tensor} dtype holding a safetensors dtype, or `undefined` for those a Tensor
 * cannot hold (F8_E4M3, F8_E5M2, BOOL: read their raw bytes instead).
 *
 * @example
 * ```ts
 * import { tensorDTypeOf } from "./safetensors.ts";
 * console.assert(tensorDTypeOf("BF16") === "bf16");
 * console.assert(tensorDTypeOf("F8_E4M3") === undefined);
 * ```
 */
export function tensorDTypeOf(dtype: SafetensorsDType): DType | undefined {
  return TO_TENSOR[dtype];
}

/**
 * The safetensors dtype name of a {@linkcode Tensor} dtype.
 *
 * @example
 * ```ts
 * import { safetensorsDTypeOf } from "./safetensors.ts";
 * console.assert(safetensorsDTypeOf("f32") === "F32");
 * ```
 */
export function safetensorsDTypeOf(dtype: DType): SafetensorsDType {
  return FROM_TENSOR[dtype];
}

/**
 * A malformed safetensors file or checkpoint, a missing tensor or shard, an unreadable file,
 * or invalid input to the writer. The message starts with the path concerned.
 *
 * @example
 * ```ts
 * import { SafetensorsError } from "./safetensors.ts";
 * const e = new SafetensorsError("/m/model.safetensors", "header is not JSON");
 * console.assert(e.message === "/m/model.safetensors: header is not JSON");
 * ```
 */
export class SafetensorsError extends Error {
  /** The file (or folder) the error is about. */
  readonly path: string;
  /** Builds the error from the path concerned and the reason. */
  constructor(path: string, reason: string, options?: ErrorOptions) {
    super(`${path}: ${reason}`, options);
    this.name = "SafetensorsError";
    this.path = path;
  }
}

/** Where one tensor lies in a safetensors file, as its header says. */
export interface SafetensorsTensorInfo {
  /** Element type. */
  readonly dtype: SafetensorsDType;
  /** Dimensions, outermost first (`[]` for a scalar). */
  readonly shape: readonly number[];
  /** Byte range `[begin, end)` within the data section. */
  readonly dataOffsets: readonly [number, number];
  /** `end - begin`: number of elements times the item size. */
  readonly byteLength: number;
}

/** A tensor's dtype, shape and raw little-endian bytes, as stored. */
export interface RawTensor {
  /** Element type. */
  readonly dtype: SafetensorsDType;
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** The bytes, C order, little-endian (a fresh buffer starting at offset 0). */
  readonly data: Uint8Array;
}

/** Options of `readTensor`. */
export interface ReadTensorOptions {
  /** Where the tensor should end up (default `"cpu"`). */
  device?: Device;
}

interface Header {
  tensors: Map<string, SafetensorsTensorInfo>;
  metadata: Readonly<Record<string, string>>;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function validShape(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((d) => Number.isSafeInteger(d) && d >= 0);
}

function elementCount(shape: readonly number[]): bigint {
  return shape.reduce((n, d) => n * BigInt(d), 1n);
}

function parseHeader(path: string, bytes: Uint8Array, dataSize: number): Header {
  const fail = (reason: string): never => {
    throw new SafetensorsError(path, reason);
  };
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return fail("header is not valid UTF-8");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(json)) return fail(`header must be a JSON object, got ${describe(json)}`);

  let metadata: Readonly<Record<string, string>> = Object.freeze({});
  const tensors = new Map<string, SafetensorsTensorInfo>();
  for (const [name, entry] of Object.entries(json)) {
    if (name === "__metadata__") {
      if (!isPlainObject(entry)) return fail(`__metadata__ must be an object of strings`);
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== "string") {
          fail(`__metadata__["${k}"] must be a string, got ${describe(v)}`);
        }
      }
      metadata = Object.freeze(Object.fromEntries(Object.entries(entry))) as Record<
        string,
        string
      >;
      continue;
    }
    const where = `tensor "${name}"`;
    if (!isPlainObject(entry)) return fail(`${where}: entry must be an object`);
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== "string" || !Object.hasOwn(ITEM_SIZE, dtype)) {
      return fail(
        `${where}: unknown dtype ${describe(dtype)}; expected one of ${
          SAFETENSORS_DTYPES.join(", ")
        }`,
      );
    }
    if (!validShape(shape)) {
      return fail(`${where}: shape must be an array of integers >= 0, got ${describe(shape)}`);
    }
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)
    ) {
      return fail(`${where}: data_offsets must be [begin, end], got ${describe(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end) return fail(`${where}: data_offsets [${begin}, ${end}] end before they begin`);
    if (end > dataSize) {
      return fail(
        `${where}: data_offsets [${begin}, ${end}] run past the end of the ${dataSize}-byte ` +
          `data section`,
      );
    }
    const st = dtype as SafetensorsDType;
    const expected = elementCount(shape) * BigInt(ITEM_SIZE[st]);
    if (expected !== BigInt(end - begin)) {
      return fail(
        `${where}: shape [${shape.join(", ")}] of ${st} needs ${expected} bytes, ` +
          `data_offsets [${begin}, ${end}] hold ${end - begin}`,
      );
    }
    tensors.set(
      name,
      Object.freeze({
        dtype: st,
        shape: Object.freeze([...shape]),
        dataOffsets: Object.freeze([begin, end] as [number, number]),
        byteLength: end - begin,
      }),
    );
  }

  // The byte buffer must be entirely indexed: sorted by offset, the tensors tile it exactly.
  const order = [...tensors].sort(([, a], [, b]) =>
    a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]
  );
  let cursor = 0;
  let previous = "";
  for (const [name, { dataOffsets: [begin, end] }] of order) {
    if (begin < cursor) {
      fail(`tensor "${name}" at [${begin}, ${end}] overlaps tensor "${previous}"`);
    }
    if (begin > cursor) {
      fail(`bytes [${cursor}, ${begin}) of the data section belong to no tensor`);
    }
    cursor = end;
    previous = name;
  }
  if (cursor !== dataSize) {
    fail(
      `tensors cover ${cursor} bytes but the data section has ${dataSize} ` +
        `(trailing bytes belong to no tensor)`,
    );
  }
  return { tensors, metadata };
}

async function readFully(file: Deno.FsFile, into: Uint8Array): Promise<number> {
  let done = 0;
  while (done < into.length) {
    const n = await file.read(into.subarray(done));
    if (n === null) break;
    done += n;
  }
  return done;
}

async function writeFully(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

function tensorDType(path: string, name: string, dtype: SafetensorsDType): DType {
  const dt = TO_TENSOR[dtype];
  if (dt) return dt;
  throw new SafetensorsError(
    path,
    `tensor "${name}" has dtype ${dtype}, which a Tensor cannot hold; use read() for its raw bytes`,
  );
}

/**
 * One open safetensors file: its header is parsed and validated on open, tensors are read
 * one at a time on request. Close it with `close()` or `using`.
 *
 * @example
 * ```ts
 * import { SafetensorsFile, writeSafetensors } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, {
 *   w: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) },
 * });
 * using file = await SafetensorsFile.open(path);
 * const w = await file.readTensor("w");
 * console.assert(w.toArray()[1] === 2);
 * await Deno.remove(path);
 * ```
 */
export class SafetensorsFile {
  /** The file's path. */
  readonly path: string;
  /** The header's `__metadata__` (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  #file: Deno.FsFile | undefined;
  #tensors: Map<string, SafetensorsTensorInfo>;
  #dataStart: number;
  #queue: Promise<unknown> = Promise.resolve();
  #staging: Uint8Array<ArrayBuffer> | undefined;

  private constructor(path: string, file: Deno.FsFile, header: Header, dataStart: number) {
    this.path = path;
    this.#file = file;
    this.#tensors = header.tensors;
    this.metadata = header.metadata;
    this.#dataStart = dataStart;
  }

  /**
   * Opens `path` and validates its header; throws {@linkcode SafetensorsError} for an
   * unreadable or malformed file.
   *
   * @example
   * ```ts
   * import { SafetensorsError, SafetensorsFile } from "./safetensors.ts";
   * try {
   *   await SafetensorsFile.open("/nonexistent.safetensors");
   * } catch (e) {
   *   console.assert(e instanceof SafetensorsError);
   * }
   * ```
   */
  static async open(path: string): Promise<SafetensorsFile> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw new SafetensorsError(path, `cannot open: ${(e as Error).message}`, { cause: e });
    }
    try {
      const stat = await file.stat();
      if (!stat.isFile) throw new SafetensorsError(path, "not a regular file");
      const size = stat.size;
      const prefix = new Uint8Array(8);
      if (size < 8 || await readFully(file, prefix) < 8) {
        throw new SafetensorsError(
          path,
          `file has ${size} bytes, too short for the 8-byte header length`,
        );
      }
      const n = new DataView(prefix.buffer).getBigUint64(0, true);
      if (n === 0n) throw new SafetensorsError(path, "header length is 0");
      if (n > BigInt(MAX_HEADER_BYTES)) {
        throw new SafetensorsError(
          path,
          `header length ${n} exceeds the limit of ${MAX_HEADER_BYTES} bytes`,
        );
      }
      if (n > BigInt(size - 8)) {
        throw new SafetensorsError(
          path,
          `header length ${n} runs past the end of the file (${size - 8} bytes follow it)`,
        );
      }
      const headerBytes = new Uint8Array(Number(n));
      if (await readFully(file, headerBytes) < headerBytes.length) {
        throw new SafetensorsError(path, "file ended inside the header (truncated while open?)");
      }
      const dataStart = 8 + headerBytes.length;
      const header = parseHeader(path, headerBytes, size - dataStart);
      return new SafetensorsFile(path, file, header, dataStart);
    } catch (e) {
      file.close();
      if (e instanceof SafetensorsError) throw e;
      throw new SafetensorsError(path, `cannot read: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Tensor names, in the header's order.
   *
   * @example
   * ```ts
   * import { SafetensorsFile, writeSafetensors } from "./safetensors.ts";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, { a: { dtype: "U8", shape: [1], data: new Uint8Array(1) } });
   * using f = await SafetensorsFile.open(path);
   * console.assert(f.names()[0] === "a");
   * await Deno.remove(path);
   * ```
   */
  names(): string[] {
    return [...this.#tensors.keys()];
  }

  /**
   * Whether the file holds a tensor called `name`.
   *
   * @example
   * ```ts
   * import { SafetensorsFile, writeSafetensors } from "./safetensors.ts";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, { a: { dtype: "U8", shape: [1], data: new Uint8Array(1) } });
   * using f = await SafetensorsFile.open(path);
   * console.assert(f.has("a") && !f.has("b"));
   * await Deno.remove(path);
   * ```
   */
  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  /**
   * Dtype, shape and location of tensor `name`; throws {@linkcode SafetensorsError} when the
   * file has no such tensor.
   *
   * @example
   * ```ts
   * import { SafetensorsFile, writeSafetensors } from "./safetensors.ts";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, { a: { dtype: "I16", shape: [3], data: new Int16Array(3) } });
   * using f = await SafetensorsFile.open(path);
   * console.assert(f.tensorInfo("a").byteLength === 6);
   * await Deno.remove(path);
   * ```
   */
  tensorInfo(name: string): SafetensorsTensorInfo {
    const info = this.#tensors.get(name);
    if (!info) throw new SafetensorsError(this.path, `no tensor named "${name}"`);
    return info;
  }

  /**
   * Reads tensor `name`'s raw bytes (one seek and one read of exactly its bytes).
   *
   * @example
   * ```ts
   * import { SafetensorsFile, writeSafetensors } from "./safetensors.ts";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, {
   *   q: { dtype: "F8_E4M3", shape: [2], data: new Uint8Array([0x38, 0xb8]) },
   * });
   * using f = await SafetensorsFile.open(path);
   * const raw = await f.read("q");
   * console.assert(raw.dtype === "F8_E4M3" && raw.data[1] === 0xb8);
   * await Deno.remove(path);
   * ```
   */
  async read(name: string): Promise<RawTensor> {
    const info = this.tensorInfo(name);
    const data = new Uint8Array(info.byteLength);
    await this.#exclusive(() => this.#readNow(name, info, data));
    return { dtype: info.dtype, shape: info.shape, data };
  }

  /**
   * Reads tensor `name`'s raw bytes into the start of `dest` (which must be large enough)
   * and returns the tensor's info. Reusing one buffer across reads spares the allocation and
   * page faults of a fresh buffer per tensor.
   *
   * @example
   * ```ts
   * import { SafetensorsFile, writeSafetensors } from "./safetensors.ts";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, { a: { dtype: "I8", shape: [2], data: new Int8Array([-1, 2]) } });
   * using f = await SafetensorsFile.open(path);
   * const buf = new Uint8Array(1024);
   * const info = await f.readInto("a", buf);
   * console.assert(info.byteLength === 2 && buf[0] === 0xff);
   * await Deno.remove(path);
   * ```
   */
  async readInto(name: string, dest: Uint8Array): Promise<SafetensorsTensorInfo> {
    const info = this.tensorInfo(name);
    if (dest.byteLength < info.byteLength) {
      throw new SafetensorsError(
        this.path,
        `tensor "${name}" has ${info.byteLength} bytes; the buffer holds ${dest.byteLength}`,
      );
    }
    await this.#exclusive(() => this.#readNow(name, info, dest.subarray(0, info.byteLength)));
    return info;
  }

  /** Runs `fn` after every earlier read: reads share one file position. */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => {});
    return run;
  }

  async #readNow(name: string, info: SafetensorsTensorInfo, data: Uint8Array): Promise<void> {
    const file = this.#file;
    if (!file) throw new SafetensorsError(this.path, `cannot read "${name}": file is closed`);
    let got: number;
    try {
      await file.seek(this.#dataStart + info.dataOffsets[0], Deno.SeekMode.Start);
      got = await readFully(file, data);
    } catch (e) {
      throw new SafetensorsError(
        this.path,
        `cannot read tensor "${name}": ${(e as Error).message}`,
        { cause: e },
      );
    }
    if (got < data.length) {
      throw new SafetensorsError(
        this.path,
        `file ended ${data.length - got} bytes into tensor "${name}" (truncated while open?)`,
      );
    }
  }

  /**
   * Reads tensor `name` as a {@linkcode Tensor} (on `options.device`, default the CPU).
   * F8 and BOOL tensors throw {@linkcode SafetensorsError}: use {@linkcode read} for them.
   *
   * @example
   * ```ts
   * import { SafetensorsFile, writeSafetensors } from "./safetensors.ts";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, {
   *   b: { dtype: "BF16", shape: [1, 2], data: new Uint16Array([0x3f80, 0x4000]) },
   * });
   * using f = await SafetensorsFile.open(path);
   * using t = await f.readTensor("b", { device: "cpu" });
   * console.assert(t.dtype === "bf16" && t.shape[1] === 2);
   * await Deno.remove(path);
   * ```
   */
  async readTensor(name: string, options: ReadTensorOptions = {}): Promise<Tensor> {
    const device = requireDevice(options.device ?? "cpu");
    const info = this.tensorInfo(name);
    const dtype = tensorDType(this.path, name, info.dtype);
    const n = info.byteLength / itemSize(dtype);
    if (device === "cpu") {
      const data = new Uint8Array(info.byteLength);
      await this.#exclusive(() => this.#readNow(name, info, data));
      return Tensor.from(hostArray(dtype, n, data.buffer), info.shape, dtype);
    }
    // For a device, the bytes pass through one host staging buffer that later reads reuse.
    return this.#exclusive(async () => {
      if (!this.#staging || this.#staging.byteLength < info.byteLength) {
        this.#staging = undefined; // let the old one go before the larger one is allocated
        this.#staging = new Uint8Array(info.byteLength);
      }
      await this.#readNow(name, info, this.#staging.subarray(0, info.byteLength));
      return Tensor.from(hostArray(dtype, n, this.#staging.buffer), info.shape, dtype).to(device);
    });
  }

  /**
   * Closes the file (idempotent); reads after this throw {@linkcode SafetensorsError}.
   *
   * @example
   * ```ts
   * import { SafetensorsFile, writeSafetensors } from "./safetensors.ts";
   * const path = await Deno.makeTempFile();
   * await writeSafetensors(path, {});
   * const f = await SafetensorsFile.open(path);
   * f.close();
   * await Deno.remove(path);
   * ```
   */
  close(): void {
    this.#file?.close();
    this.#file = undefined;
    this.#staging = undefined;
  }

  /** Same as `close()`, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Waits for pending reads, then closes; for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#queue;
    this.close();
  }
}

const INDEX_FILE = "model.safetensors.index.json";
const SINGLE_FILE = "model.safetensors";

async function statOrUndefined(path: string): Promise<Deno.FileInfo | undefined> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new SafetensorsError(path, `cannot stat: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * A Hugging Face checkpoint: a folder with `model.safetensors.index.json` (whose
 * `weight_map` names each tensor's shard) or a single `model.safetensors`, or the path of one
 * `.safetensors` file. Shards are opened on first use; when a shard is opened, every tensor
 * the index places in it must be there. Tensors present in a shard but absent from the
 * index are not reachable by name, as in the Hugging Face loaders.
 *
 * @example
 * ```ts
 * import { SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
 * const dir = await Deno.makeTempDir();
 * await writeSafetensors(`${dir}/model.safetensors`, {
 *   w: { dtype: "F32", shape: [1], data: new Float32Array([5]) },
 * });
 * await using ckpt = await SafetensorsCheckpoint.open(dir);
 * console.assert((await ckpt.readTensor("w")).toArray()[0] === 5);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class SafetensorsCheckpoint {
  /** The folder holding the shards. */
  readonly dir: string;
  /** The index file's `metadata` object (e.g. `total_size`); empty without an index. */
  readonly metadata: Readonly<Record<string, unknown>>;
  #where: Map<string, string>;
  #shards = new Map<string, Promise<SafetensorsFile>>();
  #opened: SafetensorsFile[] = [];
  #closed = false;

  private constructor(
    dir: string,
    where: Map<string, string>,
    metadata: Readonly<Record<string, unknown>>,
  ) {
    this.dir = dir;
    this.#where = where;
    this.metadata = metadata;
  }

  /**
   * Opens a checkpoint folder (or one `.safetensors` file). With an index, checks that it is
   * well-formed and that every shard file it names exists; throws
   * {@linkcode SafetensorsError} otherwise.
   *
   * @example
   * ```ts
   * import { SafetensorsCheckpoint, SafetensorsError } from "./safetensors.ts";
   * const dir = await Deno.makeTempDir();
   * try {
   *   await SafetensorsCheckpoint.open(dir);
   * } catch (e) {
   *   console.assert(e instanceof SafetensorsError); // neither an index nor model.safetensors
   * }
   * await Deno.remove(dir);
   * ```
   */
  static async open(path: string): Promise<SafetensorsCheckpoint> {
    const stat = await statOrUndefined(path);
    if (!stat) throw new SafetensorsError(path, "no such file or folder");
    if (stat.isFile) return SafetensorsCheckpoint.#single(path);
    const dir = path.replace(/(.)\/+$/, "$1");
    const indexPath = `${dir}/${INDEX_FILE}`;
    if (await statOrUndefined(indexPath)) return SafetensorsCheckpoint.#indexed(dir, indexPath);
    if (await statOrUndefined(`${dir}/${SINGLE_FILE}`)) {
      return SafetensorsCheckpoint.#single(`${dir}/${SINGLE_FILE}`);
    }
    throw new SafetensorsError(dir, `neither ${INDEX_FILE} nor ${SINGLE_FILE} is in this folder`);
  }

  static async #single(path: string): Promise<SafetensorsCheckpoint> {
    const slash = path.lastIndexOf("/");
    const dir = slash < 0 ? "." : path.slice(0, slash) || "/";
    const base = path.slice(slash + 1);
    const file = await SafetensorsFile.open(path);
    const ckpt = new SafetensorsCheckpoint(
      dir,
      new Map(file.names().map((n) => [n, base])),
      Object.freeze({}),
    );
    ckpt.#shards.set(base, Promise.resolve(file));
    ckpt.#opened.push(file);
    return ckpt;
  }

  static async #indexed(dir: string, indexPath: string): Promise<SafetensorsCheckpoint> {
    const fail = (reason: string): never => {
      throw new SafetensorsError(indexPath, reason);
    };
    let json: unknown;
    try {
      json = JSON.parse(await Deno.readTextFile(indexPath));
    } catch (e) {
      return fail(`cannot read the index: ${(e as Error).message}`);
    }
    if (!isPlainObject(json)) return fail("index must be a JSON object");
    const { weight_map: map, metadata = {} } = json;
    if (!isPlainObject(map)) return fail(`"weight_map" must be an object of shard file names`);
    if (!isPlainObject(metadata)) return fail(`"metadata" must be an object`);
    const where = new Map<string, string>();
    const firstTensor = new Map<string, string>();
    for (const [name, shard] of Object.entries(map)) {
      // Shards live beside the index; a path would let a checkpoint read outside its folder.
      if (typeof shard !== "string" || !/^[^/\\]+$/.test(shard) || shard === "..") {
        fail(
          `weight_map["${name}"] must be a file name in the same folder, got ${describe(shard)}`,
        );
      }
      where.set(name, shard as string);
      if (!firstTensor.has(shard as string)) firstTensor.set(shard as string, name);
    }
    for (const [shard, name] of firstTensor) {
      const st = await statOrUndefined(`${dir}/${shard}`);
      if (!st?.isFile) {
        fail(`shard ${shard} (holding "${name}" among others) is missing from ${dir}`);
      }
    }
    return new SafetensorsCheckpoint(dir, where, Object.freeze({ ...metadata }));
  }

  /**
   * Tensor names, in the index's order.
   *
   * @example
   * ```ts
   * import { SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
   * const dir = await Deno.makeTempDir();
   * await writeSafetensors(`${dir}/model.safetensors`, {
   *   w: { dtype: "F32", shape: [1], data: new Float32Array(1) },
   * });
   * await using ckpt = await SafetensorsCheckpoint.open(dir);
   * console.assert(ckpt.names().join() === "w");
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  names(): string[] {
    return [...this.#where.keys()];
  }

  /**
   * Whether the checkpoint lists a tensor called `name`.
   *
   * @example
   * ```ts
   * import { SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
   * const dir = await Deno.makeTempDir();
   * await writeSafetensors(`${dir}/model.safetensors`, {});
   * await using ckpt = await SafetensorsCheckpoint.open(dir);
   * console.assert(!ckpt.has("w"));
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  has(name: string): boolean {
    return this.#where.has(name);
  }

  /**
   * The shard file names (relative to `dir`), in order of first appearance.
   *
   * @example
   * ```ts
   * import { SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
   * const dir = await Deno.makeTempDir();
   * await writeSafetensors(`${dir}/model.safetensors`, {
   *   w: { dtype: "F32", shape: [1], data: new Float32Array(1) },
   * });
   * await using ckpt = await SafetensorsCheckpoint.open(dir);
   * console.assert(ckpt.shards()[0] === "model.safetensors");
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  shards(): string[] {
    return [...new Set(this.#where.values())];
  }

  /**
   * Opens every shard now, checking that each holds the tensors the index places in it.
   *
   * @example
   * ```ts
   * import { SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
   * const dir = await Deno.makeTempDir();
   * await writeSafetensors(`${dir}/model.safetensors`, {});
   * await using ckpt = await SafetensorsCheckpoint.open(dir);
   * await ckpt.validate();
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  async validate(): Promise<void> {
    for (const shard of this.shards()) await this.#shard(shard);
  }

  /**
   * Dtype, shape and location of tensor `name` (opening its shard if needed).
   *
   * @example
   * ```ts
   * import { SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
   * const dir = await Deno.makeTempDir();
   * await writeSafetensors(`${dir}/model.safetensors`, {
   *   w: { dtype: "F32", shape: [2, 2], data: new Float32Array(4) },
   * });
   * await using ckpt = await SafetensorsCheckpoint.open(dir);
   * console.assert((await ckpt.tensorInfo("w")).shape[1] === 2);
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  async tensorInfo(name: string): Promise<SafetensorsTensorInfo> {
    return (await this.#fileOf(name)).tensorInfo(name);
  }

  /**
   * Reads tensor `name`'s raw bytes from its shard.
   *
   * @example
   * ```ts
   * import { SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
   * const dir = await Deno.makeTempDir();
   * await writeSafetensors(`${dir}/model.safetensors`, {
   *   m: { dtype: "BOOL", shape: [2], data: new Uint8Array([1, 0]) },
   * });
   * await using ckpt = await SafetensorsCheckpoint.open(dir);
   * console.assert((await ckpt.read("m")).data[0] === 1);
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  async read(name: string): Promise<RawTensor> {
    return (await this.#fileOf(name)).read(name);
  }

  /**
   * Reads tensor `name`'s raw bytes into the start of `dest`, as
   * {@linkcode SafetensorsFile.readInto} does.
   *
   * @example
   * ```ts
   * import { SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
   * const dir = await Deno.makeTempDir();
   * await writeSafetensors(`${dir}/model.safetensors`, {
   *   m: { dtype: "U8", shape: [2], data: new Uint8Array([4, 5]) },
   * });
   * await using ckpt = await SafetensorsCheckpoint.open(dir);
   * const buf = new Uint8Array(16);
   * await ckpt.readInto("m", buf);
   * console.assert(buf[1] === 5);
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  async readInto(name: string, dest: Uint8Array): Promise<SafetensorsTensorInfo> {
    return (await this.#fileOf(name)).readInto(name, dest);
  }

  /**
   * Reads tensor `name` as a {@linkcode Tensor}, optionally straight to a device.
   *
   * @example
   * ```ts
   * import { SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
   * const dir = await Deno.makeTempDir();
   * await writeSafetensors(`${dir}/model.safetensors`, {
   *   w: { dtype: "I32", shape: [2], data: new Int32Array([3, 4]) },
   * });
   * await using ckpt = await SafetensorsCheckpoint.open(dir);
   * using w = await ckpt.readTensor("w", { device: "cpu" });
   * console.assert(w.toArray()[1] === 4);
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  async readTensor(name: string, options: ReadTensorOptions = {}): Promise<Tensor> {
    return (await this.#fileOf(name)).readTensor(name, options);
  }

  #fileOf(name: string): Promise<SafetensorsFile> {
    const shard = this.#where.get(name);
    if (shard === undefined) {
      return Promise.reject(
        new SafetensorsError(this.dir, `the checkpoint has no tensor named "${name}"`),
      );
    }
    return this.#shard(shard);
  }

  #shard(shard: string): Promise<SafetensorsFile> {
    if (this.#closed) {
      return Promise.reject(new SafetensorsError(this.dir, "the checkpoint is closed"));
    }
    let pending = this.#shards.get(shard);
    if (!pending) {
      pending = this.#openShard(shard);
      this.#shards.set(shard, pending);
    }
    return pending;
  }

  async #openShard(shard: string): Promise<SafetensorsFile> {
    const file = await SafetensorsFile.open(`${this.dir}/${shard}`);
    for (const [name, s] of this.#where) {
      if (s === shard && !file.has(name)) {
        file.close();
        throw new SafetensorsError(
          file.path,
          `tensor "${name}" is placed in this shard by ${INDEX_FILE} but is not in it`,
        );
      }
    }
    if (this.#closed) {
      file.close();
      throw new SafetensorsError(this.dir, "the checkpoint was closed while opening a shard");
    }
    this.#opened.push(file);
    return file;
  }

  /**
   * Closes every opened shard (idempotent).
   *
   * @example
   * ```ts
   * import { SafetensorsCheckpoint, writeSafetensors } from "./safetensors.ts";
   * const dir = await Deno.makeTempDir();
   * await writeSafetensors(`${dir}/model.safetensors`, {});
   * const ckpt = await SafetensorsCheckpoint.open(dir);
   * ckpt.close();
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  close(): void {
    this.#closed = true;
    for (const f of this.#opened) f.close();
    this.#opened = [];
  }

  /** Same as `close()`, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Waits for pending reads, then closes every shard; for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.#opened.map((f) => f[Symbol.asyncDispose]()));
    this.close();
  }
}

/** Bytes for one tensor: given now, or produced when the writer reaches the tensor. */
export type TensorBytes = ArrayBufferView | (() => ArrayBufferView | Promise<ArrayBufferView>);

/**
 * One tensor to write: dtype, shape and its raw little-endian bytes in C order (any typed
 * array or DataView; its bytes are taken as they are).
 */
export interface SafetensorsEntry {
  /** Element type. */
  dtype: SafetensorsDType;
  /** Dimensions, outermost first. */
  shape: readonly number[];
  /** The bytes, or a function producing them (called once, in write order). */
  data: TensorBytes;
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

interface Planned {
  name: string;
  dtype: SafetensorsDType;
  shape: readonly number[];
  byteLength: number;
  data: () => ArrayBufferView | Promise<ArrayBufferView>;
}

function plan(path: string, name: string, entry: SafetensorsEntry | Tensor): Planned {
  const fail = (reason: string): never => {
    throw new SafetensorsError(path, `tensor "${name}": ${reason}`);
  };
  if (entry instanceof Tensor) {
    if (entry.disposed) fail("the Tensor is disposed");
    const dtype = FROM_TENSOR[entry.dtype];
    return {
      name,
      dtype,
      shape: entry.shape,
      byteLength: entry.byteLength,
      data: () => entry.toArray(),
    };
  }
  const { dtype, shape, data } = entry;
  if (!Object.hasOwn(ITEM_SIZE, dtype)) fail(`unknown dtype ${describe(dtype)}`);
  if (!validShape(shape)) fail(`shape must be integers >= 0, got ${describe(shape)}`);
  const bytes = elementCount(shape) * BigInt(ITEM_SIZE[dtype]);
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) fail(`shape [${shape.join(", ")}] is too large`);
  const byteLength = Number(bytes);
  if (typeof data !== "function") {
    if (!ArrayBuffer.isView(data)) fail("data must be a typed array, a DataView or a function");
    if (data.byteLength !== byteLength) {
      fail(
        `shape [${
          shape.join(", ")
        }] of ${dtype} needs ${byteLength} bytes, data has ${data.byteLength}`,
      );
    }
  }
  return {
    name,
    dtype,
    shape,
    byteLength,
    data: typeof data === "function" ? data : () => data,
  };
}

/**
 * Writes a safetensors file atomically: `path` is replaced only once the whole file is
 * written and flushed, and is left untouched (with no temporary file behind) when anything
 * fails. Tensors are streamed one at a time; a {@linkcode Tensor} argument is copied to the
 * host only when its turn comes, as is the result of a `data` function, so that a checkpoint
 * larger than memory can be written. Invalid input throws {@linkcode SafetensorsError}.
 *
 * @example
 * ```ts
 * import { SafetensorsFile, Tensor, writeSafetensors } from "../mod.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, {
 *   "layer.weight": Tensor.from(new Float32Array([1, 2, 3, 4]), [2, 2]),
 *   "layer.scales": { dtype: "F8_E4M3", shape: [2], data: () => new Uint8Array([0x38, 0x40]) },
 * }, { format: "pt" });
 * using f = await SafetensorsFile.open(path);
 * console.assert(f.metadata.format === "pt" && f.names().length === 2);
 * await Deno.remove(path);
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: Readonly<Record<string, SafetensorsEntry | Tensor>>,
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw new SafetensorsError(path, `metadata["${k}"] must be a string, got ${describe(v)}`);
      }
    }
  }
  const planned = Object.entries(tensors).map(([name, entry]) => {
    if (name === "__metadata__") {
      throw new SafetensorsError(path, `"__metadata__" is reserved and cannot name a tensor`);
    }
    return plan(path, name, entry);
  });
  planned.sort((a, b) =>
    ITEM_SIZE[b.dtype] - ITEM_SIZE[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  );

  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header.__metadata__ = { ...metadata };
  let offset = 0;
  for (const t of planned) {
    // defineProperty: a tensor named "__proto__" must become a key, not a prototype.
    Object.defineProperty(header, t.name, {
      value: { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.byteLength] },
      enumerable: true,
    });
    offset += t.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded > MAX_HEADER_BYTES) {
    throw new SafetensorsError(path, `header of ${padded} bytes exceeds ${MAX_HEADER_BYTES}`);
  }
  const head = new Uint8Array(8 + padded).fill(0x20);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);

  try {
    await writeFileAtomic(path, async (file) => {
      await writeFully(file, head);
      for (const t of planned) {
        const view = await t.data();
        if (!ArrayBuffer.isView(view) || view.byteLength !== t.byteLength) {
          throw new SafetensorsError(
            path,
            `tensor "${t.name}": shape [${t.shape.join(", ")}] of ${t.dtype} needs ` +
              `${t.byteLength} bytes, its data function gave ` +
              (ArrayBuffer.isView(view) ? `${view.byteLength}` : describe(view)),
          );
        }
        await writeFully(file, bytesOf(view));
      }
    });
  } catch (e) {
    if (e instanceof SafetensorsError) throw e;
    throw new SafetensorsError(path, `cannot write: ${(e as Error).message}`, { cause: e });
  }
}
