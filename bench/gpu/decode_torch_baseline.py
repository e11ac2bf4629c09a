#!/usr/bin/env python3
"""PyTorch/transformers BF16 decoding, the reference point of bench/gpu/decode_bench.ts.

A LlamaForCausalLM of Llama-3-8B shapes (the same config as the Deno bench) with random BF16
weights on the GPU, batch 1: `generate` with greedy decoding of a 16-token prompt for exactly
`--tokens` new tokens (default dynamic KV cache, eager mode), once to warm up, then timed.
Writes one JSON object to --out (and stdout):
  {"torch", "transformers", "device", "layers", "decode_tokens", "seconds", "tokens_per_s",
   "peak_gib"}
"""
import argparse
import json
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=args.layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.eval()
    prompt = torch.arange(16, device="cuda").mul(7919).remainder(cfg.vocab_size).unsqueeze(0)

    def run(n):
        with torch.no_grad():
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 attention_mask=torch.ones_like(prompt), pad_token_id=0)
            torch.cuda.synchronize()
            assert out.shape[1] == prompt.shape[1] + n
            return time.perf_counter() - t

    run(8)
    torch.cuda.reset_peak_memory_stats()
    seconds = run(args.tokens)
    result = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(),
        "layers": args.layers,
        "decode_tokens": args.tokens,
        "seconds": seconds,
        "tokens_per_s": args.tokens / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
