// A float64 Llama forward pass written from the transformers modeling code's definition, as
// simply as possible (no blocking, no native calls): the yardstick the native forward is
// checked against on small random models.
import { bf16ToF32 } from "../lib/dtype.ts";
import { type LlamaModel, ropeInvFreq, type Weight } from "../mod.ts";

function f64(w: Weight): Float64Array {
  const out = new Float64Array(w.data.length);
  for (let i = 0; i < out.length; i++) {
    out[i] = w.dtype === "bf16" ? bf16ToF32(w.data[i]) : w.data[i];
  }
  return out;
}

// y[t, o] = sum_i x[t, i] w[o, i]
function linear(x: Float64Array, w: Float64Array, rows: number, out: number, inF: number) {
  const y = new Float64Array(rows * out);
  for (let t = 0; t < rows; t++) {
    for (let o = 0; o < out; o++) {
      let s = 0;
      for (let i = 0; i < inF; i++) s += x[t * inF + i] * w[o * inF + i];
      y[t * out + o] = s;
    }
  }
  return y;
}

function rmsnorm(x: Float64Array, w: Float64Array, rows: number, dim: number, eps: number) {
  const y = new Float64Array(x.length);
  for (let t = 0; t < rows; t++) {
    let ss = 0;
    for (let d = 0; d < dim; d++) ss += x[t * dim + d] ** 2;
    const inv = 1 / Math.sqrt(ss / dim + eps);
    for (let d = 0; d < dim; d++) y[t * dim + d] = w[d] * x[t * dim + d] * inv;
  }
  return y;
}

// rotate_half pairing: element i turns with element i + head_dim / 2.
function rope(x: Float64Array, tokens: number, heads: number, hd: number, inv: Float32Array) {
  const half = hd / 2;
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < heads; h++) {
      const o = (t * heads + h) * hd;
      for (let i = 0; i < half; i++) {
        const a = x[o + i], b = x[o + i + half];
        const c = Math.cos(t * inv[i]), s = Math.sin(t * inv[i]);
        x[o + i] = a * c - b * s;
        x[o + i + half] = b * c + a * s;
      }
    }
  }
}

/** Logits [tokens, vocab] in float64. */
export function referenceLogits(model: LlamaModel, ids: Int32Array): Float64Array {
  const c = model.config;
  const T = ids.length, H = c.hiddenSize, hd = c.headDim;
  const nq = c.numHeads, nkv = c.numKvHeads, M = c.intermediateSize;
  const W = (n: string) => f64(model.weight(n));
  const emb = W("model.embed_tokens.weight");
  let h = new Float64Array(T * H);
  for (let t = 0; t < T; t++) h.set(emb.subarray(ids[t] * H, (ids[t] + 1) * H), t * H);
  const inv = ropeInvFreq(c.rope, hd);
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    const x = rmsnorm(h, W(`${p}.input_layernorm.weight`), T, H, c.rmsNormEps);
    const q = linear(x, W(`${p}.self_attn.q_proj.weight`), T, nq * hd, H);
    const k = linear(x, W(`${p}.self_attn.k_proj.weight`), T, nkv * hd, H);
    const v = linear(x, W(`${p}.self_attn.v_proj.weight`), T, nkv * hd, H);
    rope(q, T, nq, hd, inv);
    rope(k, T, nkv, hd, inv);
    const att = new Float64Array(T * nq * hd);
    for (let head = 0; head < nq; head++) {
      const kh = Math.floor(head / (nq / nkv));
      for (let t = 0; t < T; t++) {
        const scores: number[] = [];
        for (let s = 0; s <= t; s++) {
          let dot = 0;
          for (let d = 0; d < hd; d++) {
            dot += q[(t * nq + head) * hd + d] * k[(s * nkv + kh) * hd + d];
          }
          scores.push(dot / Math.sqrt(hd));
        }
        const mx = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - mx));
        const z = e.reduce((a, b) => a + b, 0);
        for (let s = 0; s <= t; s++) {
          for (let d = 0; d < hd; d++) {
            att[(t * nq + head) * hd + d] += (e[s] / z) * v[(s * nkv + kh) * hd + d];
          }
        }
      }
    }
    const o = linear(att, W(`${p}.self_attn.o_proj.weight`), T, H, nq * hd);
    h = h.map((a, i) => a + o[i]);
    const x2 = rmsnorm(h, W(`${p}.post_attention_layernorm.weight`), T, H, c.rmsNormEps);
    const g = linear(x2, W(`${p}.mlp.gate_proj.weight`), T, M, H);
    const u = linear(x2, W(`${p}.mlp.up_proj.weight`), T, M, H);
    const a = g.map((gi, i) => (gi / (1 + Math.exp(-gi))) * u[i]);
    const d = linear(a, W(`${p}.mlp.down_proj.weight`), T, H, M);
    h = h.map((v, i) => v + d[i]);
  }
  const xn = rmsnorm(h, W("model.norm.weight"), T, H, c.rmsNormEps);
  return linear(xn, W("lm_head.weight"), T, c.vocabSize, H);
}

/** Largest |a - b| over all elements, divided by the largest |b|. */
export function relativeMaxError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let err = 0, scale = 0;
  for (let i = 0; i < b.length; i++) {
    err = Math.max(err, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return err / scale;
}
