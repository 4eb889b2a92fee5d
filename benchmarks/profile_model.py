"""Where the GPU time goes: torch.profiler's CUDA kernel table for one encoder window and one
graph-free decoder step, on a random-weight model of any architecture and type.

    python benchmarks/profile_model.py [--arch large-v3] [--type q5_0] [--batch 1] [--rows 20] [--out DIR]

Prints, for the encoder (batch --batch) and for one eager decoder step (1 row, 64 tokens already in the
cache), the CUDA kernels sorted by total time with their call counts, and the summed kernel time
against the wall time (CUDA events): the gap is launch overhead. Random weights from
bench_model.write_fast_random_model (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(REPO)))
sys.path.insert(0, str(REPO / "benchmarks"))


def _events_ms(fn, reps: int = 10) -> float:
    import torch

    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _profile(fn, title: str, rows: int, out: Path | None) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    wall = _events_ms(fn)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    kernel_ms = sum(e.self_device_time_total for e in events) / 1000
    n_kernels = sum(e.count for e in events)
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70)
    text = f"## {title}\nwall {wall:.3f} ms (median of 10), kernels {kernel_ms:.3f} ms in {n_kernels} launches\n{table}\n"
    print(text, flush=True)
    if out:
        (out / f"profile-{title.split()[0]}.txt").write_text(text)


def main(argv=None) -> int:
    import torch

    from bench_model import write_fast_random_model
    from qwhisper.loader import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="large-v3")
    p.add_argument("--type", default="q5_0")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.gettempdir()) / f"ggml-{args.arch}-{args.type}-random-fast.bin"
    if not path.exists():
        write_fast_random_model(path, args.arch, args.type)
    model = load_model(path, "cuda")
    dims = model.dims
    print(torch.cuda.get_device_name(0), torch.__version__, args.arch, args.type, flush=True)
    mel = torch.randn(args.batch, dims.n_mels, 2 * dims.n_audio_ctx, device="cuda")
    with torch.no_grad():
        _profile(lambda: model.embed_audio(mel), f"encoder batch {args.batch}", args.rows, args.out)
        features = model.embed_audio(mel[:1])
        cache = model.new_kv_cache(features)
        model.decoder.cuda_graphs = False
        cache = model.decoder.new_kv_cache(features.to(model.dtype))
        model.logits(torch.randint(0, 50000, (1, 64), device="cuda"), cache)
        token = torch.randint(0, 50000, (1, 1), device="cuda")

        def step():
            model.logits(token, cache)
            cache.offset -= 1  # the same position every time

        _profile(step, "decoder step (eager, 1 row)", args.rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
