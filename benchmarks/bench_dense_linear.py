"""F.linear against torch_ops.dense_linear at the vocabulary widths (float16 weights used in place,
or the cached dequantized copies): widths that are not a multiple of 8 are split so that cuBLAS
writes rows of a multiple of 8 (docs/reports/performance.md 8.7).

    python benchmarks/bench_dense_linear.py     # on the GPU machine, from the checkout

Each figure: one call replayed 20 times in a CUDA graph, best of 5 replays, us a call; "rel diff"
is max |F.linear - dense_linear| / max |F.linear| of the float16 outputs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(Path(__file__).resolve().parents[1])))

from graph_timing import graph_us as _graph_us

from qwhisper.quants.torch_ops import dense_linear


def graph_us(fn) -> float:
    """One call replayed 20 times in a graph, best of 5 replays (see the docstring above)."""
    return _graph_us(fn, captures=20, warmup=3, replays=5, best=True)


def main() -> int:
    if not torch.cuda.is_available():
        print("bench_dense_linear: needs a CUDA GPU", file=sys.stderr)
        return 1
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("| K | N | M | F.linear us | dense_linear us | rel diff |\n| --- | --- | --- | --- | --- | --- |")
    for k in (384, 1280):
        for n in (51864, 51865, 51866):
            w = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.05
            for m in (1, 5, 25):
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                a, b = torch.nn.functional.linear(x, w), dense_linear(x, w)
                diff = ((a.float() - b.float()).abs().max() / a.float().abs().max()).item()
                plain = graph_us(lambda x=x, w=w: torch.nn.functional.linear(x, w))
                split = graph_us(lambda x=x, w=w: dense_linear(x, w))
                print(f"| {k} | {n} | {m} | {plain:.1f} | {split:.1f} | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
