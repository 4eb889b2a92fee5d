"""What each stage of the graphed one-row fused step costs under PDL.

    python benchmarks/bench_stages.py [--arch large-v3] [--type q5_0] [--dir /tmp/qwm] [--keep-files]

With programmatic dependent launch the step's kernels overlap (each loads its weights before it
waits for the one before), so their profiler durations (profile_model.py) do not add up to the
step. Here the graphed step (bench_model's decode measure, random weights) is timed whole, then
once with each stage's kernels not launched (the numbers go wrong, the timing of the rest does
not): the difference is what that stage costs the step. Stages: the eight kernels of a layer
(quants/triton_decoder.py) and the vocabulary projection. Needs CUDA. Session 4 measured this way
with a prototype script (docs/reports/performance.md 5.4b).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(REPO)))
sys.path.insert(0, str(REPO / "benchmarks"))

# The kernels triton_decoder.DecoderStep launches for each layer, in launch order (trace_step.py
# and profile_model.py name them by this), then the vocabulary projection once a step.
LAYER_STAGES = ("qkv", "self_attn", "out", "cross_q", "cross_attn", "cross_out", "fc1", "fc2")
STAGES = LAYER_STAGES + ("head",)


class StageSkipper:
    """Stand-ins for triton_decoder's gemv_qkv, attention and _linear that name the stage of each
    call (from its arguments and its place in the layer) and skip the one stage `skip`."""

    def __init__(self, td, skip: str | None = None):
        self.skip = skip
        self.real = (td.gemv_qkv, td.attention, td._linear)
        self.square_residual = "out"  # the layer's first d x d residual GEMV is out, the second cross_out
        self.seen: list[str] = []

    def _run(self, stage: str) -> bool:
        self.seen.append(stage)
        return stage != self.skip

    def gemv_qkv(self, *args, **kwargs):
        self.square_residual = "out"
        if self._run("qkv"):
            return self.real[0](*args, **kwargs)
        return args[5]  # q_out

    def attention(self, q, k, v, n_head, out, counters, position=None, **kwargs):
        if self._run("self_attn" if position is not None else "cross_attn"):
            return self.real[1](q, k, v, n_head, out, counters, position, **kwargs)
        return out

    def linear(self, x, lin, out=None, ln=None, epilogue="store", **kwargs):
        if ln is not None:
            stage = "fc1" if epilogue == "gelu" else ("head" if out is None else "cross_q")
        elif epilogue == "residual" and lin.in_features > lin.out_features:
            stage = "fc2"
        else:
            stage, self.square_residual = self.square_residual, "cross_out"
        if self._run(stage):
            return self.real[2](x, lin, out, ln, epilogue, **kwargs)
        if out is None:
            import torch

            out = torch.zeros((x.shape[0], lin.out_features), dtype=torch.float32, device=x.device)
        return out

    def settings(self) -> dict:
        """bench_model.ABLATIONS entry: triton_decoder attributes to replace."""
        return {"gemv_qkv": self.gemv_qkv, "attention": self.attention, "_linear": self.linear}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="large-v3")
    p.add_argument("--type", default="q5_0")
    p.add_argument("--dir", default="/tmp/qwhisper-bench")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--keep-files", action="store_true")
    args = p.parse_args(argv)

    import bench_model as bm
    import torch

    from qwhisper.architectures import ARCHITECTURES
    from qwhisper.quants import triton_decoder as td

    if not torch.cuda.is_available():
        print("bench_stages needs a CUDA GPU", file=sys.stderr)
        return 2
    n_layer = ARCHITECTURES[args.arch].n_text_layer
    path = str(bm.fast_random_model(args.dir, args.arch, args.type))
    bm.ABLATIONS = {f"no_{s}": StageSkipper(td, s).settings() for s in STAGES}
    print(torch.cuda.get_device_name(0), torch.__version__, args.arch, args.type, flush=True)
    try:
        r = bm.bench_file(path, args.reps, 8, args.steps, decode_only=True, ablate=True)
    finally:
        if not args.keep_files:
            Path(path).unlink(missing_ok=True)
    base = r["graph_decode_ms_per_token"]
    lines = [f"## bench_stages {args.arch} {args.type}: graphed step {base:.4f} ms per token",
             "| stage skipped | ms per token | stage costs, us per layer (head: per token) |", "| --- | --- | --- |"]
    for s in STAGES:
        t = r[f"graph_decode_ms_per_token_no_{s}"]
        per = (base - t) * 1000 / (1 if s == "head" else n_layer)
        lines.append(f"| {s} | {t:.4f} | {per:.2f} |")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
