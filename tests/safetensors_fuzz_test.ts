import { seededRandom as mulberry32 } from "../lib/random.ts";
import { assert } from "./assert.ts";
import { SafetensorsError, SafetensorsFile, writeSafetensors } from "../lib/safetensors.ts";
import { fixtureEntries } from "./safetensors_fixtures.ts";

const MUTATIONS = 5000;

type Mutation = (bytes: Uint8Array, rand: () => number) => { bytes: Uint8Array; what: string };

function headerEnd(bytes: Uint8Array): number {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return Math.min(bytes.length, 8 + n);
}

const int = (rand: () => number, n: number) => Math.floor(rand() * n);

const mutations: Mutation[] = [
  function flipHeaderBytes(bytes, rand) {
    const out = bytes.slice();
    const k = 1 + int(rand, 4);
    for (let i = 0; i < k; i++) out[8 + int(rand, headerEnd(bytes) - 8)] = int(rand, 256);
    return { bytes: out, what: `flip ${k} header bytes` };
  },
  function flipDataBytes(bytes, rand) {
    const out = bytes.slice();
    const start = headerEnd(bytes);
    if (start < out.length) out[start + int(rand, out.length - start)] ^= 1 + int(rand, 255);
    return { bytes: out, what: "flip a data byte" };
  },
  // Digits in the header are shapes and offsets: changing them reaches the deeper checks.
  function changeHeaderDigit(bytes, rand) {
    const out = bytes.slice();
    const digits: number[] = [];
    for (let i = 8; i < headerEnd(bytes); i++) if (out[i] >= 0x30 && out[i] <= 0x39) digits.push(i);
    if (digits.length === 0) return { bytes, what: "no digit to change" };
    const at = digits[int(rand, digits.length)];
    out[at] = 0x30 + int(rand, 10);
    return { bytes: out, what: `digit at ${at} -> ${String.fromCharCode(out[at])}` };
  },
  // Structural JSON characters: quotes, brackets, commas, colons, minus signs.
  function changeHeaderPunctuation(bytes, rand) {
    const out = bytes.slice();
    const marks = [...'"[]{},:-. 0e'].map((c) => c.charCodeAt(0));
    const at = 8 + int(rand, headerEnd(bytes) - 8);
    out[at] = marks[int(rand, marks.length)];
    return { bytes: out, what: `header byte ${at} -> ${String.fromCharCode(out[at])}` };
  },
  function truncate(bytes, rand) {
    const len = int(rand, bytes.length);
    return { bytes: bytes.slice(0, len), what: `truncate to ${len}` };
  },
  function appendBytes(bytes, rand) {
    const extra = Uint8Array.from({ length: 1 + int(rand, 16) }, () => int(rand, 256));
    const out = new Uint8Array(bytes.length + extra.length);
    out.set(bytes);
    out.set(extra, bytes.length);
    return { bytes: out, what: `append ${extra.length} bytes` };
  },
  function changeLengthField(bytes, rand) {
    const out = bytes.slice();
    const view = new DataView(out.buffer);
    const n = view.getBigUint64(0, true);
    const choices = [
      n + BigInt(1 + int(rand, 16)),
      n - BigInt(1 + int(rand, Number(n))),
      BigInt(int(rand, bytes.length + 16)),
      (BigInt(int(rand, 2 ** 32)) << 32n) | BigInt(int(rand, 2 ** 32)),
      0n,
    ];
    const v = BigInt.asUintN(64, choices[int(rand, choices.length)]);
    view.setBigUint64(0, v, true);
    return { bytes: out, what: `length field ${n} -> ${v}` };
  },
];

async function baseFiles(dir: string): Promise<Uint8Array[]> {
  const all = fixtureEntries();
  const small = fixtureEntries(["scalar", "empty", "u8", "bf16"]);
  const paths = [`${dir}/all.safetensors`, `${dir}/small.safetensors`, `${dir}/one.safetensors`];
  await writeSafetensors(paths[0], all, { format: "pt", note: "fuzz base" });
  await writeSafetensors(paths[1], small);
  await writeSafetensors(paths[2], { w: all.f32 });
  return Promise.all(paths.map((p) => Deno.readFile(p)));
}

async function openAndReadAll(path: string): Promise<void> {
  using file = await SafetensorsFile.open(path);
  for (const name of file.names()) {
    await file.read(name);
    await file.readTensor(name).catch((e) => {
      // F8 / BOOL refuse conversion to a Tensor, with a SafetensorsError.
      if (!(e instanceof SafetensorsError)) throw e;
    });
  }
}

Deno.test(`the reader throws only SafetensorsError on ${MUTATIONS} mutated files`, async () => {
  const seed = Number(Deno.env.get("SEED") ?? crypto.getRandomValues(new Uint32Array(1))[0]);
  const rand = mulberry32(seed);
  // Thousands of small files: on tmpfs where there is one, so that a busy disk cannot stall it.
  const shm = await Deno.stat("/dev/shm").then((s) => s.isDirectory, () => false);
  const dir = await Deno.makeTempDir({
    prefix: "fp4lab_st_fuzz_",
    dir: shm ? "/dev/shm" : undefined,
  });
  const counts = { accepted: 0, rejected: 0 };
  const start = performance.now();
  try {
    const bases = await baseFiles(dir);
    const path = `${dir}/mutant.safetensors`;
    for (let i = 0; i < MUTATIONS; i++) {
      let bytes = bases[int(rand, bases.length)];
      const what: string[] = [];
      const rounds = 1 + int(rand, 3);
      for (let r = 0; r < rounds; r++) {
        const m = mutations[int(rand, mutations.length)];
        if (bytes.length < 8 && m.name !== "appendBytes") break; // nothing left to mutate in place
        const out = m(bytes, rand);
        bytes = out.bytes;
        what.push(`${m.name}: ${out.what}`);
      }
      await Deno.writeFile(path, bytes);
      try {
        await openAndReadAll(path);
        counts.accepted++;
      } catch (e) {
        if (!(e instanceof SafetensorsError)) {
          throw new Error(
            `SEED=${seed} mutation ${i} (${what.join("; ")}) threw ${
              (e as Error)?.constructor?.name
            }, not SafetensorsError: ${e}`,
            { cause: e },
          );
        }
        assert(
          e.message.startsWith(path),
          `SEED=${seed}: message must name the file: ${e.message}`,
        );
        counts.rejected++;
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const seconds = (performance.now() - start) / 1000;
  console.log(`SEED=${seed}: ${JSON.stringify(counts)} in ${seconds.toFixed(1)} s`);
  // Both outcomes must occur, or the mutations are not exercising the reader.
  assert(counts.accepted > MUTATIONS / 50 && counts.rejected > MUTATIONS / 4, `SEED=${seed}`);
});
