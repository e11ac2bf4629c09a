"""Checks that Python `safetensors` reads the file fp4lab wrote, exactly.

Usage (from the repository root, where torch and safetensors are installed):
    python3 tests/gpu/check_safetensors_interop.py [FILE]
FILE defaults to tests/fixtures/safetensors/written_by_fp4lab.safetensors (written by
`deno run -A tests/safetensors_fixtures.ts`). Prints PASS, or FAIL with the reasons and exits 1.
"""
import os
import sys

import torch
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_fixture_specs import FP4LAB_METADATA, SPECS, TORCH_DTYPE, expected  # noqa: E402


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "fixtures", "safetensors", "written_by_fp4lab.safetensors")
    path = sys.argv[1] if len(sys.argv) > 1 else default
    problems = []
    with safe_open(path, framework="pt") as f:
        if f.metadata() != FP4LAB_METADATA:
            problems.append(f"metadata {f.metadata()!r} != {FP4LAB_METADATA!r}")
        keys = set(f.keys())
        if keys != set(SPECS):
            problems.append(f"tensor names {sorted(keys)} != {sorted(SPECS)}")
        for name in sorted(keys & set(SPECS)):
            got = f.get_tensor(name)
            want = expected(name)
            if got.dtype != TORCH_DTYPE[SPECS[name][0]] or list(got.shape) != list(want.shape):
                problems.append(f"{name}: {got.dtype} {list(got.shape)} != {want.dtype} {list(want.shape)}")
                continue
            # Compare bytes: exact, and meaningful for float8 and NaN-free floats alike.
            if got.numel() and not torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)):
                problems.append(f"{name}: values differ: {got.flatten().tolist()} != {want.flatten().tolist()}")
    if problems:
        print("FAIL " + path)
        for p in problems:
            print("  " + p)
        sys.exit(1)
    print(f"PASS {path}: {len(SPECS)} tensors and metadata match")


if __name__ == "__main__":
    main()
