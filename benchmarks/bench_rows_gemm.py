"""The batched step's matrix products (one row per window, 9..32 rows) on block-quantized weights:
triton_ops.dequant_matmul (dequantize into the scratch buffer + cuBLAS, the way before session 8)
against triton_ops.splitk_linear (split-K tensor-core GEMM writing float32 partial sums), alone
and with the reduce kernel that turns the partials into a tensor (docs/kernels.md, "Split-K for
a batched step"; docs/reports/performance.md section 9).

    python benchmarks/bench_rows_gemm.py [--arch large-v3] [--type q5_0] [--rows 25]

Weights are cold as in a real step: one distinct random weight per decoder layer (n_text_layer of
each shape, 0.5 GB for large-v3 q5_0), the calls of all layers replayed in one CUDA graph, the
median of 9 replays, us a call. "rel diff": max |splitk - dequant_matmul| / max |dequant_matmul|
for the first layer (both multiply the same float16-rounded weights, in other orders). In the
batched step the consumers (add + LayerNorm, GELU) add the partials themselves, so "partials"
is what out / cross out / fc1 / fc2 cost there and "+ reduce" what q|k|v and the cross query cost.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(Path(__file__).resolve().parents[1])))

from graph_timing import graph_us

from qwhisper.architectures import ARCHITECTURES
from qwhisper.quants import BLOCK_SIZES, GGMLType, triton_ops


def random_blocks(ggml_type: GGMLType, n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Random block bytes with a finite scale (and minimum) of ~0.01 in every block."""
    per, size = BLOCK_SIZES[ggml_type]
    raw = torch.randint(0, 256, (n * k // per, size), dtype=torch.uint8, device="cuda", generator=gen)
    scale = torch.tensor([0x1F, 0x22], dtype=torch.uint8, device="cuda")  # f16 0x221f ~ 0.0098
    raw[:, 0:2] = scale
    if ggml_type in (GGMLType.Q4_1, GGMLType.Q5_1):
        raw[:, 2:4] = scale
    return raw.view(-1)


def measure(ggml_type: GGMLType, n: int, k: int, rows: int, layers: int, gen: torch.Generator) -> list[str]:
    """[dequantize + cuBLAS us, split-K partials us, split-K + reduce us, rel diff] for one shape."""
    ws = [random_blocks(ggml_type, n, k, gen) for _ in range(layers)]
    bias = torch.randn(n, device="cuda", generator=gen)
    x = torch.randn(rows, k, device="cuda", generator=gen).half()
    a = triton_ops.dequant_matmul(x, ws[0], ggml_type, (n, k), bias).float()
    b = triton_ops.splitk_linear(x, ws[0], ggml_type, (n, k), bias).tensor().float()
    diff = ((a - b).abs().max() / a.abs().max()).item()
    cublas = graph_us(lambda: [triton_ops.dequant_matmul(x, w, ggml_type, (n, k), bias) for w in ws], layers)
    parts = graph_us(lambda: [triton_ops.splitk_linear(x, w, ggml_type, (n, k), bias) for w in ws], layers)
    reduced = graph_us(lambda: [triton_ops.splitk_linear(x, w, ggml_type, (n, k), bias).tensor() for w in ws], layers)
    return [f"{cublas:.2f}", f"{parts:.2f}", f"{reduced:.2f}", f"{diff:.1e}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="large-v3")
    ap.add_argument("--type", default="q5_0")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_rows_gemm: needs a CUDA GPU", file=sys.stderr)
        return 1
    hp = ARCHITECTURES[args.arch]
    ggml_type = GGMLType[args.type.upper()]
    c, layers = hp.n_text_state, hp.n_text_layer
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"{args.arch} {ggml_type.name}, {args.rows} rows, {layers} layers of each weight")
    print("| weight | N x K | dequantize + cuBLAS us | split-K partials us | split-K + reduce us | rel diff |\n"
          "| --- | --- | --- | --- | --- | --- |")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, (n, k) in {"q|k|v": (3 * c, c), "out": (c, c), "fc1": (4 * c, c), "fc2": (c, 4 * c)}.items():
        print(f"| {name} | {n} x {k} | " + " | ".join(measure(ggml_type, n, k, args.rows, layers, gen)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
