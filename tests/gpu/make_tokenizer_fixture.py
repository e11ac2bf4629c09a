"""Writes the tokenizer fixture: token ids that Python's `tokenizers` (the Rust library
Hugging Face uses) gives for a model's tokenizer.json, without special tokens.

Usage (from the repository root, where the `tokenizers` package is installed):
    python3 tests/gpu/make_tokenizer_fixture.py MODEL_DIR [OUT_DIR]
MODEL_DIR is the brown-llama-29m folder; OUT_DIR defaults to tests/fixtures/model. Writes
OUT_DIR/tokenizer_brown-llama-29m.json with:
    strings        a few hand-picked strings (whitespace runs, digits, Unicode, special-token
                   text) and their ids
    valid_prefix   the first PREFIX_CHARS characters of valid.txt (the text itself, since JS
                   counts characters differently) and their ids
    valid_full     count and SHA-256 of the ids of the whole valid.txt (int32 little-endian),
                   so the test checks the full evaluation tokenization without storing it
tests/model_tokenizer_test.ts compares lib/model/tokenizer.ts against every entry.
"""
import hashlib
import json
import os
import struct
import sys

import tokenizers
from tokenizers import Tokenizer

PREFIX_CHARS = 20000

STRINGS = [
    "The jury further said in term-end presentments that the City Executive Committee",
    "Hello world, it's  a test.\n\nNew paragraph\tand a tab;   three spaces.",
    "Numbers: 1234567 3.14159 -42 1,000,000 and 2026-11-22!",
    "Unicode: café naïve façade — “quoted” 日本語 😀 ñ",
    "<|bos|>special<|eos|> tokens in text",
    "   leading spaces and trailing   ",
    "don't won't I'm you're we've they'll she'd",
    "",
]


def ids_of(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    model_dir = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "..", "fixtures", "model")
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    with open(os.path.join(model_dir, "valid.txt"), encoding="utf-8") as f:
        valid = f.read()
    full = ids_of(tok, valid)
    digest = hashlib.sha256(struct.pack(f"<{len(full)}i", *full)).hexdigest()
    prefix = valid[:PREFIX_CHARS]
    fixture = {
        "made_by": "tests/gpu/make_tokenizer_fixture.py",
        "tokenizers_version": tokenizers.__version__,
        "model": "brown-llama-29m",
        "strings": [{"text": s, "ids": ids_of(tok, s)} for s in STRINGS],
        "valid_prefix": {"chars": PREFIX_CHARS, "text": prefix, "ids": ids_of(tok, prefix)},
        "valid_full": {"count": len(full), "sha256": digest},
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer_brown-llama-29m.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False)
    print(f"wrote {path}: valid.txt -> {len(full)} tokens, sha256 {digest}")


if __name__ == "__main__":
    main()
