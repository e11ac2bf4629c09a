/**
 * The KV-cache decode engine: a Llama model's weights and a key/value cache on one device, and
 * a `forward` that runs any number of new tokens at the next positions (the whole prompt for
 * prefill, one token per decode step) through the native ops of `fp4lab/decode.h`.
 *
 * Numerics per device: on the CPU activations and the cache default to f32, so a decode step
 * reproduces the full forward pass of `lib/model` to within summation order; on CUDA (and
 * wherever FP4 weights are used, since the FP4 kernels read and write BF16) activations
 * between ops are BF16 while the residual stream, norms, softmax and logits stay f32, and the
 * cache is BF16. Linear layers read the model's dense weights (f32 or bf16), or FP4 weights
 * (MXFP4/NVFP4 through `fp4_gemm`) for the modules given in `quantized`; the LM head is dense.
 * A quantized checkpoint's input schemes (rotation, W4A4 activation quantization) run on the
 * engine's device before each product. On CUDA a single-token step is recorded once as a CUDA
 * graph and replayed (`graphs`), and `nll` scores whole windows for evaluation. `greedy` decodes
 * with the argmax chosen on the device and fed to the next step, chunks of steps running without
 * a round trip through the host. A single-token step runs q/k/v and gate/up as one product each
 * (`fuse`): their weights are stacked by rows at load, which changes no output bit where the
 * product's rows are independent (the FP4 kernels, NVFP4 segments keeping their own tensor
 * scales).
 *
 * @module
 */
import { check, checkAsync, native } from "../../ffi/library.ts";
import { type Device, deviceId, requireDevice } from "../device.ts";
import { abiDType } from "../dtype.ts";
import type { Fp4Weights } from "../kernels/fp4_linear.ts";
import { ropeInvFreq } from "../model/config.ts";
import { type Linear, nllOf } from "../model/forward.ts";
import type { InputScheme } from "../pipeline/act_quant.ts";
import type { QuantSpec } from "../formats/spec.ts";
import {
  type DeviceQuantized,
  disposeQuantized,
  emptyQuantized,
  packSpec,
} from "../formats/native.ts";
import type { LlamaModel, Weight } from "../model/llama.ts";
import { Tensor } from "../tensor.ts";

/** Storage of activations between ops and of the KV cache. */
export type ActivationDType = "f32" | "bf16";

/**
 * Called by {@linkcode DecodeEngine.runBlock} with the input of a group of linear layers:
 * `linear` names the first layer reading it (`q_proj` for q/k/v, `o_proj`, `gate_proj` for
 * gate/up, `down_proj`); `x` is `[tokens, in]` f32 on the engine's device, before any input
 * scheme, in a buffer the engine reuses once the returned promise settles.
 */
export type BlockInputHook = (linear: string, x: Tensor) => Promise<void> | void;

/** Options of {@linkcode DecodeEngine.create}. */
export interface EngineOptions {
  /** Where the engine runs (default `"cpu"`); `"cuda"` needs a usable GPU. */
  device?: Device;
  /** Positions the KV cache holds (default and maximum: the model's max_position_embeddings). */
  contextLength?: number;
  /** KV cache element type (default f32 on the CPU without FP4 weights, else bf16). */
  cacheDtype?: ActivationDType;
  /** FP4 weights by linear module name (e.g. `model.layers.0.mlp.up_proj`), host or device. */
  quantized?: ReadonlyMap<string, Fp4Weights>;
  /**
   * Input schemes of quantized linears (from `loadQuantized`): their inputs are rotated and, for
   * W4A4, quantized and dequantized on the device before the product with the stored
   * (rotated-space) weight, dense or FP4 — the numerics of an FP4 GEMM.
   */
  schemes?: ReadonlyMap<string, InputScheme>;
  /**
   * CUDA: record a single-token decode step as a CUDA graph and replay it (default true; off
   * with input schemes, whose transforms cannot be recorded).
   */
  graphs?: boolean;
  /**
   * Single-token steps run q/k/v and gate/up as one product each, over weights stacked by rows
   * when the engine loads (default true). A group stays unfused where its layers differ in kind,
   * format or dtype, have an input transform, or run through a `linear` hook.
   */
  fuse?: boolean;
  /**
   * Single-token steps finish a fused FP4 q/k/v product with RoPE and the KV-cache store, a
   * fused FP4 gate/up product with SwiGLU, and the FP4 o and down products with the residual
   * add and norm after them, in the product's own call (`fp4_dec_qkv_rope_kv_store`,
   * `fp4_dec_gate_up_silu`, `fp4_dec_gemv_add_rmsnorm`: on CUDA inside the GEMV kernel), which
   * changes no output bit (default true; bf16 activations; q/k/v and gate/up where `fuse`
   * stacked them).
   */
  epilogues?: boolean;
  /**
   * CPU only: runs every linear layer through this hook instead (e.g. the online rotation and
   * activation quantization of a `loadQuantized` checkpoint), with f32 activations.
   */
  linear?: Linear;
}

interface DenseLinear {
  kind: "dense";
  name: string;
  /** The weight rows start at row `at` of `w` (a fused group's stacked weights, else 0). */
  w: Tensor;
  at: number;
  out: number;
  in: number;
  scheme?: InputScheme;
}

/** Device buffers of one input transform: the quantized input and its dequantized form. */
interface SchemeBuffers {
  /** The quantized input (W4A4 only). */
  q: DeviceQuantized | null;
  x: Tensor;
}
interface Fp4Linear {
  kind: "fp4";
  name: string;
  /** The weight rows start at row `at` of `codes` and `scales` (as DenseLinear.at). */
  codes: Tensor;
  scales: Tensor;
  at: number;
  format: number;
  tensorScale: number;
  out: number;
  in: number;
  scheme?: InputScheme;
}

type LinearWeights = DenseLinear | Fp4Linear;

/**
 * Linears of one input run as one product: `lw` spans the members' stacked rows (it owns the
 * storage the members point into); NVFP4 members keep their tensor scales by row segment.
 */
interface FusedGroup {
  lw: LinearWeights;
  members: LinearWeights[];
  segmentEnds: BigInt64Array<ArrayBuffer>;
  tensorScales: Float32Array<ArrayBuffer>;
}

interface LayerWeights {
  inputNorm: Tensor;
  postNorm: Tensor;
  q: LinearWeights;
  k: LinearWeights;
  v: LinearWeights;
  o: LinearWeights;
  gate: LinearWeights;
  up: LinearWeights;
  down: LinearWeights;
  /** q/k/v and gate/up as one product each in single-token steps, where fused. */
  qkv?: FusedGroup;
  gateUp?: FusedGroup;
  kCache: Tensor;
  vCache: Tensor;
}

interface Scratch {
  tokens: number;
  ids: Tensor;
  hidden: Tensor;
  x: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  att: Tensor;
  proj: Tensor;
  gate: Tensor;
  up: Tensor;
  /** Outputs of the fused q/k/v and gate/up products of a single-token step. */
  qkv: Tensor;
  gateUp: Tensor;
  logits: Tensor;
  last: Tensor;
}

const H2D = 0;
const D2H = 1;
const D2D = 2;

function weightTensor(w: Weight, device: Device): Tensor {
  const host = Tensor.from(w.data, w.shape, w.dtype);
  return device === "cpu" ? host : host.to(device);
}

function offset(t: Tensor, bytes: number): Deno.PointerValue {
  return bytes === 0 ? t.pointer() : Deno.UnsafePointer.offset(t.pointer()!, bytes);
}

/**
 * A model loaded for incremental generation on one device, with its KV cache.
 *
 * @example
 * ```ts
 * import { DecodeEngine } from "./engine.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 10, max_position_embeddings: 8,
 * }));
 * using engine = DecodeEngine.create(model);
 * await engine.forward(new Int32Array([1, 2, 3]));
 * const next = engine.argmax();
 * await engine.forward(new Int32Array([next]));
 * console.assert(engine.position === 4);
 * ```
 */
export class DecodeEngine {
  /** The model's configuration, weights and name. */
  readonly model: LlamaModel;
  /** Where the engine runs. */
  readonly device: Device;
  /** Positions the cache holds. */
  readonly contextLength: number;
  /** Activation storage between ops. */
  readonly activationDtype: ActivationDType;
  /** KV cache storage. */
  readonly cacheDtype: ActivationDType;
  #dev: number;
  #layers: LayerWeights[];
  #embed: Tensor;
  #finalNorm: Tensor;
  #head: DenseLinear;
  #cos: Tensor;
  #sin: Tensor;
  #pos: Tensor;
  /** Zero between calls: the blocks of a fp4_dec_gemv_add_rmsnorm count themselves here. */
  #counter: Tensor;
  #scratch: Scratch | undefined;
  #position = 0;
  #owned: Tensor[] = [];
  #disposed = false;
  #hook: Linear | undefined;
  #schemes: ReadonlyMap<string, InputScheme>;
  #schemeBuffers = new Map<string, SchemeBuffers>();
  #packedSpecs = new Map<QuantSpec, Uint8Array<ArrayBuffer>>();
  #graphs: boolean;
  #fuse: boolean;
  #epilogues: boolean;
  #graph: Deno.PointerValue = null;
  /** The step followed by the device-side choice of the next input (greedy). */
  #feedGraph: Deno.PointerValue = null;
  #graphScratch: Scratch | undefined;
  /** Greedy: the input id of every position, written by the device ([contextLength]). */
  #history: Tensor | undefined;
  #eagerSteps = 0;
  #allLogits: Tensor | undefined;
  #captures = new Map<string, Tensor>();

  private constructor(
    model: LlamaModel,
    device: Device,
    ctx: number,
    act: ActivationDType,
    cache: ActivationDType,
    hook: Linear | undefined,
    schemes: ReadonlyMap<string, InputScheme>,
    graphs: boolean,
    fuse: boolean,
    epilogues: boolean,
  ) {
    this.model = model;
    this.#fuse = fuse;
    this.#epilogues = epilogues;
    this.#hook = hook;
    this.#schemes = schemes;
    this.#graphs = graphs;
    this.device = device;
    this.contextLength = ctx;
    this.activationDtype = act;
    this.cacheDtype = cache;
    this.#dev = deviceId(device);
    this.#layers = [];
    this.#embed =
      this.#finalNorm =
      this.#cos =
      this.#sin =
      this.#pos =
      this.#counter =
        undefined as never;
    this.#head = undefined as never;
  }

  /**
   * Places `model`'s weights (and the FP4 weights of `options.quantized`) on the device and
   * allocates the KV cache. Throws when the device is unusable, the context is out of range,
   * the FP4 weights do not match the model's shapes, or the device is out of memory.
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10, max_position_embeddings: 8,
   * }));
   * using engine = DecodeEngine.create(model, { contextLength: 4 });
   * console.assert(engine.contextLength === 4 && engine.cacheDtype === "f32");
   * ```
   */
  static create(model: LlamaModel, options: EngineOptions = {}): DecodeEngine {
    const device = requireDevice(options.device ?? "cpu");
    const c = model.config;
    const ctx = options.contextLength ?? c.maxPositionEmbeddings;
    if (!Number.isSafeInteger(ctx) || ctx < 1 || ctx > c.maxPositionEmbeddings) {
      throw new Error(
        `context length ${ctx} is outside [1, ${c.maxPositionEmbeddings}] (max_position_embeddings)`,
      );
    }
    const quantized = options.quantized ?? new Map<string, Fp4Weights>();
    if (options.linear && (device !== "cpu" || quantized.size > 0)) {
      throw new Error("a linear hook runs only on the CPU engine without FP4 weights");
    }
    const act: ActivationDType = device === "cpu" && quantized.size === 0 ? "f32" : "bf16";
    const cache = options.cacheDtype ?? act;
    if (cache !== "f32" && cache !== "bf16") {
      throw new Error(`cache dtype "${cache}" is not f32 or bf16`);
    }
    const schemes = options.schemes ?? new Map<string, InputScheme>();
    if (options.linear && schemes.size > 0) {
      throw new Error("give either a linear hook or input schemes, not both");
    }
    // The input transforms run on a worker thread (nonblocking FFI), outside any recording.
    const graphs = device === "cuda" && (options.graphs ?? true) && schemes.size === 0;
    const engine = new DecodeEngine(
      model,
      device,
      ctx,
      act,
      cache,
      options.linear,
      schemes,
      graphs,
      options.fuse ?? true,
      options.epilogues ?? true,
    );
    try {
      engine.#load(quantized);
    } catch (e) {
      engine.dispose();
      throw e;
    }
    return engine;
  }

  #own(t: Tensor): Tensor {
    this.#owned.push(t);
    return t;
  }

  #load(quantized: ReadonlyMap<string, Fp4Weights>): void {
    const c = this.model.config;
    const names = new Set(this.model.linearNames());
    for (const name of quantized.keys()) {
      if (!names.has(name) || name === "lm_head") {
        throw new Error(
          `FP4 weights given for "${name}", which is not a quantizable linear layer of the model`,
        );
      }
    }
    for (const name of this.#schemes.keys()) {
      if (!names.has(name) || name === "lm_head") {
        throw new Error(
          `input scheme given for "${name}", which is not a quantizable linear layer of the model`,
        );
      }
    }
    const dense = new Map<Weight, Tensor>();
    const upload = (w: Weight): Tensor => {
      let t = dense.get(w);
      if (!t) {
        t = this.device === "cpu"
          ? weightTensor(w, "cpu")
          : this.#own(weightTensor(w, this.device));
        dense.set(w, t);
      }
      return t;
    };
    const linear = (name: string): LinearWeights => {
      const w = this.model.weight(`${name}.weight`);
      const [out, inF] = w.shape;
      const q = quantized.get(name);
      if (!q) {
        return {
          kind: "dense",
          name,
          w: upload(w),
          at: 0,
          out,
          in: inF,
          scheme: this.#schemes.get(name),
        };
      }
      if (q.n !== out || q.k !== inF) {
        throw new Error(
          `FP4 weights of "${name}" are [${q.n}, ${q.k}], the model needs [${out}, ${inF}]`,
        );
      }
      return this.#fp4Linear(name, q, this.#schemes.get(name));
    };
    const cacheShape = [this.contextLength, c.numKvHeads * c.headDim];
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}`;
      const L: LayerWeights = {
        inputNorm: upload(this.model.weight(`${p}.input_layernorm.weight`)),
        postNorm: upload(this.model.weight(`${p}.post_attention_layernorm.weight`)),
        q: linear(`${p}.self_attn.q_proj`),
        k: linear(`${p}.self_attn.k_proj`),
        v: linear(`${p}.self_attn.v_proj`),
        o: linear(`${p}.self_attn.o_proj`),
        gate: linear(`${p}.mlp.gate_proj`),
        up: linear(`${p}.mlp.up_proj`),
        down: linear(`${p}.mlp.down_proj`),
        kCache: this.#allocCache(cacheShape),
        vCache: this.#allocCache(cacheShape),
      };
      L.qkv = this.#fused([L.q, L.k, L.v]);
      L.gateUp = this.#fused([L.gate, L.up]);
      this.#layers.push(L);
    }
    this.#embed = upload(this.model.weight("model.embed_tokens.weight"));
    this.#finalNorm = upload(this.model.weight("model.norm.weight"));
    const head = this.model.weight("lm_head.weight");
    this.#head = {
      kind: "dense",
      name: "lm_head",
      w: upload(head),
      at: 0,
      out: head.shape[0],
      in: head.shape[1],
    };
    const { cos, sin } = ropeTables(this.model, this.contextLength);
    this.#cos = this.#place(Tensor.from(cos, [cos.length]));
    this.#sin = this.#place(Tensor.from(sin, [sin.length]));
    this.#pos = this.#place(Tensor.from(new Int32Array(1), [1]));
    this.#counter = this.#place(Tensor.from(new Int32Array(1), [1]));
  }

  /**
   * The group's weights stacked by rows in storage of the engine's, the members pointing into it
   * (their own device copies freed), or undefined where the group cannot run as one product.
   */
  #fused(members: LinearWeights[]): FusedGroup | undefined {
    const [m0] = members;
    const plain = (lw: LinearWeights) => !lw.scheme || (!lw.scheme.rotation && !lw.scheme.act);
    const alike = members.every((lw) =>
      plain(lw) && lw.in === m0.in && lw.kind === m0.kind &&
      (lw.kind === "fp4"
        ? lw.format === (m0 as Fp4Linear).format
        : lw.w.dtype === (m0 as DenseLinear).w.dtype)
    );
    if (!this.#fuse || this.#hook || !alike) return undefined;
    const out = members.reduce((n, lw) => n + lw.out, 0);
    const segmentEnds = new BigInt64Array(members.length);
    const tensorScales = new Float32Array(members.length);
    let rows = 0;
    members.forEach((lw, i) => {
      rows += lw.out;
      segmentEnds[i] = BigInt(rows);
      tensorScales[i] = lw.kind === "fp4" ? lw.tensorScale : 1;
    });
    // Row bytes of each stacked tensor; members are copied in, then point into the stack.
    const stack = (parts: Tensor[], rowBytes: number, dtype: Tensor["dtype"], shape: number[]) => {
      const t = this.#own(Tensor.empty(shape, dtype, this.device));
      let at = 0;
      for (let i = 0; i < parts.length; i++) {
        const bytes = members[i].out * rowBytes;
        check(
          native().fp4_memcpy(
            this.#dev,
            offset(t, at),
            parts[i].pointer(),
            BigInt(bytes),
            parts[i].device === "cpu" && this.device !== "cpu" ? H2D : D2D,
          ),
          "fp4_memcpy",
        );
        at += bytes;
      }
      return t;
    };
    const free = (t: Tensor) => {
      const i = this.#owned.indexOf(t);
      if (i >= 0) this.#owned.splice(i, 1)[0].dispose();
    };
    let lw: LinearWeights;
    if (m0.kind === "fp4") {
      const fp4 = members as Fp4Linear[];
      const group = m0.format === 0 ? 32 : 16;
      const codes = stack(fp4.map((m) => m.codes), m0.in / 2, "u8", [out * m0.in / 2]);
      const scales = stack(fp4.map((m) => m.scales), m0.in / group, "u8", [out * m0.in / group]);
      lw = { ...m0, name: fp4.map((m) => m.name).join("+"), codes, scales, at: 0, out };
      let at = 0;
      for (const m of fp4) {
        free(m.codes);
        free(m.scales);
        Object.assign(m, { codes, scales, at });
        at += m.out;
      }
    } else {
      const dense = members as DenseLinear[];
      const rowBytes = m0.in * (m0.w.dtype === "f32" ? 4 : 2);
      const w = stack(dense.map((m) => m.w), rowBytes, m0.w.dtype, [out, m0.in]);
      lw = { ...m0, name: dense.map((m) => m.name).join("+"), w, at: 0, out };
      let at = 0;
      for (const m of dense) {
        free(m.w);
        Object.assign(m, { w, at });
        at += m.out;
      }
    }
    return { lw, members, segmentEnds, tensorScales };
  }

  /**
   * Gives each member of `g` storage of its own again (copied out of the stack) and frees the
   * stack: before one member is replaced.
   */
  #unfuse(g: FusedGroup): void {
    for (const m of g.members) {
      const copy = (t: Tensor, rowBytes: number, shape: number[]) => {
        const own = this.#own(Tensor.empty(shape, t.dtype, this.device));
        check(
          native().fp4_memcpy(
            this.#dev,
            own.pointer(),
            offset(t, m.at * rowBytes),
            BigInt(m.out * rowBytes),
            D2D,
          ),
          "fp4_memcpy",
        );
        return own;
      };
      if (m.kind === "fp4") {
        const group = m.format === 0 ? 32 : 16;
        m.codes = copy(m.codes, m.in / 2, [m.out * m.in / 2]);
        m.scales = copy(m.scales, m.in / group, [m.out * m.in / group]);
      } else {
        m.w = copy(m.w, m.in * (m.w.dtype === "f32" ? 4 : 2), [m.out, m.in]);
      }
      m.at = 0;
    }
    const storage = g.lw.kind === "fp4" ? [g.lw.codes, g.lw.scales] : [g.lw.w];
    for (const t of storage) {
      const i = this.#owned.indexOf(t);
      if (i >= 0) this.#owned.splice(i, 1)[0].dispose();
    }
  }

  #place(t: Tensor): Tensor {
    return this.device === "cpu" ? this.#own(t) : this.#own(t.to(this.device));
  }

  #allocCache(shape: number[]): Tensor {
    try {
      return this.#own(Tensor.zeros(shape, this.cacheDtype, this.device));
    } catch (e) {
      const c = this.model.config;
      const bytes = 2 * c.numLayers * shape[0] * shape[1] * (this.cacheDtype === "f32" ? 4 : 2);
      throw new Error(
        `cannot allocate the KV cache (${this.contextLength} positions, ${
          (bytes / 2 ** 20).toFixed(1)
        } MiB in all) on ${this.device}: ${(e as Error).message}`,
        { cause: e },
      );
    }
  }

  /** Positions already in the cache: the next token goes to this position. */
  get position(): number {
    return this.#position;
  }

  /**
   * Forgets the cached tokens (the next `forward` starts at position 0).
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10,
   * }));
   * using engine = DecodeEngine.create(model, { contextLength: 8 });
   * await engine.forward(new Int32Array([1, 2]));
   * engine.reset();
   * console.assert(engine.position === 0);
   * ```
   */
  reset(): void {
    this.#position = 0;
  }

  #scratchFor(tokens: number): Scratch {
    const s = this.#scratch;
    if (s && s.tokens >= tokens) return s;
    if (s) { for (const t of Object.values(s)) if (t instanceof Tensor) t.dispose(); }
    const c = this.model.config;
    const act = this.activationDtype;
    const mk = (n: number, dtype: "f32" | "bf16" | "i32") =>
      Tensor.empty([tokens, n], dtype, this.device);
    this.#scratch = {
      tokens,
      ids: mk(1, "i32"),
      hidden: mk(c.hiddenSize, "f32"),
      x: mk(c.hiddenSize, act),
      q: mk(c.numHeads * c.headDim, act),
      k: mk(c.numKvHeads * c.headDim, act),
      v: mk(c.numKvHeads * c.headDim, act),
      att: mk(c.numHeads * c.headDim, act),
      proj: mk(c.hiddenSize, act),
      gate: mk(c.intermediateSize, act),
      up: mk(c.intermediateSize, act),
      qkv: Tensor.empty([(c.numHeads + 2 * c.numKvHeads) * c.headDim], act, this.device),
      gateUp: Tensor.empty([2 * c.intermediateSize], act, this.device),
      logits: Tensor.empty([c.vocabSize], "f32", this.device),
      last: Tensor.empty([1], "i32", this.device),
    };
    return this.#scratch;
  }

  #copyIn(dst: Tensor, src: Int32Array): void {
    if (this.device === "cpu") {
      (dst.data() as Int32Array).set(src);
      return;
    }
    check(
      native().fp4_memcpy(
        this.#dev,
        dst.pointer(),
        Deno.UnsafePointer.of(src as BufferSource),
        BigInt(src.byteLength),
        H2D,
      ),
      "fp4_memcpy",
    );
  }

  /** `dst.length` int32 values of `src` from byte `at` into the host array `dst`. */
  #copyOut(dst: Int32Array, src: Tensor, at: number): void {
    if (this.device === "cpu") {
      dst.set((src.data() as Int32Array).subarray(at / 4, at / 4 + dst.length));
      return;
    }
    check(
      native().fp4_memcpy(
        this.#dev,
        Deno.UnsafePointer.of(dst as BufferSource),
        offset(src, at),
        BigInt(dst.byteLength),
        D2H,
      ),
      "fp4_memcpy",
    );
  }

  /** Linears that read the same input: with one input scheme, it is transformed once. */
  async #sameInput(
    lws: LinearWeights[],
    x: Deno.PointerValue,
    xDtype: ActivationDType,
    ys: Deno.PointerValue[],
    yDtype: ActivationDType,
    rows: number,
  ): Promise<void> {
    const sc = lws[0].scheme;
    const shared = !this.#hook && sc !== undefined && (sc.rotation !== null || sc.act !== null) &&
      lws.every((lw) => lw.scheme === sc && lw.in === lws[0].in);
    const xin = shared ? await this.#transformInput(lws[0], sc, x, xDtype, rows) : x;
    for (let i = 0; i < lws.length; i++) {
      await this.#linear(lws[i], xin, xDtype, ys[i], yDtype, rows, shared);
    }
  }

  /**
   * A single-token FP4 product `lw` of `x` into s.proj with the residual add and norm after it in
   * one call (`epilogues`): hidden += s.proj, s.x = norm(hidden). False (nothing run) where the
   * layer has another kind, an input transform, or a hook.
   */
  #addNormed(
    lw: LinearWeights,
    x: Deno.PointerValue,
    hidden: Deno.PointerValue,
    norm: Tensor,
    s: Scratch,
    T: number,
  ): boolean {
    if (
      T !== 1 || !this.#epilogues || this.#hook || lw.kind !== "fp4" || lw.scheme ||
      this.activationDtype !== "bf16"
    ) return false;
    const group = lw.format === 0 ? 32 : 16;
    check(
      native().fp4_dec_gemv_add_rmsnorm(
        this.#dev,
        lw.format,
        x,
        offset(lw.codes, lw.at * lw.in / 2),
        offset(lw.scales, lw.at * lw.in / group),
        lw.tensorScale,
        s.proj.pointer(),
        BigInt(lw.out),
        BigInt(lw.in),
        hidden,
        norm.pointer(),
        abiDType(norm.dtype),
        s.x.pointer(),
        this.model.config.rmsNormEps,
        this.#counter.pointer(),
      ),
      "fp4_dec_gemv_add_rmsnorm",
    );
    return true;
  }

  /** The FP4 weights of a fused group whose call also runs the op after it (`epilogues`). */
  #epilogueOf(g: FusedGroup | undefined): Fp4Linear | undefined {
    const lw = g?.lw;
    return this.#epilogues && lw?.kind === "fp4" && this.activationDtype === "bf16"
      ? lw
      : undefined;
  }

  /**
   * One token's products of a fused group into `y` (the members' outputs back to back): FP4
   * through fp4_gemm_segments (each member's tensor scale on its rows), dense as one linear.
   */
  async #fusedLinear(
    g: FusedGroup,
    x: Deno.PointerValue,
    act: ActivationDType,
    y: Deno.PointerValue,
  ): Promise<void> {
    const lw = g.lw;
    if (lw.kind === "dense") return await this.#linear(lw, x, act, y, act, 1);
    check(
      native().fp4_gemm_segments(
        this.#dev,
        lw.format,
        x,
        lw.codes.pointer(),
        lw.scales.pointer(),
        g.tensorScales,
        g.segmentEnds,
        g.members.length,
        y,
        1n,
        BigInt(lw.out),
        BigInt(lw.in),
      ),
      "fp4_gemm_segments",
    );
  }

  async #linear(
    lw: LinearWeights,
    x: Deno.PointerValue,
    xDtype: ActivationDType,
    y: Deno.PointerValue,
    yDtype: ActivationDType,
    rows: number,
    transformed = false,
  ): Promise<void> {
    if (this.#hook) {
      // The CPU engine's activations are host f32 arrays (checked in create).
      const xs = new Float32Array(rows * lw.in);
      xs.set(new Float32Array(Deno.UnsafePointerView.getArrayBuffer(x!, rows * lw.in * 4)));
      const ys = await this.#hook(lw.name, xs, rows);
      if (!(ys instanceof Float32Array) || ys.length !== rows * lw.out) {
        throw new Error(
          `linear hook "${lw.name}" returned ${ys?.length} values, expected [${rows}, ${lw.out}]`,
        );
      }
      new Float32Array(Deno.UnsafePointerView.getArrayBuffer(y!, rows * lw.out * 4)).set(ys);
      return;
    }
    if (!transformed && lw.scheme && (lw.scheme.rotation || lw.scheme.act)) {
      x = await this.#transformInput(lw, lw.scheme, x, xDtype, rows);
    }
    const lib = native();
    const R = BigInt(rows), N = BigInt(lw.out), K = BigInt(lw.in);
    if (lw.kind === "fp4") {
      // fp4_gemm reads and writes bf16; #create made the activations bf16 whenever FP4 is used.
      const group = lw.format === 0 ? 32 : 16;
      check(
        lib.fp4_gemm(
          this.#dev,
          lw.format,
          x,
          offset(lw.codes, lw.at * lw.in / 2),
          offset(lw.scales, lw.at * lw.in / group),
          lw.tensorScale,
          y,
          R,
          N,
          K,
        ),
        "fp4_gemm",
      );
      return;
    }
    const wDtype = abiDType(lw.w.dtype);
    const w = offset(lw.w, lw.at * lw.in * (lw.w.dtype === "f32" ? 4 : 2));
    if (this.device === "cpu" && xDtype === "f32" && yDtype === "f32") {
      await checkAsync(
        lib.fp4_linear(this.#dev, x, w, wDtype, y, R, N, K),
        "fp4_linear",
        [lw],
      );
      return;
    }
    check(
      lib.fp4_dec_linear(
        this.#dev,
        x,
        abiDType(xDtype),
        w,
        wDtype,
        y,
        abiDType(yDtype),
        R,
        N,
        K,
      ),
      "fp4_dec_linear",
    );
  }

  /**
   * The input of a linear with an input scheme as its GEMM sees it: rotated, then quantized and
   * dequantized, on the device (the kernels of lib/formats, bit for bit), in a buffer of the
   * engine's that lives until the next call for an input of the same width and scheme.
   */
  async #transformInput(
    lw: LinearWeights,
    sc: InputScheme,
    x: Deno.PointerValue,
    xDtype: ActivationDType,
    rows: number,
  ): Promise<Deno.PointerValue> {
    const lib = native();
    const dev = this.#dev;
    const R = BigInt(rows), K = BigInt(lw.in), X = abiDType(xDtype);
    const b = this.#schemeBuffersFor(lw.in, sc, rows, xDtype);
    const rot = sc.rotation;
    const hasSeed = rot?.seed === undefined ? 0 : 1;
    const seed = rot?.seed === undefined ? 0n : BigInt(rot.seed);
    const out = b.x.pointer();
    if (!sc.act) {
      await checkAsync(
        lib.fp4_hadamard(dev, X, x, X, out, R, K, rot!.block, 0, hasSeed, seed),
        "fp4_hadamard",
        [b],
      );
      return out;
    }
    const p = (t: Tensor | null) => t ? t.pointer() : null;
    const q = b.q!;
    // One call that only enqueues work: the engine's forward passes call it per linear group.
    check(
      lib.fp4_fake_quantize(
        dev,
        this.#packedSpec(sc.act),
        X,
        x,
        R,
        K,
        rot?.block ?? 0,
        hasSeed,
        seed,
        q.codes.pointer(),
        q.scales.pointer(),
        p(q.zeros),
        p(q.tensorScale),
        X,
        out,
      ),
      "fp4_fake_quantize",
    );
    return out;
  }

  // The ABI struct of an activation spec, packed once per spec object.
  #packedSpec(spec: QuantSpec): Uint8Array<ArrayBuffer> {
    let b = this.#packedSpecs.get(spec);
    if (!b) {
      b = packSpec(spec);
      this.#packedSpecs.set(spec, b);
    }
    return b;
  }

  #schemeBuffersFor(
    cols: number,
    sc: InputScheme,
    rows: number,
    dtype: ActivationDType,
  ): SchemeBuffers {
    // A static activation scale changes no buffer: layers that differ only in it share one.
    const key = `${cols}|${
      JSON.stringify(sc, (k, v) =>
        typeof v === "bigint"
          ? v.toString()
          : k === "tensorScale" && typeof v === "number"
          ? "given"
          : v)
    }`;
    const have = this.#schemeBuffers.get(key);
    if (have && have.x.shape[0] >= rows) return have;
    if (have) this.#freeSchemeBuffers(have);
    const b: SchemeBuffers = {
      q: sc.act ? emptyQuantized(this.device, sc.act, rows, cols) : null,
      x: Tensor.empty([rows, cols], dtype, this.device),
    };
    this.#schemeBuffers.set(key, b);
    return b;
  }

  #freeSchemeBuffers(b: SchemeBuffers): void {
    if (b.q) disposeQuantized(b.q);
    b.x.dispose();
  }

  /**
   * Runs `ids` at positions `position .. position + ids.length - 1`, appends their keys and
   * values to the cache, and leaves the last token's logits ready for {@linkcode logits} and
   * {@linkcode argmax}. Throws when the ids are out of the vocabulary or the tokens would not
   * fit the context.
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10, max_position_embeddings: 8,
   * }));
   * using engine = DecodeEngine.create(model);
   * await engine.forward(new Int32Array([4, 2]));
   * console.assert(engine.logits().length === 10);
   * ```
   */
  async forward(ids: Int32Array): Promise<void> {
    const s = this.#begin(ids);
    const T = ids.length;
    if (T === 1 && this.#graphs) {
      await this.#replayStep(s);
    } else {
      await this.#step(s, T);
      if (T === 1) this.#eagerSteps++;
    }
    this.#position += T;
  }

  /** Checks `ids`, sizes the scratch and copies the ids and the first position to the device. */
  #begin(ids: Int32Array): Scratch {
    this.#live();
    const c = this.model.config;
    const T = ids.length;
    if (T === 0) throw new Error("forward: no tokens");
    for (let i = 0; i < T; i++) {
      if (!(ids[i] >= 0 && ids[i] < c.vocabSize)) {
        throw new Error(`forward: token id ${ids[i]} at index ${i} is outside [0, ${c.vocabSize})`);
      }
    }
    const p0 = this.#position;
    if (p0 + T > this.contextLength) {
      throw new Error(
        `forward: ${T} more tokens after ${p0} do not fit the context of ${this.contextLength} positions`,
      );
    }
    const s = this.#scratchFor(T);
    this.#copyIn(s.ids, ids);
    this.#copyIn(this.#pos, new Int32Array([p0]));
    return s;
  }

  /**
   * One decode step from a recorded CUDA graph: the first single-token step runs eagerly (it
   * configures the kernels and lets cuBLAS create its handle, which a recording may not), the
   * second is recorded, and every later one replays it. The graph reads the token and the
   * position from the device buffers #begin fills, so one recording serves every step while
   * the scratch stays the same.
   */
  async #replayStep(s: Scratch, feed = false): Promise<void> {
    const lib = native();
    if (this.#graphScratch !== s) this.#dropGraph();
    const body = async () => {
      await this.#step(s, 1);
      if (feed) this.#feed(s);
    };
    let graph = feed ? this.#feedGraph : this.#graph;
    if (!graph) {
      if (this.#eagerSteps === 0) {
        await body();
        this.#eagerSteps++;
        return;
      }
      check(lib.fp4_graph_begin(this.#dev), "fp4_graph_begin");
      let failure: unknown = null;
      try {
        await body();
      } catch (e) {
        failure = e;
      }
      const out = new BigUint64Array(1);
      const ended = lib.fp4_graph_end(this.#dev, out);
      if (failure) throw failure;
      check(ended, "fp4_graph_end");
      graph = Deno.UnsafePointer.create(out[0]);
      if (feed) this.#feedGraph = graph;
      else this.#graph = graph;
      this.#graphScratch = s;
    }
    check(lib.fp4_graph_launch(this.#dev, graph), "fp4_graph_launch");
  }

  /** After a step: its greedy token becomes the next input, and the device position advances. */
  #feed(s: Scratch): void {
    check(
      native().fp4_dec_argmax_feed(
        this.#dev,
        s.logits.pointer(),
        BigInt(this.model.config.vocabSize),
        s.ids.pointer(),
        this.#pos.pointer(),
        this.#history!.pointer(),
        BigInt(this.contextLength + 1),
      ),
      "fp4_dec_argmax_feed",
    );
  }

  /**
   * Greedy decoding with the token choice on the device: yields up to `limit` tokens, the first
   * being {@linkcode argmax} of the current logits, each later one the argmax after a
   * single-token step on the previous one. Steps run in chunks of `chunk` (default 16 on CUDA;
   * 1 on the CPU, where there is no round trip to save and tokens stream one by one) without
   * a copy from the host between them (each step's input is the previous step's argmax, on the
   * device; on CUDA each step replays one recorded graph), and a chunk's tokens come back with
   * one copy before they are yielded. The steps of a chunk run before its first token is
   * yielded: a consumer that stops early leaves up to `chunk - 1` more steps in the cache, and
   * {@linkcode position} counts them. Throws before any step when `limit - 1` steps do not fit
   * the context.
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10, max_position_embeddings: 8,
   * }));
   * using engine = DecodeEngine.create(model);
   * await engine.forward(new Int32Array([1, 2]));
   * const tokens: number[] = [];
   * for await (const t of engine.greedy(4, 2)) tokens.push(t);
   * console.assert(tokens.length === 4 && engine.position === 5);
   * ```
   */
  async *greedy(
    limit: number,
    chunk: number = this.device === "cpu" ? 1 : 16,
  ): AsyncGenerator<number, void, undefined> {
    this.#ready();
    if (!Number.isSafeInteger(limit) || limit < 1) {
      throw new Error(`greedy: limit must be an integer >= 1, got ${limit}`);
    }
    if (!Number.isSafeInteger(chunk) || chunk < 1) {
      throw new Error(`greedy: chunk must be an integer >= 1, got ${chunk}`);
    }
    if (this.#position + limit - 1 > this.contextLength) {
      throw new Error(
        `greedy: ${
          limit - 1
        } more steps after ${this.#position} do not fit the context of ${this.contextLength} positions`,
      );
    }
    let token = this.argmax();
    yield token;
    // One entry past the context: the token chosen after its last position is never run.
    const cap = this.contextLength + 1;
    this.#history ??= this.#own(Tensor.empty([cap], "i32", this.device));
    const got = new Int32Array(chunk);
    for (let done = 1; done < limit;) {
      const steps = Math.min(chunk, limit - done);
      const p0 = this.#position;
      if (p0 + steps > this.contextLength) {
        throw new Error(`greedy: the context of ${this.contextLength} positions is full`);
      }
      const s = this.#scratchFor(1);
      this.#copyIn(s.ids, new Int32Array([token]));
      this.#copyIn(this.#pos, new Int32Array([p0]));
      for (let i = 0; i < steps; i++) {
        if (this.#graphs) {
          await this.#replayStep(s, true);
        } else {
          await this.#step(s, 1);
          this.#eagerSteps++;
          this.#feed(s);
        }
        this.#position++;
      }
      // history[p0 + 1 + i]: the token chosen after step i, the input of position p0 + 1 + i.
      this.#copyOut(got.subarray(0, steps), this.#history, (p0 + 1) * 4);
      for (let i = 0; i < steps; i++) {
        token = got[i];
        done++;
        yield token;
      }
    }
  }

  #dropGraph(): void {
    if (this.#graph) native().fp4_graph_destroy(this.#dev, this.#graph);
    if (this.#feedGraph) native().fp4_graph_destroy(this.#dev, this.#feedGraph);
    this.#graph = null;
    this.#feedGraph = null;
    this.#graphScratch = undefined;
  }

  /** The layers for the T tokens of the scratch, then the last token's logits. */
  async #step(s: Scratch, T: number): Promise<void> {
    await this.#layersFor(s, T);
    await this.#headRows(s, T - 1, 1, s.logits.pointer());
  }

  /** Final norm and LM head of `rows` rows of the residual stream from `row0`, into `logits`. */
  async #headRows(s: Scratch, row0: number, rows: number, logits: Deno.PointerValue) {
    const c = this.model.config;
    const dim = c.hiddenSize;
    const act = this.activationDtype;
    check(
      native().fp4_dec_rmsnorm(
        this.#dev,
        offset(s.hidden, row0 * dim * 4),
        this.#finalNorm.pointer(),
        abiDType(this.#finalNorm.dtype),
        s.x.pointer(),
        abiDType(act),
        BigInt(rows),
        BigInt(dim),
        c.rmsNormEps,
      ),
      "fp4_dec_rmsnorm",
    );
    await this.#linear(this.#head, s.x.pointer(), act, logits, "f32", rows);
  }

  /**
   * Scores a window from an empty cache: the negative log-likelihood of each next token,
   * `nll[t] = -log softmax(logits[t])[ids[t + 1]]` for t < ids.length - 1 (softmax sums in f64,
   * by `nllOf`). Leaves the window in the cache (position = ids.length).
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10, max_position_embeddings: 8,
   * }));
   * using engine = DecodeEngine.create(model);
   * const nll = await engine.nll(new Int32Array([1, 2, 3]));
   * console.assert(nll.length === 2 && nll[0] > 0);
   * ```
   */
  async nll(ids: Int32Array): Promise<Float32Array> {
    if (ids.length < 2) throw new Error("nll: needs at least 2 tokens");
    this.reset();
    const s = this.#begin(ids);
    const T = ids.length;
    const vocab = this.model.config.vocabSize;
    if (!this.#allLogits || this.#allLogits.shape[0] < T) {
      this.#allLogits?.dispose();
      this.#allLogits = undefined;
      this.#allLogits = Tensor.empty([T, vocab], "f32", this.device);
    }
    await this.#layersFor(s, T);
    await this.#headRows(s, 0, T, this.#allLogits.pointer());
    this.#position = T;
    if (this.device === "cpu") {
      return await nllOf(this.#allLogits.data() as Float32Array, ids.subarray(1), vocab);
    }
    // On the GPU only one float per token comes back, not T x vocab logits.
    using targets = Tensor.from(ids.slice(1), [T - 1]).to(this.device);
    using nll = Tensor.empty([T - 1], "f32", this.device);
    await checkAsync(
      native().fp4_nll(
        this.#dev,
        this.#allLogits.pointer(),
        targets.pointer(),
        nll.pointer(),
        BigInt(T - 1),
        BigInt(vocab),
      ),
      "fp4_nll",
      [this.#allLogits, targets, nll],
    );
    return nll.toArray() as Float32Array;
  }

  /**
   * The embeddings of `ids` as a new `[ids.length, hidden]` f32 tensor on the engine's device
   * (the caller disposes it): the residual stream that enters block 0, for
   * {@linkcode runBlock}.
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10,
   * }));
   * using engine = DecodeEngine.create(model, { contextLength: 8 });
   * using h = engine.embed(new Int32Array([1, 2, 3]));
   * console.assert(h.shape[0] === 3 && h.shape[1] === 16);
   * ```
   */
  embed(ids: Int32Array): Tensor {
    this.#live();
    const c = this.model.config;
    if (ids.length === 0) throw new Error("embed: no tokens");
    for (let i = 0; i < ids.length; i++) {
      if (!(ids[i] >= 0 && ids[i] < c.vocabSize)) {
        throw new Error(`embed: token id ${ids[i]} at index ${i} is outside [0, ${c.vocabSize})`);
      }
    }
    const host = Tensor.from(ids, [ids.length]);
    const dev = host.to(this.device);
    const out = Tensor.empty([ids.length, c.hiddenSize], "f32", this.device);
    try {
      this.#embedRows(dev.pointer(), out.pointer(), ids.length);
      this.synchronize();
    } catch (e) {
      out.dispose();
      throw e;
    } finally {
      if (dev !== host) dev.dispose();
    }
    return out;
  }

  /**
   * Runs decoder block `layer` on the residual stream `hidden` (`[tokens, hidden]` f32 on the
   * engine's device, tokens at positions 0, 1, ...) in place, with the block's current weights
   * and input schemes: the block-by-block forward pass of sequential quantization. `onInput`
   * receives the inputs of its linear layers (see {@linkcode BlockInputHook}). The block's KV
   * cache then holds these tokens: the engine is reset (position 0).
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10,
   * }));
   * using engine = DecodeEngine.create(model, { contextLength: 8 });
   * using h = engine.embed(new Int32Array([1, 2, 3]));
   * const seen: string[] = [];
   * await engine.runBlock(0, h, (name) => { seen.push(name); });
   * console.assert(seen.length === 4 && seen[3] === "model.layers.0.mlp.down_proj");
   * ```
   */
  async runBlock(layer: number, hidden: Tensor, onInput?: BlockInputHook): Promise<void> {
    this.#live();
    const c = this.model.config;
    if (!Number.isInteger(layer) || layer < 0 || layer >= c.numLayers) {
      throw new Error(`runBlock: block ${layer} is outside [0, ${c.numLayers})`);
    }
    const [T, dim] = hidden.shape;
    if (
      hidden.device !== this.device || hidden.dtype !== "f32" || hidden.shape.length !== 2 ||
      dim !== c.hiddenSize || !(T >= 1 && T <= this.contextLength)
    ) {
      throw new Error(
        `runBlock: the residual stream must be [1..${this.contextLength}, ${c.hiddenSize}] f32 ` +
          `on ${this.device}, got [${hidden.shape.join(", ")}] ${hidden.dtype} on ${hidden.device}`,
      );
    }
    const s = this.#scratchFor(T);
    this.#position = 0;
    this.#copyIn(this.#pos, new Int32Array([0]));
    await this.#layer(this.#layers[layer], hidden.pointer(), s, T, onInput);
  }

  /**
   * Replaces the weights of decoder linear layer `name` (e.g. `model.layers.0.mlp.up_proj`) by
   * the dense `weight` (same shape; f32 keeps dequantized values exact) or FP4 weights (run by
   * the W4A16 kernels; engines with bf16 activations, i.e. CUDA or FP4 ones) with input `scheme`
   * (rotation, activation quantization; none when omitted), freeing the weights it held. An
   * input scheme turns CUDA graphs off for the engine's life.
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10,
   * }));
   * using engine = DecodeEngine.create(model, { contextLength: 8 });
   * engine.setLinear("model.layers.0.mlp.up_proj", {
   *   dtype: "f32", shape: [24, 16], data: new Float32Array(24 * 16),
   * });
   * ```
   */
  setLinear(name: string, weight: Weight | Fp4Weights, scheme?: InputScheme): void {
    this.#live();
    const m = /^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj$/.exec(name);
    const L = m ? this.#layers[Number(m[1])] : undefined;
    if (!m || !L) {
      throw new Error(`setLinear: "${name}" is not a decoder linear layer of the model`);
    }
    const key = m[2] as "q" | "k" | "v" | "o" | "gate" | "up" | "down";
    for (const g of ["qkv", "gateUp"] as const) {
      if (L[g]?.members.includes(L[key])) {
        this.#unfuse(L[g]!);
        L[g] = undefined;
      }
    }
    const old = L[key];
    const fp4 = "format" in weight;
    const [out, inF] = fp4 ? [weight.n, weight.k] : weight.shape;
    if ((!fp4 && weight.shape.length !== 2) || out !== old.out || inF !== old.in) {
      throw new Error(
        `setLinear: "${name}" needs a [${old.out}, ${old.in}] weight, got [${
          fp4 ? [weight.n, weight.k] : weight.shape.join(", ")
        }]`,
      );
    }
    if (fp4 && this.activationDtype !== "bf16") {
      throw new Error("setLinear: FP4 weights need an engine with bf16 activations");
    }
    const next = fp4 ? this.#fp4Linear(name, weight, scheme) : {
      kind: "dense" as const,
      name,
      w: this.device === "cpu"
        ? weightTensor(weight, "cpu")
        : this.#own(weightTensor(weight, this.device)),
      at: 0,
      out,
      in: inF,
      scheme,
    };
    for (const t of old.kind === "dense" ? [old.w] : [old.codes, old.scales]) {
      const i = this.#owned.indexOf(t);
      if (i >= 0) this.#owned.splice(i, 1)[0].dispose();
    }
    L[key] = next;
    this.#dropGraph();
    if (scheme && (scheme.rotation || scheme.act)) this.#graphs = false;
  }

  /** FP4 weights of linear `name` as the engine keeps them: on its device, format as the ABI code. */
  #fp4Linear(name: string, q: Fp4Weights, scheme: InputScheme | undefined): Fp4Linear {
    const place = (t: Tensor) => t.device === this.device ? t : this.#own(t.to(this.device));
    return {
      kind: "fp4",
      name,
      codes: place(q.codes),
      scales: place(q.scales),
      at: 0,
      format: q.format === "mxfp4" ? 0 : 1,
      tensorScale: q.tensorScale ?? 1,
      out: q.n,
      in: q.k,
      scheme,
    };
  }

  /** Rows x cols of the activation buffer `x` widened to f32, in a buffer kept per shape. */
  #capture(x: Deno.PointerValue, rows: number, cols: number): Tensor {
    const key = `${rows}x${cols}`;
    let t = this.#captures.get(key);
    if (!t) {
      t = Tensor.empty([rows, cols], "f32", this.device);
      this.#captures.set(key, t);
    }
    check(
      native().fp4_cast(
        this.#dev,
        x,
        abiDType(this.activationDtype),
        t.pointer(),
        abiDType("f32"),
        BigInt(rows * cols),
      ),
      "fp4_cast",
    );
    return t;
  }

  /**
   * Embedding and every layer for the T tokens of the scratch, leaving the residual stream in
   * s.hidden. Each layer's closing residual add also computes the next layer's input norm.
   */
  async #layersFor(s: Scratch, T: number): Promise<void> {
    this.#embedRows(s.ids.pointer(), s.hidden.pointer(), T);
    const layers = this.#layers;
    for (let l = 0; l < layers.length; l++) {
      await this.#layer(layers[l], s.hidden.pointer(), s, T, undefined, {
        normed: l > 0,
        nextNorm: layers[l + 1]?.inputNorm,
      });
    }
  }

  /** Embedding rows of `T` device ids into the f32 residual stream `hidden`. */
  #embedRows(ids: Deno.PointerValue, hidden: Deno.PointerValue, T: number): void {
    const c = this.model.config;
    check(
      native().fp4_dec_embedding(
        this.#dev,
        ids,
        this.#embed.pointer(),
        abiDType(this.#embed.dtype),
        hidden,
        BigInt(T),
        BigInt(c.vocabSize),
        BigInt(c.hiddenSize),
      ),
      "fp4_dec_embedding",
    );
  }

  /**
   * One decoder layer for the T tokens of the scratch at the positions #pos starts, on the
   * residual stream `hidden` ([T, dim] f32) in place. `onInput` sees the inputs of the layer's
   * q (shared by k and v), o, gate (shared by up) and down projections before any input scheme.
   * Each residual add runs fused with the norm after it: `fuse.normed` says s.x already holds
   * this layer's input norm (the previous layer's closing add computed it), and
   * `fuse.nextNorm` makes the closing add compute the next layer's.
   */
  async #layer(
    L: LayerWeights,
    hidden: Deno.PointerValue,
    s: Scratch,
    T: number,
    onInput?: BlockInputHook,
    fuse: { normed: boolean; nextNorm?: Tensor } = { normed: false },
  ): Promise<void> {
    const c = this.model.config;
    const lib = native();
    const dev = this.#dev;
    const act = this.activationDtype, A = abiDType(act), C = abiDType(this.cacheDtype);
    const TT = BigInt(T), ctx = BigInt(this.contextLength);
    const dim = c.hiddenSize, eps = c.rmsNormEps;
    const pos = this.#pos.pointer();
    const wd = (t: Tensor) => abiDType(t.dtype);
    const seen = async (lw: LinearWeights, x: Deno.PointerValue) => {
      if (onInput) await onInput(lw.name, this.#capture(x, T, lw.in));
    };
    const x = s.x.pointer();
    const bytes = act === "f32" ? 4 : 2;
    // A single-token step reads q, k, v (gate, up) where the fused product left them.
    const qkv = T === 1 ? L.qkv : undefined, gateUp = T === 1 ? L.gateUp : undefined;
    const q = qkv ? s.qkv.pointer() : s.q.pointer();
    const k = qkv ? offset(s.qkv, L.q.out * bytes) : s.k.pointer();
    const v = qkv ? offset(s.qkv, (L.q.out + L.k.out) * bytes) : s.v.pointer();
    const gate = gateUp ? s.gateUp.pointer() : s.gate.pointer();
    const up = gateUp ? offset(s.gateUp, L.gate.out * bytes) : s.up.pointer();
    // hidden += s.proj, then s.x = norm(hidden): a residual add and the norm after it.
    const addNorm = (norm: Tensor) =>
      check(
        lib.fp4_dec_add_rmsnorm(
          dev,
          hidden,
          s.proj.pointer(),
          A,
          norm.pointer(),
          wd(norm),
          x,
          A,
          TT,
          BigInt(dim),
          eps,
        ),
        "fp4_dec_add_rmsnorm",
      );
    if (!fuse.normed) {
      check(
        lib.fp4_dec_rmsnorm(
          dev,
          hidden,
          L.inputNorm.pointer(),
          wd(L.inputNorm),
          x,
          A,
          TT,
          BigInt(dim),
          eps,
        ),
        "fp4_dec_rmsnorm",
      );
    }
    await seen(L.q, x);
    const hd = BigInt(c.headDim);
    const kc = L.kCache.pointer(), vc = L.vCache.pointer();
    const qkvEpi = this.#epilogueOf(qkv);
    if (qkvEpi) {
      check(
        lib.fp4_dec_qkv_rope_kv_store(
          dev,
          qkvEpi.format,
          x,
          qkvEpi.codes.pointer(),
          qkvEpi.scales.pointer(),
          qkv!.tensorScales,
          q,
          this.#cos.pointer(),
          this.#sin.pointer(),
          pos,
          ctx,
          BigInt(c.numHeads),
          BigInt(c.numKvHeads),
          hd,
          BigInt(qkvEpi.in),
          kc,
          vc,
          C,
        ),
        "fp4_dec_qkv_rope_kv_store",
      );
    } else {
      if (qkv) await this.#fusedLinear(qkv, x, act, q);
      else await this.#sameInput([L.q, L.k, L.v], x, act, [q, k, v], act, T);
      check(
        lib.fp4_dec_rope_kv_store(
          dev,
          q,
          k,
          v,
          A,
          this.#cos.pointer(),
          this.#sin.pointer(),
          pos,
          ctx,
          TT,
          BigInt(c.numHeads),
          BigInt(c.numKvHeads),
          hd,
          kc,
          vc,
          C,
        ),
        "fp4_dec_rope_kv_store",
      );
    }
    check(
      lib.fp4_dec_attention(
        dev,
        q,
        A,
        kc,
        vc,
        C,
        s.att.pointer(),
        A,
        pos,
        ctx,
        TT,
        BigInt(c.numHeads),
        BigInt(c.numKvHeads),
        hd,
        1 / Math.sqrt(c.headDim),
      ),
      "fp4_dec_attention",
    );
    await seen(L.o, s.att.pointer());
    if (!this.#addNormed(L.o, s.att.pointer(), hidden, L.postNorm, s, T)) {
      await this.#linear(L.o, s.att.pointer(), act, s.proj.pointer(), act, T);
      addNorm(L.postNorm);
    }
    await seen(L.gate, x);
    const gateUpEpi = this.#epilogueOf(gateUp);
    if (gateUpEpi) {
      check(
        lib.fp4_dec_gate_up_silu(
          dev,
          gateUpEpi.format,
          x,
          gateUpEpi.codes.pointer(),
          gateUpEpi.scales.pointer(),
          gateUp!.tensorScales,
          gate,
          BigInt(L.gate.out),
          BigInt(gateUpEpi.in),
        ),
        "fp4_dec_gate_up_silu",
      );
    } else {
      if (gateUp) await this.#fusedLinear(gateUp, x, act, gate);
      else await this.#sameInput([L.gate, L.up], x, act, [gate, up], act, T);
      check(
        lib.fp4_dec_silu_mul(dev, gate, up, gate, A, BigInt(T * c.intermediateSize)),
        "fp4_dec_silu_mul",
      );
    }
    await seen(L.down, gate);
    if (fuse.nextNorm && this.#addNormed(L.down, gate, hidden, fuse.nextNorm, s, T)) return;
    await this.#linear(L.down, gate, act, s.proj.pointer(), act, T);
    if (fuse.nextNorm) {
      addNorm(fuse.nextNorm);
    } else {
      check(lib.fp4_dec_add(dev, hidden, s.proj.pointer(), A, BigInt(T * dim)), "fp4_dec_add");
    }
  }

  /**
   * The logits `[vocab]` (f32) of the last token run, copied to the host.
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10, max_position_embeddings: 8,
   * }));
   * using engine = DecodeEngine.create(model);
   * await engine.forward(new Int32Array([3]));
   * console.assert(engine.logits().every(Number.isFinite));
   * ```
   */
  logits(): Float32Array {
    const s = this.#ready();
    if (this.device === "cpu") return (s.logits.data() as Float32Array).slice();
    const out = new Float32Array(this.model.config.vocabSize);
    check(
      native().fp4_memcpy(
        this.#dev,
        Deno.UnsafePointer.of(out),
        s.logits.pointer(),
        BigInt(out.byteLength),
        D2H,
      ),
      "fp4_memcpy",
    );
    return out;
  }

  /**
   * The greedy next token: the index of the largest logit of the last token run (the first
   * on ties), computed on the device so that only 4 bytes come back.
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10, max_position_embeddings: 8,
   * }));
   * using engine = DecodeEngine.create(model);
   * await engine.forward(new Int32Array([3]));
   * const l = engine.logits();
   * console.assert(l[engine.argmax()] === Math.max(...l));
   * ```
   */
  argmax(): number {
    const s = this.#ready();
    const lib = native();
    check(
      lib.fp4_dec_argmax(
        this.#dev,
        s.logits.pointer(),
        1n,
        BigInt(this.model.config.vocabSize),
        s.last.pointer(),
      ),
      "fp4_dec_argmax",
    );
    if (this.device === "cpu") return (s.last.data() as Int32Array)[0];
    const out = new Int32Array(1);
    check(
      lib.fp4_memcpy(this.#dev, Deno.UnsafePointer.of(out), s.last.pointer(), 4n, D2H),
      "fp4_memcpy",
    );
    return out[0];
  }

  /**
   * Waits for the device's queued work (a no-op on the CPU); for timing.
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10, max_position_embeddings: 8,
   * }));
   * using engine = DecodeEngine.create(model);
   * engine.synchronize();
   * ```
   */
  synchronize(): void {
    if (this.device !== "cpu") check(native().fp4_synchronize(this.#dev), "fp4_synchronize");
  }

  #ready(): Scratch {
    this.#live();
    if (!this.#scratch || this.#position === 0) {
      throw new Error("no logits yet: run forward() first");
    }
    return this.#scratch;
  }

  #live(): void {
    if (this.#disposed) throw new Error("DecodeEngine used after dispose()");
  }

  /**
   * Frees the device memory (weights copies, cache, scratch).
   *
   * @example
   * ```ts
   * import { DecodeEngine } from "./engine.ts";
   * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
   * const model = LlamaModel.random(parseLlamaConfig({
   *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
   *   num_attention_heads: 2, vocab_size: 10,
   * }));
   * const engine = DecodeEngine.create(model, { contextLength: 4 });
   * engine.dispose();
   * ```
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#dropGraph();
    for (const b of this.#schemeBuffers.values()) this.#freeSchemeBuffers(b);
    this.#schemeBuffers.clear();
    this.#allLogits?.dispose();
    for (const t of this.#captures.values()) t.dispose();
    this.#captures.clear();
    for (const t of this.#owned) t.dispose();
    if (this.#scratch) {
      for (const t of Object.values(this.#scratch)) if (t instanceof Tensor) t.dispose();
    }
    this.#owned = [];
    this.#scratch = undefined;
  }

  /** Same as {@linkcode dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * RoPE tables `[positions, head_dim / 2]` as lib/model's forward pass forms them: the angle
 * `fround(position * inv_freq)` in f32, its cos and sin rounded to f32.
 *
 * @example
 * ```ts
 * import { ropeTables } from "./engine.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 10,
 * }));
 * const { cos } = ropeTables(model, 3);
 * console.assert(cos.length === 3 * 4 && cos[0] === 1);
 * ```
 */
export function ropeTables(
  model: LlamaModel,
  positions: number,
): { cos: Float32Array; sin: Float32Array } {
  const half = model.config.headDim / 2;
  const inv = ropeInvFreq(model.config.rope, model.config.headDim);
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  for (let t = 0; t < positions; t++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(t * inv[i]);
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
