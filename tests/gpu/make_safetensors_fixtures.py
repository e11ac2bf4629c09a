"""Writes the safetensors interoperability fixtures with the Python `safetensors` library.

Usage (from the repository root, where torch and safetensors are installed):
    python3 tests/gpu/make_safetensors_fixtures.py [OUT_DIR]
OUT_DIR defaults to tests/fixtures/safetensors. Writes:
    OUT_DIR/python_all_dtypes.safetensors    every fixture tensor, with PYTHON_METADATA
    OUT_DIR/python_sharded/                  a two-shard checkpoint with its index
tests/safetensors_test.ts reads them back and checks every byte against the same table.
"""
import json
import os
import sys

import safetensors
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_fixture_specs import PYTHON_METADATA, PYTHON_SHARDS, SPECS, expected  # noqa: E402


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "fixtures", "safetensors")
    os.makedirs(out, exist_ok=True)
    tensors = {name: expected(name) for name in SPECS}
    path = os.path.join(out, "python_all_dtypes.safetensors")
    save_file(tensors, path, metadata=PYTHON_METADATA)
    print(f"wrote {path} (safetensors {safetensors.__version__})")

    sharded = os.path.join(out, "python_sharded")
    os.makedirs(sharded, exist_ok=True)
    weight_map = {}
    total = 0
    for shard, names in PYTHON_SHARDS.items():
        part = {name: tensors[name] for name in names}
        save_file(part, os.path.join(sharded, shard), metadata={"format": "pt"})
        for name in names:
            weight_map[name] = shard
            total += part[name].numel() * part[name].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(sharded, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    print(f"wrote {sharded}/ ({len(PYTHON_SHARDS)} shards)")


if __name__ == "__main__":
    main()
