"""The batched long form's decoder step alone: ms per graphed step of W windows (one row each, over
its own window's cross K/V), for module settings side by side in one process.

    python benchmarks/bench_batched_step.py [--arch large-v3] [--type q5_0] [--windows 25] \\
        [--rounds 2] [--variant "quants.triton_ops.SPLITK_MAX_SPLIT=20"] ...

bench_longform.py times a whole 10-minute run, whose spread between runs (2-3 %) hides what one
setting of the batched step changes. This times only that step, replayed from the model's CUDA
graph as the batched pipeline replays it (random weights from bench_model's fast generator,
random encoder output; speed does not depend on the values): --steps steps from position 4, the
median of --reps. Each --variant is a space-separated list of MODULE.NAME=VALUE settings of
qwhisper (with_settings.py's form); the captured graphs are dropped before each, so the settings
take effect, and the defaults are put back after. Variants run in --rounds alternating rounds
(baseline, variants, baseline, variants, ...). Needs CUDA.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(REPO)))
sys.path.insert(0, str(REPO / "benchmarks"))

from with_settings import apply, resolve


def step_ms(model, features, steps: int, reps: int) -> float:
    """ms per graphed one-token step of features.shape[0] windows, positions 4 .. 4 + steps."""
    import torch
    from bench_model import _median_ms

    w = features.shape[0]
    model.decoder.drop_graphs()
    cache = model.new_kv_cache(features)
    model.logits(torch.tensor([[1, 2, 3, 4]], device=features.device).repeat(w, 1), cache)
    tok = torch.full((w, 1), 440, dtype=torch.long, device=features.device)

    def run():
        cache.offset = 4
        for _ in range(steps):
            model.logits(tok, cache)

    return _median_ms(run, reps) / steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="large-v3")
    ap.add_argument("--type", default="q5_0")
    ap.add_argument("--windows", type=int, default=25, help="rows of the step (25: the 10-minute run's batch)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/qwhisper-bench", help="where the random model file is written")
    ap.add_argument("--variant", action="append", default=[], help="space-separated MODULE.NAME=VALUE settings")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_batched_step: needs a CUDA GPU", file=sys.stderr)
        return 1
    from bench_model import fast_random_model

    from qwhisper.loader import load_model

    model = load_model(fast_random_model(args.dir, args.arch, args.type), torch.device("cuda"))
    dims = model.dims
    gen = torch.Generator(device="cuda").manual_seed(0)
    features = torch.randn(args.windows, dims.n_audio_ctx, dims.n_audio_state, device="cuda", generator=gen)
    features = features.to(model.dtype)
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}; {args.arch} {args.type}, "
          f"{args.windows} windows, ms per graphed step at positions 4..{4 + args.steps - 1}, median of {args.reps}")
    variants = [("main", [])] + [(v, v.split()) for v in args.variant]
    results: dict[str, list[float]] = {name: [] for name, _ in variants}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, settings in variants:
                saved = [(module, name, getattr(module, name)) for module, name, _ in map(resolve, settings)]
                try:
                    for s in settings:
                        apply(s)
                    results[name].append(step_ms(model, features, args.steps, args.reps))
                    gc.collect()  # frees the step's graph buffer set (model.GRAPH_SETS_PER_SHAPE)
                finally:
                    for module, attr, value in saved:
                        setattr(module, attr, value)
                print(f"{name}: {results[name][-1]:.4f}", flush=True)
    base = min(results["main"])
    print("| variant | ms per step, each round | best against main's best |\n| --- | --- | --- |")
    for name, _ in variants:
        best = min(results[name])
        print(f"| {name} | {' / '.join(f'{t:.4f}' for t in results[name])} | {100 * (best / base - 1):+.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
