"""The deterministic content of the safetensors interoperability fixtures.

Mirrors SPECS in tests/safetensors_fixtures.ts (change both together): name -> (safetensors
dtype, shape, value of flat element i). Imported by make_safetensors_fixtures.py and
check_safetensors_interop.py.
"""
import torch

TORCH_DTYPE = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}

SPECS = {
    "f64": ("F64", [2, 3], lambda i: (i - 2.5) * 0.125),
    "f32": ("F32", [3, 5], lambda i: (i - 7) * 0.25),
    "f16": ("F16", [4, 4], lambda i: (i - 8) * 0.5),
    "bf16": ("BF16", [2, 8], lambda i: (i - 8) * 1.5),
    "f8_e4m3": ("F8_E4M3", [16], lambda i: (i - 8) * 0.5),
    "f8_e5m2": ("F8_E5M2", [16], lambda i: (i - 8) * 0.5),
    "u8": ("U8", [4, 4], lambda i: (i * 17) % 256),
    "i8": ("I8", [16], lambda i: i * 16 - 128),
    "i16": ("I16", [2, 4], lambda i: (i - 4) * 8191),
    "i32": ("I32", [8], lambda i: (i - 4) * 536870911),
    "i64": ("I64", [4], lambda i: (i - 2) * (1 << 40) + i),
    "bool": ("BOOL", [2, 3], lambda i: i % 3 == 0),
    "scalar": ("F32", [], lambda i: 3.5),
    "empty": ("F32", [0, 4], lambda i: 0),
    "empty_bf16": ("BF16", [3, 0], lambda i: 0),
}

PYTHON_METADATA = {"format": "pt", "source": "python-safetensors"}
FP4LAB_METADATA = {"format": "pt", "source": "fp4lab"}

PYTHON_SHARDS = {
    "model-00001-of-00002.safetensors": ["f32", "bf16", "scalar"],
    "model-00002-of-00002.safetensors": ["i32", "u8", "empty"],
}


def expected(name):
    """The fixture tensor `name`, built exactly (every value is representable in its dtype)."""
    dtype, shape, value = SPECS[name]
    n = 1
    for d in shape:
        n *= d
    values = [value(i) for i in range(n)]
    if dtype in ("F8_E4M3", "F8_E5M2", "BF16", "F16"):
        # Go through float64: every fixture value is exact there and in the target format.
        t = torch.tensor(values, dtype=torch.float64).to(TORCH_DTYPE[dtype])
        assert torch.equal(t.to(torch.float64), torch.tensor(values, dtype=torch.float64))
    else:
        t = torch.tensor(values, dtype=TORCH_DTYPE[dtype])
    return t.reshape(shape).contiguous()
