import { seededRandom as mulberry32 } from "../lib/random.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { isAtomicTempFor } from "../lib/atomic.ts";
import { cudaStatus } from "../lib/device.ts";
import { testModelDir } from "../lib/paths.ts";
import {
  SAFETENSORS_DTYPES,
  SafetensorsCheckpoint,
  type SafetensorsDType,
  type SafetensorsEntry,
  SafetensorsError,
  SafetensorsFile,
  safetensorsItemSize,
  tensorDTypeOf,
  writeSafetensors,
} from "../lib/safetensors.ts";
import { Tensor } from "../lib/tensor.ts";
import {
  fixtureBytes,
  FP4LAB_FILE,
  FP4LAB_METADATA,
  PYTHON_FILE,
  PYTHON_METADATA,
  PYTHON_SHARDED_DIR,
  PYTHON_SHARDS,
  SPECS,
  writeFp4labFixture,
} from "./safetensors_fixtures.ts";

/** Runs `fn` with a fresh seeded PRNG; a failure names the seed so it can be replayed. */
async function withSeed(fn: (rand: () => number) => Promise<void>): Promise<void> {
  const seed = Number(Deno.env.get("SEED") ?? crypto.getRandomValues(new Uint32Array(1))[0]);
  try {
    await fn(mulberry32(seed));
  } catch (e) {
    throw new Error(`failed with SEED=${seed}: ${(e as Error).message}`, { cause: e });
  }
}

function randomBytes(rand: () => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * 256);
  return out;
}

function randomShape(rand: () => number): number[] {
  const rank = Math.floor(rand() * 4); // 0..3, rank 0 is a scalar
  return Array.from({ length: rank }, () => 1 + Math.floor(rand() * 7));
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "fp4lab_st_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A file of `header` JSON (raw string) followed by `data`, with a correct length field. */
async function writeRaw(path: string, header: string, data = new Uint8Array()): Promise<void> {
  const json = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  await Deno.writeFile(path, out);
}

async function expectBad(path: string, includes: string): Promise<void> {
  const e = await assertRejects(() => SafetensorsFile.open(path), SafetensorsError, includes);
  assert(e.message.startsWith(path), `message should name the file: ${e.message}`);
}

Deno.test("random tensors of every dtype round-trip byte for byte", () =>
  withSeed((rand) =>
    withTempDir(async (dir) => {
      const entries: Record<string, SafetensorsEntry> = {};
      for (const dtype of SAFETENSORS_DTYPES) {
        for (let k = 0; k < 3; k++) {
          const shape = randomShape(rand);
          const n = shape.reduce((a, b) => a * b, 1);
          entries[`${dtype.toLowerCase()}.${k}`] = {
            dtype,
            shape,
            data: randomBytes(rand, n * safetensorsItemSize(dtype)),
          };
        }
      }
      const path = `${dir}/rt.safetensors`;
      await writeSafetensors(path, entries);
      using file = await SafetensorsFile.open(path);
      assertEquals(file.names().sort(), Object.keys(entries).sort());
      for (const [name, e] of Object.entries(entries)) {
        const raw = await file.read(name);
        assertEquals(raw.dtype, e.dtype);
        assertEquals(raw.shape, e.shape);
        assertEquals(raw.data, e.data);
        const dt = tensorDTypeOf(e.dtype);
        if (dt) {
          const t = await file.readTensor(name);
          assertEquals(t.dtype, dt);
          assertEquals(t.shape, e.shape);
          const arr = t.data();
          assertEquals(new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength), e.data);
        }
      }
    })
  ));

Deno.test("Tensor arguments are written with their dtype and read back equal", () =>
  withSeed((rand) =>
    withTempDir(async (dir) => {
      const f32 = Float32Array.from({ length: 12 }, () => rand() * 2 - 1);
      const f16 = Uint16Array.from({ length: 6 }, () => Math.floor(rand() * 0x7c00));
      const i64 = BigInt64Array.from({ length: 3 }, () => BigInt(Math.floor(rand() * 2 ** 53)));
      const path = `${dir}/t.safetensors`;
      await writeSafetensors(path, {
        a: Tensor.from(f32, [3, 4]),
        h: Tensor.from(f16, [6], "f16"),
        l: Tensor.from(i64, [3]),
      });
      using file = await SafetensorsFile.open(path);
      assertEquals(file.tensorInfo("h").dtype, "F16");
      assertEquals((await file.readTensor("a")).data(), f32);
      const h = await file.readTensor("h");
      assertEquals([h.dtype, h.data()], ["f16", f16]);
      assertEquals((await file.readTensor("l")).data(), i64);
    })
  ));

Deno.test("metadata round-trips, including awkward keys", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/m.safetensors`;
    const metadata = JSON.parse(
      `{"format":"pt","__proto__":"p","ünïcode ✓":"v\\"q","empty":""}`,
    ) as Record<string, string>;
    await writeSafetensors(path, {}, metadata);
    using file = await SafetensorsFile.open(path);
    assertEquals(file.metadata, metadata);
    assertEquals(Object.getPrototypeOf(file.metadata), Object.prototype);
    assertEquals(file.names(), []);
  }));

Deno.test("a file without __metadata__ has empty metadata", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/m.safetensors`;
    await writeSafetensors(path, { x: { dtype: "U8", shape: [2], data: new Uint8Array([7, 9]) } });
    using file = await SafetensorsFile.open(path);
    assertEquals(file.metadata, {});
  }));

Deno.test("empty tensors and scalars are written and read", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/e.safetensors`;
    await writeSafetensors(path, {
      e0: { dtype: "F32", shape: [0], data: new Float32Array(0) },
      e1: { dtype: "BF16", shape: [4, 0, 3], data: new Uint16Array(0) },
      s: { dtype: "F64", shape: [], data: new Float64Array([Math.PI]) },
      i: { dtype: "I32", shape: [], data: new Int32Array([-5]) },
    });
    using file = await SafetensorsFile.open(path);
    const e1 = await file.readTensor("e1");
    assertEquals([e1.shape, e1.size, e1.dtype], [[4, 0, 3], 0, "bf16"]);
    assertEquals((await file.read("e0")).data.length, 0);
    const s = await file.readTensor("s");
    assertEquals([s.shape, s.data()[0]], [[], Math.PI]);
    assertEquals((await file.readTensor("i")).data()[0], -5);
  }));

Deno.test("the header is space-padded to 8 bytes and tensors are aligned by item size", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/h.safetensors`;
    await writeSafetensors(path, {
      b: { dtype: "U8", shape: [3], data: new Uint8Array(3) },
      a: { dtype: "I16", shape: [1], data: new Int16Array(1) },
      d: { dtype: "F64", shape: [2], data: new Float64Array(2) },
      c: { dtype: "F32", shape: [1], data: new Float32Array(1) },
      e: { dtype: "BF16", shape: [1], data: new Uint16Array(1) },
    }, { k: "v" });
    const bytes = await Deno.readFile(path);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assertEquals(n % 8, 0);
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
    assert(/^\{.*\} *$/.test(text), text);
    assertEquals(Object.keys(JSON.parse(text)), ["__metadata__", "d", "c", "a", "e", "b"]);
    using file = await SafetensorsFile.open(path);
    for (const name of file.names()) {
      const info = file.tensorInfo(name);
      assertEquals(info.dataOffsets[0] % safetensorsItemSize(info.dtype), 0);
    }
    assertEquals(bytes.length, 8 + n + 16 + 4 + 2 + 2 + 3);
  }));

Deno.test("concurrent reads of one file each get their own tensor", () =>
  withSeed((rand) =>
    withTempDir(async (dir) => {
      const path = `${dir}/c.safetensors`;
      const entries: Record<string, SafetensorsEntry> = {};
      for (let i = 0; i < 20; i++) {
        entries[`t${i}`] = { dtype: "U8", shape: [1000 + i], data: randomBytes(rand, 1000 + i) };
      }
      await writeSafetensors(path, entries);
      await using file = await SafetensorsFile.open(path);
      const all = await Promise.all(Object.keys(entries).map((n) => file.read(n)));
      all.forEach((raw, i) => assertEquals(raw.data, entries[`t${i}`].data));
    })
  ));

Deno.test("readInto fills the start of a reused buffer and leaves the rest alone", () =>
  withSeed((rand) =>
    withTempDir(async (dir) => {
      const path = `${dir}/ri.safetensors`;
      const a = randomBytes(rand, 40);
      const b = randomBytes(rand, 24);
      await writeSafetensors(path, {
        a: { dtype: "I32", shape: [10], data: a },
        b: { dtype: "F64", shape: [3], data: b },
      });
      await using ckpt = await SafetensorsCheckpoint.open(path);
      const buf = new Uint8Array(48).fill(0xa5);
      assertEquals((await ckpt.readInto("a", buf)).shape, [10]);
      assertEquals(buf.subarray(0, 40), a);
      assert(buf.subarray(40).every((x) => x === 0xa5));
      await ckpt.readInto("b", buf.subarray(8));
      assertEquals(buf.subarray(8, 32), b);
      assertEquals(buf.subarray(0, 8), a.subarray(0, 8));
      await assertRejects(
        () => ckpt.readInto("a", new Uint8Array(39)),
        SafetensorsError,
        `tensor "a" has 40 bytes; the buffer holds 39`,
      );
    })
  ));

Deno.test({
  name: "readTensor straight to CUDA equals the CPU read (needs a GPU)",
  ignore: !cudaStatus().available,
  fn: () =>
    withSeed((rand) =>
      withTempDir(async (dir) => {
        const path = `${dir}/cuda.safetensors`;
        const entries: Record<string, SafetensorsEntry> = {};
        for (const [i, dtype] of (["F32", "BF16", "I64", "U8", "F16"] as const).entries()) {
          const shape = [1 + i, 3 + Math.floor(rand() * 50)];
          const n = shape[0] * shape[1] * safetensorsItemSize(dtype);
          entries[dtype] = { dtype, shape, data: randomBytes(rand, n) };
        }
        entries.empty = { dtype: "F32", shape: [0, 2], data: new Float32Array(0) };
        await writeSafetensors(path, entries);
        await using file = await SafetensorsFile.open(path);
        // Largest first, then smaller ones reusing the staging buffer, then concurrently.
        const names = Object.keys(entries).sort((x, y) =>
          file.tensorInfo(y).byteLength - file.tensorInfo(x).byteLength
        );
        const check = async (name: string, t: Tensor) => {
          using _ = t;
          assertEquals([t.device, t.shape], ["cuda", entries[name].shape]);
          const host = t.toArray();
          const bytes = new Uint8Array(host.buffer, host.byteOffset, host.byteLength);
          assertEquals(bytes, (await file.read(name)).data);
        };
        for (const name of names) {
          await check(name, await file.readTensor(name, { device: "cuda" }));
        }
        const all = await Promise.all(names.map((n) => file.readTensor(n, { device: "cuda" })));
        for (const [i, t] of all.entries()) await check(names[i], t);
      })
    ),
});

Deno.test({
  name: "readTensor to CUDA without a usable GPU fails with the reason",
  ignore: cudaStatus().available,
  fn: () =>
    withTempDir(async (dir) => {
      const path = `${dir}/nogpu.safetensors`;
      await writeSafetensors(path, { x: { dtype: "F32", shape: [1], data: new Float32Array(1) } });
      using file = await SafetensorsFile.open(path);
      await assertRejects(
        () => file.readTensor("x", { device: "cuda" }),
        Error,
        `device "cuda" is not usable here`,
      );
      assertEquals((await file.readTensor("x")).device, "cpu");
    }),
});

Deno.test("F8 and BOOL tensors refuse readTensor but read raw", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/f8.safetensors`;
    await writeSafetensors(path, {
      q: { dtype: "F8_E4M3", shape: [2], data: new Uint8Array([0x38, 0xb8]) },
      m: { dtype: "BOOL", shape: [1], data: new Uint8Array([1]) },
    });
    using file = await SafetensorsFile.open(path);
    await assertRejects(() => file.readTensor("q"), SafetensorsError, "F8_E4M3");
    await assertRejects(() => file.readTensor("m"), SafetensorsError, "BOOL");
    assertEquals((await file.read("q")).data, new Uint8Array([0x38, 0xb8]));
  }));

Deno.test("unknown tensors and reads after close give SafetensorsError", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/x.safetensors`;
    await writeSafetensors(path, { x: { dtype: "U8", shape: [1], data: new Uint8Array(1) } });
    const file = await SafetensorsFile.open(path);
    await assertRejects(() => file.read("y"), SafetensorsError, `no tensor named "y"`);
    assertThrows(() => file.tensorInfo("constructor"), SafetensorsError);
    file.close();
    file.close();
    await assertRejects(() => file.read("x"), SafetensorsError, "closed");
  }));

Deno.test("malformed files give a SafetensorsError naming the file and the reason", () =>
  withTempDir(async (dir) => {
    const p = (name: string) => `${dir}/${name}.safetensors`;
    const t = (dtype: string, shape: unknown, offsets: unknown) =>
      JSON.stringify({ t: { dtype, shape, data_offsets: offsets } });

    await expectBad(`${dir}/missing.safetensors`, "cannot open");
    await expectBad(dir, "not a regular file");

    await Deno.writeFile(p("short"), new Uint8Array([8, 0, 0]));
    await expectBad(p("short"), "too short");

    const lenOnly = new Uint8Array(8 + 10);
    new DataView(lenOnly.buffer).setBigUint64(0, 100n, true);
    await Deno.writeFile(p("truncated_header"), lenOnly);
    await expectBad(p("truncated_header"), "runs past the end of the file");

    const huge = new Uint8Array(16);
    new DataView(huge.buffer).setBigUint64(0, 2n ** 63n, true);
    await Deno.writeFile(p("huge_len"), huge);
    await expectBad(p("huge_len"), "exceeds the limit");

    await Deno.writeFile(p("zero_len"), new Uint8Array(8));
    await expectBad(p("zero_len"), "header length is 0");

    await writeRaw(p("bad_json"), `{"t": {"dtype": "F32",`);
    await expectBad(p("bad_json"), "not valid JSON");

    const badUtf8 = new Uint8Array(8 + 4);
    new DataView(badUtf8.buffer).setBigUint64(0, 4n, true);
    badUtf8.set([0x22, 0xff, 0xfe, 0x22], 8);
    await Deno.writeFile(p("bad_utf8"), badUtf8);
    await expectBad(p("bad_utf8"), "UTF-8");

    await writeRaw(p("array"), `[1, 2]`);
    await expectBad(p("array"), "must be a JSON object");
    await writeRaw(p("number"), `42`);
    await expectBad(p("number"), "must be a JSON object");
    await writeRaw(p("entry_not_object"), `{"t": [1]}`);
    await expectBad(p("entry_not_object"), "entry must be an object");

    await writeRaw(p("unknown_dtype"), t("F4", [2], [0, 1]), new Uint8Array(1));
    await expectBad(p("unknown_dtype"), `unknown dtype "F4"`);
    await writeRaw(p("neg_shape"), t("U8", [-1], [0, 0]));
    await expectBad(p("neg_shape"), "shape must be");
    await writeRaw(p("frac_shape"), t("U8", [1.5], [0, 0]));
    await expectBad(p("frac_shape"), "shape must be");
    await writeRaw(p("bad_offsets"), t("U8", [1], [0]), new Uint8Array(1));
    await expectBad(p("bad_offsets"), "data_offsets must be");
    await writeRaw(p("reversed"), t("U8", [0], [1, 0]), new Uint8Array(1));
    await expectBad(p("reversed"), "end before they begin");

    await writeRaw(p("past_end"), t("F32", [4], [0, 16]), new Uint8Array(12));
    await expectBad(p("past_end"), "run past the end of the 12-byte data section");
    await writeRaw(p("size_mismatch"), t("F32", [3], [0, 8]), new Uint8Array(8));
    await expectBad(p("size_mismatch"), "needs 12 bytes");
    await writeRaw(
      p("overlap"),
      JSON.stringify({
        a: { dtype: "U8", shape: [4], data_offsets: [0, 4] },
        b: { dtype: "U8", shape: [4], data_offsets: [2, 6] },
      }),
      new Uint8Array(6),
    );
    await expectBad(p("overlap"), `overlaps tensor "a"`);
    await writeRaw(
      p("hole"),
      JSON.stringify({
        a: { dtype: "U8", shape: [2], data_offsets: [0, 2] },
        b: { dtype: "U8", shape: [2], data_offsets: [4, 6] },
      }),
      new Uint8Array(6),
    );
    await expectBad(p("hole"), "bytes [2, 4) of the data section belong to no tensor");
    await writeRaw(p("trailing"), t("U8", [2], [0, 2]), new Uint8Array(5));
    await expectBad(p("trailing"), "tensors cover 2 bytes but the data section has 5");

    await writeRaw(p("meta_array"), `{"__metadata__": ["a"]}`);
    await expectBad(p("meta_array"), "__metadata__ must be an object");
    await writeRaw(p("meta_number"), `{"__metadata__": {"a": 1}}`);
    await expectBad(p("meta_number"), `__metadata__["a"] must be a string`);
  }));

Deno.test("a file truncated after opening fails the read with SafetensorsError", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/t.safetensors`;
    await writeSafetensors(path, { x: { dtype: "F32", shape: [64], data: new Float32Array(64) } });
    using file = await SafetensorsFile.open(path);
    await Deno.truncate(path, (await Deno.stat(path)).size - 10);
    await assertRejects(() => file.read("x"), SafetensorsError, "truncated while open");
  }));

async function listDir(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
}

Deno.test("a write that fails midway leaves the target untouched and no temp file", () =>
  withSeed((rand) =>
    withTempDir(async (dir) => {
      const path = `${dir}/model.safetensors`;
      const before = randomBytes(rand, 100);
      await Deno.writeFile(path, before);
      let produced = 0;
      const big = randomBytes(rand, 1 << 20);
      const e = await assertRejects(
        () =>
          writeSafetensors(path, {
            a: { dtype: "U8", shape: [big.length], data: big },
            b: { dtype: "U8", shape: [big.length], data: big },
            z: {
              dtype: "F32",
              shape: [4, 4],
              data: () => (produced++, new Float32Array(15)), // one element short
            },
          }),
        SafetensorsError,
        `tensor "z"`,
      );
      assert(e.message.includes("needs 64 bytes, its data function gave 60"), e.message);
      assertEquals(produced, 1); // the failure came after tensors a and b were streamed
      assertEquals(await Deno.readFile(path), before);
      assertEquals(await listDir(dir), ["model.safetensors"]);
      assert(!(await listDir(dir)).some((n) => isAtomicTempFor(path, n)));

      // A throwing producer: its error is the cause, the target again untouched.
      const boom = new Error("producer failed");
      const e2 = await assertRejects(
        () =>
          writeSafetensors(path, {
            a: { dtype: "U8", shape: [1], data: () => Promise.reject(boom) },
          }),
        SafetensorsError,
        "producer failed",
      );
      assertEquals(e2.cause, boom);
      assertEquals(await Deno.readFile(path), before);
      assertEquals(await listDir(dir), ["model.safetensors"]);
    })
  ));

Deno.test("invalid writer input is rejected before any file is created", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/never.safetensors`;
    const bad: Record<string, SafetensorsEntry>[] = [
      { x: { dtype: "F32", shape: [3], data: new Float32Array(2) } },
      { x: { dtype: "F9" as SafetensorsDType, shape: [1], data: new Uint8Array(1) } },
      { x: { dtype: "U8", shape: [-1], data: new Uint8Array(0) } },
      { __metadata__: { dtype: "U8", shape: [1], data: new Uint8Array(1) } },
    ];
    for (const tensors of bad) {
      await assertRejects(() => writeSafetensors(path, tensors), SafetensorsError, path);
    }
    await assertRejects(
      () => writeSafetensors(path, {}, { n: 1 } as unknown as Record<string, string>),
      SafetensorsError,
      `metadata["n"] must be a string`,
    );
    assertEquals(await listDir(dir), []);
  }));

Deno.test("a successful write replaces an existing file", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/r.safetensors`;
    await Deno.writeTextFile(path, "old content");
    await writeSafetensors(path, { x: { dtype: "I8", shape: [2], data: new Int8Array([-1, 1]) } });
    using file = await SafetensorsFile.open(path);
    assertEquals((await file.readTensor("x")).data(), new Int8Array([-1, 1]));
    assertEquals(await listDir(dir), ["r.safetensors"]);
  }));

async function writeSharded(dir: string, rand: () => number) {
  const a = Float32Array.from({ length: 6 }, () => rand());
  const b = Int32Array.from({ length: 4 }, () => Math.floor(rand() * 1e9));
  const c = Uint16Array.from({ length: 8 }, () => Math.floor(rand() * 0x7f00));
  await writeSafetensors(`${dir}/model-00001-of-00002.safetensors`, {
    a: { dtype: "F32", shape: [2, 3], data: a },
    b: { dtype: "I32", shape: [4], data: b },
  });
  await writeSafetensors(`${dir}/model-00002-of-00002.safetensors`, {
    c: { dtype: "BF16", shape: [2, 4], data: c },
    stray: { dtype: "U8", shape: [1], data: new Uint8Array(1) },
  });
  const index = {
    metadata: { total_size: 24 + 16 + 16 },
    weight_map: {
      a: "model-00001-of-00002.safetensors",
      b: "model-00001-of-00002.safetensors",
      c: "model-00002-of-00002.safetensors",
    },
  };
  await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify(index));
  return { a, b, c, index };
}

Deno.test("a sharded checkpoint reads every tensor through its index", () =>
  withSeed((rand) =>
    withTempDir(async (dir) => {
      const { a, b, c } = await writeSharded(dir, rand);
      await using ckpt = await SafetensorsCheckpoint.open(`${dir}/`);
      assertEquals(ckpt.names(), ["a", "b", "c"]);
      assertEquals(ckpt.metadata, { total_size: 56 });
      assertEquals(ckpt.shards(), [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
      ]);
      assert(!ckpt.has("stray")); // in a shard, absent from the index: not reachable
      assertEquals((await ckpt.readTensor("a")).data(), a);
      assertEquals((await ckpt.readTensor("b")).data(), b);
      const ct = await ckpt.readTensor("c");
      assertEquals([ct.dtype, ct.shape, ct.data()], ["bf16", [2, 4], c]);
      assertEquals((await ckpt.tensorInfo("c")).shape, [2, 4]);
      await ckpt.validate();
      await assertRejects(() => ckpt.read("stray"), SafetensorsError, `no tensor named "stray"`);
    })
  ));

Deno.test("sharded checkpoint errors name the missing shard, tensor or bad index", () =>
  withSeed((rand) =>
    withTempDir(async (dir) => {
      const { index } = await writeSharded(dir, rand);
      const indexPath = `${dir}/model.safetensors.index.json`;
      const writeIndex = (v: unknown) => Deno.writeTextFile(indexPath, JSON.stringify(v));

      // A tensor the index places in a shard that does not hold it: found when the shard opens.
      await writeIndex({
        weight_map: { ...index.weight_map, d: "model-00002-of-00002.safetensors" },
      });
      const ckpt = await SafetensorsCheckpoint.open(dir);
      assertEquals((await ckpt.read("a")).dtype, "F32"); // shard 1 is fine
      const e = await assertRejects(() => ckpt.read("c"), SafetensorsError, `tensor "d"`);
      assert(e.message.includes("model-00002-of-00002.safetensors"), e.message);
      await assertRejects(() => ckpt.validate(), SafetensorsError, `tensor "d"`);
      ckpt.close();
      await assertRejects(() => ckpt.read("a"), SafetensorsError, "closed");

      await writeIndex({
        weight_map: { ...index.weight_map, e: "model-00009-of-00009.safetensors" },
      });
      await assertRejects(
        () => SafetensorsCheckpoint.open(dir),
        SafetensorsError,
        `shard model-00009-of-00009.safetensors (holding "e" among others) is missing`,
      );
      await writeIndex({ weight_map: { a: "../model-00001-of-00002.safetensors" } });
      await assertRejects(() => SafetensorsCheckpoint.open(dir), SafetensorsError, "same folder");
      await writeIndex({ weight_map: { a: 3 } });
      await assertRejects(() => SafetensorsCheckpoint.open(dir), SafetensorsError, "same folder");
      await writeIndex({ metadata: {} });
      await assertRejects(() => SafetensorsCheckpoint.open(dir), SafetensorsError, "weight_map");
      await Deno.writeTextFile(indexPath, "{not json");
      await assertRejects(() => SafetensorsCheckpoint.open(dir), SafetensorsError, indexPath);
    })
  ));

Deno.test("a checkpoint can be a single model.safetensors or one file path", () =>
  withTempDir(async (dir) => {
    const path = `${dir}/model.safetensors`;
    await writeSafetensors(path, {
      w: { dtype: "I16", shape: [2], data: new Int16Array([3, -3]) },
    });
    for (const where of [dir, path]) {
      await using ckpt = await SafetensorsCheckpoint.open(where);
      assertEquals([ckpt.dir, ckpt.names(), ckpt.shards()], [dir, ["w"], ["model.safetensors"]]);
      assertEquals((await ckpt.readTensor("w")).data(), new Int16Array([3, -3]));
      await assertRejects(() => ckpt.read("v"), SafetensorsError, `no tensor named "v"`);
    }
    await Deno.remove(path);
    await assertRejects(() => SafetensorsCheckpoint.open(dir), SafetensorsError, "neither");
    await assertRejects(
      () => SafetensorsCheckpoint.open(`${dir}/nope`),
      SafetensorsError,
      "no such file or folder",
    );
  }));

Deno.test("the shared test model's checkpoint matches its config.json", async () => {
  const dir = testModelDir(); // throws, naming the path, when the model is missing
  const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  const h = config.hidden_size as number;
  const headDim = config.head_dim ?? h / config.num_attention_heads;
  const q = config.num_attention_heads * headDim;
  const kv = config.num_key_value_heads * headDim;
  const ff = config.intermediate_size as number;
  const expected: Record<string, number[]> = {
    "model.embed_tokens.weight": [config.vocab_size, h],
    "model.norm.weight": [h],
    "lm_head.weight": [config.vocab_size, h],
  };
  for (let l = 0; l < config.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    expected[`${p}input_layernorm.weight`] = [h];
    expected[`${p}post_attention_layernorm.weight`] = [h];
    expected[`${p}self_attn.q_proj.weight`] = [q, h];
    expected[`${p}self_attn.k_proj.weight`] = [kv, h];
    expected[`${p}self_attn.v_proj.weight`] = [kv, h];
    expected[`${p}self_attn.o_proj.weight`] = [h, q];
    expected[`${p}mlp.gate_proj.weight`] = [ff, h];
    expected[`${p}mlp.up_proj.weight`] = [ff, h];
    expected[`${p}mlp.down_proj.weight`] = [h, ff];
  }
  assertEquals(expected["model.embed_tokens.weight"], [4096, 512]);
  assertEquals(config.num_hidden_layers, 8);

  await using ckpt = await SafetensorsCheckpoint.open(dir);
  assertEquals(ckpt.shards().length, 5);
  assertEquals(ckpt.names().sort(), Object.keys(expected).sort());
  await ckpt.validate();
  for (const [name, shape] of Object.entries(expected)) {
    const info = await ckpt.tensorInfo(name);
    assertEquals([name, info.dtype, info.shape], [name, "BF16", shape]);
  }
  const norm = await ckpt.readTensor("model.layers.3.input_layernorm.weight");
  const emb = await ckpt.readTensor("model.embed_tokens.weight");
  assertEquals([norm.dtype, emb.shape], ["bf16", [4096, 512]]);
  // Trained weights: finite, not all equal (a misplaced offset would read another tensor or 0s).
  for (const t of [norm, emb]) {
    const bits = t.data() as Uint16Array;
    assert(bits.every((b) => (b & 0x7f80) !== 0x7f80), "non-finite bf16 value");
    assert(new Set(bits).size > 10, "suspiciously few distinct values");
  }
});

function missingFixture(path: string): never {
  throw new Error(
    `interop fixture ${path} is missing: on a machine with torch and safetensors run ` +
      "`python3 tests/gpu/make_safetensors_fixtures.py` and commit tests/fixtures/safetensors/",
  );
}

async function checkFixtureTensors(
  read: (name: string) => Promise<{ dtype: string; shape: readonly number[]; data: Uint8Array }>,
  names: string[],
) {
  for (const name of names) {
    const raw = await read(name);
    assertEquals(
      [name, raw.dtype, raw.shape, raw.data],
      [name, SPECS[name].dtype, SPECS[name].shape, fixtureBytes(name)],
    );
  }
}

Deno.test("files written by Python safetensors read back exactly", async () => {
  if (!(await Deno.stat(PYTHON_FILE).catch(() => null))) missingFixture(PYTHON_FILE);
  using file = await SafetensorsFile.open(PYTHON_FILE);
  assertEquals(file.metadata, PYTHON_METADATA);
  assertEquals(file.names().sort(), Object.keys(SPECS).sort());
  await checkFixtureTensors((n) => file.read(n), Object.keys(SPECS));
  // And through Tensor, as values: the table's numbers, decoded from bf16 / f16 / f32.
  const bf16 = await file.readTensor("bf16");
  assertEquals(
    Array.from(
      bf16.data() as Uint16Array,
      (b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0],
    ),
    Array.from({ length: 16 }, (_, i) => SPECS.bf16.value(i)),
  );
  assertEquals(
    Array.from((await file.readTensor("f32")).data() as Float32Array),
    Array.from({ length: 15 }, (_, i) => SPECS.f32.value(i)),
  );

  if (!(await Deno.stat(PYTHON_SHARDED_DIR).catch(() => null))) missingFixture(PYTHON_SHARDED_DIR);
  await using ckpt = await SafetensorsCheckpoint.open(PYTHON_SHARDED_DIR);
  assertEquals(ckpt.shards().sort(), Object.keys(PYTHON_SHARDS).sort());
  const names = Object.values(PYTHON_SHARDS).flat();
  assertEquals(ckpt.names().sort(), names.sort());
  await checkFixtureTensors((n) => ckpt.read(n), names);
});

Deno.test("the committed fp4lab-written fixture is what the writer produces today", async () => {
  if (!(await Deno.stat(FP4LAB_FILE).catch(() => null))) {
    throw new Error(
      `${FP4LAB_FILE} is missing: run \`deno run -A tests/safetensors_fixtures.ts\` and commit it`,
    );
  }
  await withTempDir(async (dir) => {
    await writeFp4labFixture(`${dir}/w.safetensors`);
    assertEquals(await Deno.readFile(FP4LAB_FILE), await Deno.readFile(`${dir}/w.safetensors`));
  });
  using file = await SafetensorsFile.open(FP4LAB_FILE);
  assertEquals(file.metadata, FP4LAB_METADATA);
  await checkFixtureTensors((n) => file.read(n), Object.keys(SPECS));
});
