#!/usr/bin/env python3
"""Golden vectors for the number formats, from ml_dtypes and PyTorch.

Writes tests/fixtures/formats/ (relative to the repository root, or to --out):

- ``<lib>_<target>_from_<inputs>.u8``: for every 16-bit pattern i of ``inputs`` (``bf16`` or
  ``f16``), widened exactly to float32, the byte of ``<lib>``'s cast of that float32 value to
  ``<target>`` (65536 bytes, index = pattern). FP4 codes are in the low nibble.
- ``<lib>_<target>_decode.f32``: the float32 value of every code of ``<target>`` (16 or 256
  little-endian float32s).
- ``manifest.json``: library versions, the files written, and the casts that were not available
  (with the error text).

Run on a machine with numpy, ml_dtypes and torch (the GPU machine):

    python3 tests/gpu/make_format_goldens.py

tests/formats_golden_test.ts reads the fixtures and compares our encoders with them.
"""

import argparse
import json
import os
import sys

import numpy as np

TARGETS = ["float4_e2m1fn", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"]
CODES = {"float4_e2m1fn": 16, "float8_e4m3fn": 256, "float8_e5m2": 256, "float8_e8m0fnu": 256}


def inputs():
    pats = np.arange(65536, dtype=np.uint32)
    bf16 = (pats << 16).astype(np.uint32).view(np.float32)
    f16 = pats.astype(np.uint16).view(np.float16).astype(np.float32)
    return {"bf16": bf16, "f16": f16}


def ml_dtypes_cast(x, target):
    import ml_dtypes

    dt = getattr(ml_dtypes, target)
    return x.astype(dt).view(np.uint8)


def ml_dtypes_decode(target):
    import ml_dtypes

    dt = getattr(ml_dtypes, target)
    return np.arange(CODES[target], dtype=np.uint8).view(dt).astype(np.float32)


def torch_cast(x, target):
    import torch

    dt = getattr(torch, target)
    t = torch.from_numpy(x.copy())
    return t.to(dt).view(torch.uint8).numpy()


def torch_cast_cuda(x, target):
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    dt = getattr(torch, target)
    t = torch.from_numpy(x.copy()).cuda()
    return t.to(dt).view(torch.uint8).cpu().numpy()


def torch_decode(target):
    import torch

    dt = getattr(torch, target)
    codes = torch.arange(CODES[target], dtype=torch.uint8)
    return codes.view(dt).to(torch.float32).numpy()


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "formats"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    versions = {"python": sys.version.split()[0], "numpy": np.__version__}
    casts = {}
    decoders = {}
    try:
        import ml_dtypes

        versions["ml_dtypes"] = ml_dtypes.__version__
        casts["ml_dtypes"] = ml_dtypes_cast
        decoders["ml_dtypes"] = ml_dtypes_decode
    except ImportError as e:
        versions["ml_dtypes"] = f"unavailable: {e}"
    try:
        import torch

        versions["torch"] = torch.__version__
        casts["torch"] = torch_cast
        casts["torch_cuda"] = torch_cast_cuda
        decoders["torch"] = torch_decode
    except ImportError as e:
        versions["torch"] = f"unavailable: {e}"
    if "ml_dtypes" not in casts:
        sys.exit("ml_dtypes is required (pip install ml_dtypes)")

    files = []
    missing = {}
    for lib, cast in casts.items():
        for target in TARGETS:
            for name, x in inputs().items():
                key = f"{lib}_{target}_from_{name}"
                try:
                    codes = np.asarray(cast(x, target), dtype=np.uint8)
                    assert codes.shape == (65536,), codes.shape
                except Exception as e:  # a cast the library does not implement
                    missing[key] = f"{type(e).__name__}: {e}"
                    continue
                codes.tofile(os.path.join(args.out, key + ".u8"))
                files.append({"file": key + ".u8", "lib": lib, "target": target, "inputs": name,
                              "kind": "codes"})
    for lib, dec in decoders.items():
        for target in TARGETS:
            key = f"{lib}_{target}_decode"
            try:
                vals = np.asarray(dec(target), dtype="<f4")
            except Exception as e:
                missing[key] = f"{type(e).__name__}: {e}"
                continue
            vals.tofile(os.path.join(args.out, key + ".f32"))
            files.append({"file": key + ".f32", "lib": lib, "target": target, "kind": "decode"})

    manifest = {"versions": versions, "files": files, "unavailable": missing}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(files)} fixtures to {args.out}; unavailable: {sorted(missing)}")


if __name__ == "__main__":
    main()
