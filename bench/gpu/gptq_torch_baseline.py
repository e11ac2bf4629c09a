#!/usr/bin/env python3
"""Straightforward PyTorch GPTQ, the comparison for bench/gpu/gptq_bench.ts.

Per Llama-3-8B layer shape (out x in): the Hessian accumulated as H += X^T X in fp32 over
`batches` batches of `tokens` random rows (TF32 off: plain fp32 matmul), and the GPTQ solve:
1% damping, torch.linalg.cholesky -> cholesky_inverse -> upper Cholesky factor, the standard
lazy-batch loop (blocks of 128 columns, error feedback inside the block, one matmul for the
rest) with a round-to-nearest MXFP4 quantizer (E2M1 grid, ties to the even grid index, fixed
OCP power-of-two scales per group of 32 chosen from the weights before the loop).
Prints one JSON object on stdout:
  {"torch": version, "device": name, "shapes": [{"out", "in", "hessian_s", "solve_s"}, ...]}
"""
import argparse
import json
import time

import torch

GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def rtn_e2m1(x, scale, grid, mids):
    v = (x / scale).abs().clamp(max=6.0)
    idx = torch.bucketize(v, mids)  # v == mids[k] gives k, the lower neighbour ...
    n = mids.numel()
    tie = (idx < n) & (v == mids[idx.clamp(max=n - 1)]) & (idx % 2 == 1)
    idx = idx + tie.long()  # ... so odd lower neighbours of exact ties move up to the even code
    return torch.sign(x) * grid[idx] * scale


def group_scales(w, group):
    amax = w.abs().reshape(w.shape[0], -1, group).amax(dim=2).clamp(min=2.0 ** -126)
    return torch.exp2(torch.floor(torch.log2(amax)) - 2)


def gptq(w, h, scales, group=32, block=128, damp=0.01):
    w = w.clone()
    cols = w.shape[1]
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, device=w.device)
    hinv = torch.linalg.cholesky(h)
    hinv = torch.cholesky_inverse(hinv)
    hinv = torch.linalg.cholesky(hinv, upper=True)
    grid = torch.tensor(GRID, device=w.device)
    mids = (grid[1:] + grid[:-1]) / 2
    q = torch.zeros_like(w)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            s = scales[:, (i1 + i) // group]
            qc = rtn_e2m1(col, s, grid, mids)
            q1[:, i] = qc
            e = (col - qc) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        q[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4096,1024x4096,14336x4096,4096x14336")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--batches", type=int, default=128)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows_out = []
    for shape in a.shapes.split(","):
        out_f, in_f = (int(v) for v in shape.split("x"))
        xs = [torch.randn(a.tokens, in_f, device=dev, generator=gen) for _ in range(4)]
        h = torch.zeros(in_f, in_f, device=dev)
        h.addmm_(xs[0].t(), xs[0])  # warm-up
        torch.cuda.synchronize()
        h.zero_()
        t0 = time.perf_counter()
        for b in range(a.batches):
            x = xs[b % len(xs)]
            h.addmm_(x.t(), x)
        h.mul_(2.0 / (a.tokens * a.batches))
        torch.cuda.synchronize()
        t_h = time.perf_counter() - t0
        w = torch.randn(out_f, in_f, device=dev, generator=gen) * 0.02
        scales = group_scales(w, 32)
        gptq(w[:, :256], h[:256, :256], scales[:, :8])  # warm-up of the kernels used
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        gptq(w, h, scales)
        torch.cuda.synchronize()
        t_s = time.perf_counter() - t0
        rows_out.append({"out": out_f, "in": in_f, "hessian_s": t_h, "solve_s": t_s})
        del xs, h, w
        torch.cuda.empty_cache()
    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
                      "shapes": rows_out}))


if __name__ == "__main__":
    main()
