"""Writes the forward-pass fixture: logits and next-token NLLs that transformers computes in
float32 for brown-llama-29m on a few prompts, for tests/model_logits_test.ts.

Usage (from the repository root, where torch, transformers and tokenizers are installed):
    python3 tests/gpu/make_logits_fixture.py MODEL_DIR [OUT_DIR] [--device cpu|cuda]
MODEL_DIR is the brown-llama-29m folder; OUT_DIR defaults to tests/fixtures/model; the device
defaults to cpu (on cuda, TF32 is switched off so the products stay float32). Writes
OUT_DIR/logits_brown-llama-29m.safetensors (about 1 MB) holding, per prompt i:
    prompt{i}.ids        I32 [T]      the token ids (tokenizer.json, no special tokens)
    prompt{i}.positions  I32 [P]      the positions whose logits are kept
    prompt{i}.logits     F32 [P, V]   logits at those positions
    prompt{i}.nll        F32 [T - 1]  -log p(ids[t + 1] | ids[..t]) (cross entropy, float32)
and in the metadata: versions, device, the number of prompts, and the perplexity of the
first PPL_WINDOWS windows of valid.txt under the protocol of DESIGN.md.
"""
import argparse
import math
import os

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

WINDOW = 512
PPL_WINDOWS = 4
SHORT_PROMPTS = [
    "The jury further said in term-end presentments that the City Executive Committee",
    "It was a cold day in the city, and the men of the village walked home.",
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("out_dir", nargs="?", default=os.path.join(here, "..", "fixtures", "model"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    model_dir, out_dir, device = args.model_dir, args.out_dir, args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_grad_enabled(False)

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).to(device).eval()
    with open(os.path.join(model_dir, "valid.txt"), encoding="utf-8") as f:
        valid_ids = tok.encode(f.read(), add_special_tokens=False).ids

    def run(ids):
        x = torch.tensor([ids], dtype=torch.long, device=device)
        logits = model(input_ids=x).logits[0].float()
        nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none")
        return logits.cpu(), nll.cpu()

    prompts = [tok.encode(p, add_special_tokens=False).ids for p in SHORT_PROMPTS]
    prompts.append(valid_ids[:WINDOW])
    tensors = {}
    for i, ids in enumerate(prompts):
        logits, nll = run(ids)
        t = len(ids)
        positions = list(range(t)) if t <= 32 else [0, 1, 2, t // 2, t - 2, t - 1]
        tensors[f"prompt{i}.ids"] = torch.tensor(ids, dtype=torch.int32)
        tensors[f"prompt{i}.positions"] = torch.tensor(positions, dtype=torch.int32)
        tensors[f"prompt{i}.logits"] = logits[positions].contiguous()
        tensors[f"prompt{i}.nll"] = nll.contiguous()

    total, count = 0.0, 0
    for w in range(min(PPL_WINDOWS, len(valid_ids) // WINDOW)):
        _, nll = run(valid_ids[w * WINDOW:(w + 1) * WINDOW])
        total += nll.double().sum().item()
        count += nll.numel()
    ppl = math.exp(total / count)

    metadata = {
        "made_by": "tests/gpu/make_logits_fixture.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": device,
        "dtype": "float32",
        "prompts": str(len(prompts)),
        "ppl_windows": str(PPL_WINDOWS),
        "ppl": repr(ppl),
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "logits_brown-llama-29m.safetensors")
    save_file(tensors, path, metadata=metadata)
    print(f"wrote {path} ({os.path.getsize(path)} bytes); ppl of the first {PPL_WINDOWS} windows {ppl:.4f}")


if __name__ == "__main__":
    main()
