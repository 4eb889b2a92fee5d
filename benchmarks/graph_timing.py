"""A call's GPU time from CUDA graph replays, for the kernel benchmarks (bench_rows_gemm.py,
bench_dense_linear.py)."""

from __future__ import annotations

import torch


def graph_us(fn, calls: int = 1, captures: int = 1, warmup: int = 1, replays: int = 9, best: bool = False) -> float:
    """us per call of `fn`: run `warmup` times on a side stream (compiles, allocates), captured
    `captures` times into one CUDA graph, the graph replayed once, then `replays` timed replays;
    the median (best: the fastest) replay time / (captures * calls). `calls`: the calls one fn()
    makes (a list over layers, say)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(captures):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / (captures * calls) * 1e3)
    return min(times) if best else sorted(times)[len(times) // 2]
