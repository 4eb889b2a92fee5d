"""Where the GPU is idle during a batched long-form run: torch.profiler's kernel, memcpy and memset
intervals of one warm run, their union, and the gaps between them (with the kernels on each side).

    PYTHONPATH=. python benchmarks/longform_idle.py --audio .gpurun/devlong.npz \\
        [--arch large-v3] [--type q5_0] [--tokens 112] [--batch-size 32] [--dir /tmp/qwb] [--min-gap-us 100]

The run is bench_longform.py's synthetic one (random weights of --arch, every window decoding
exactly --tokens tokens), after three untimed runs. It prints the host span of the profiled run,
the GPU's busy time (the union of its intervals, so kernels that overlap under programmatic
dependent launch count once), the idle rest, every gap longer than --min-gap-us in time order,
the idle time by gap size, and GPU time by kernel name (durations summed: kernels that wait under
PDL count their wait). Session 19 found the decode loop's reads of "all rows finished" this way
(docs/reports/performance.md 20). Needs CUDA.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(REPO)))
sys.path.insert(0, str(REPO / "benchmarks"))


def gpu_intervals(prof, host_mark: str):
    """(host start ns, host end ns, sorted [(start ns, end ns, name)] of the GPU's activities)."""
    from torch.autograd import DeviceType

    events = prof.profiler.kineto_results.events()
    run = next(e for e in events if e.name() == host_mark and e.device_type() == DeviceType.CPU)
    gpu = sorted((e.start_ns(), e.start_ns() + e.duration_ns(), e.name()) for e in events
                 if e.device_type() == DeviceType.CUDA and e.name() != host_mark)
    return run.start_ns(), run.start_ns() + run.duration_ns(), gpu


def gaps_of(h0: int, h1: int, gpu: list) -> tuple[int, list]:
    """(busy ns, [(gap ns, where it starts, name before, name after)]) over the host span."""
    busy, gaps, end, last = 0, [], h0, "(host start)"
    for s, t, name in gpu:
        if s > end:
            gaps.append((s - end, end, last, name))
        busy += max(0, t - max(s, end))
        if t > end:
            end, last = t, name
    gaps.append((h1 - end, end, last, "(host end)"))
    return busy, gaps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--audio", required=True, help="the .npz of bench_longform.py pack")
    p.add_argument("--arch", default="large-v3")
    p.add_argument("--type", default="q5_0")
    p.add_argument("--tokens", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dir", default="/tmp/qwhisper-bench", help="where the random model file is written")
    p.add_argument("--min-gap-us", type=float, default=100.0)
    args = p.parse_args(argv)

    import bench_longform as bl
    import torch

    whisper, options, vad = bl.synthetic_model(args.dir, args.arch, args.type, args.tokens, "cuda")
    samples, _ = bl.load_pack(args.audio)
    for _ in range(3):
        bl.transcribe(whisper, samples, options, args.batch_size, vad)
        torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof, torch.profiler.record_function("RUN"):
        t0 = time.perf_counter()
        bl.transcribe(whisper, samples, options, args.batch_size, vad)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    h0, h1, gpu = gpu_intervals(prof, "RUN")
    busy, gaps = gaps_of(h0, h1, gpu)
    print(f"# {torch.cuda.get_device_name(0)}, {args.arch} {args.type}, {args.tokens} tokens a window, "
          f"batch {args.batch_size}: profiled run {wall:.4f} s")
    print(f"host span {(h1 - h0) / 1e6:.2f} ms, GPU busy {busy / 1e6:.2f} ms, idle {(h1 - h0 - busy) / 1e6:.2f} ms, "
          f"{len(gpu)} GPU activities")
    print(f"gaps over {args.min_gap_us:g} us (ms from the start: gap, activity before -> after):")
    for g, at, before, after in gaps:
        if g > args.min_gap_us * 1e3:
            print(f"  {(at - h0) / 1e6:8.2f} ms: {g / 1e3:8.1f} us  {before[:60]} -> {after[:60]}")
    sizes = {}
    for g, *_ in gaps:
        key = "< 5 us" if g < 5e3 else "5-20 us" if g < 20e3 else "20-200 us" if g < 200e3 else "> 200 us"
        sizes[key] = sizes.get(key, 0) + g
    print("idle by gap size: " + ", ".join(f"{k} {v / 1e6:.2f} ms" for k, v in sizes.items()))
    by_name = {}
    for s, t, name in gpu:
        key = name.split("(")[0].split("<")[0][:48]
        by_name[key] = by_name.get(key, 0) + (t - s)
    print("GPU time by name (summed durations):")
    for key, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:20]:
        print(f"  {v / 1e6:8.2f} ms  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
