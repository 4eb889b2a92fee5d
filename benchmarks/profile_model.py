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

from bench_stages import LAYER_STAGES


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


FUSED_STAGES = tuple(s.replace("_", "-") for s in LAYER_STAGES)  # "self-attn", "cross-q", ...


def _fused_stages(fn, n_layer: int, out: Path | None, title: str) -> None:
    """Kernel durations of one fused decoder step (quants/triton_decoder.py), by stage: the
    step's kernels run in a fixed order (embed, 8 per layer, head), so the i-th kernel's stage
    is known. Durations from the profiler (CUPTI); gaps = wall time not covered by kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    ours = ("_embed_kernel", "_step_gemv_kernel", "_attn_kernel", "_cross_attn_kernel")
    ks = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and e.name in ours),
                key=lambda e: e.time_range.start)
    names = ["embed"] + [s for _ in range(n_layer) for s in FUSED_STAGES] + ["head"]
    if len(ks) != len(names):
        print(f"fused stages: {len(ks)} kernels, expected {len(names)}: " + ", ".join(sorted({e.name for e in ks})))
        return
    tot: dict[str, float] = {}
    for e, nm in zip(ks, names):
        tot[nm] = tot.get(nm, 0.0) + e.time_range.elapsed_us()
    span = ks[-1].time_range.end - ks[0].time_range.start
    busy = sum(tot.values())
    lines = [f"## {title}", f"span {span:.1f} us, kernels {busy:.1f} us, gaps {span - busy:.1f} us",
             "| stage | total us | per layer us |", "|---|---|---|"]
    for nm in ["embed", *FUSED_STAGES, "head"]:
        per = tot[nm] / (n_layer if nm in FUSED_STAGES else 1)
        lines.append(f"| {nm} | {tot[nm]:.1f} | {per:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if out:
        (out / f"stages-{title.split()[0]}.txt").write_text(text)


def main(argv=None) -> int:
    import torch

    from bench_model import fast_random_model
    from qwhisper.loader import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="large-v3")
    p.add_argument("--type", default="q5_0")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--step-rows", type=int, default=0,
                   help="also one eager decoder step of this many rows, one window each (the batched long-form step)")
    args = p.parse_args(argv)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    path = fast_random_model(tempfile.gettempdir(), args.arch, args.type)
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

        from qwhisper.quants import triton_decoder

        model.decoder.fused_step = True
        for pdl in (False, None):
            triton_decoder.PDL = pdl
            _fused_stages(step, dims.n_text_layer, args.out, f"fused-step{'' if pdl is None else '-no-pdl'} "
                          f"(eager) {args.arch} {args.type}")
        # the same step replayed from the model's CUDA graph (what transcription runs): with PDL
        # the kernels overlap, so a stage's time there includes its wait for the one before
        model.decoder.cuda_graphs = True
        for pdl in (False, None):
            triton_decoder.PDL = pdl
            model.decoder.drop_graphs()
            gcache = model.new_kv_cache(features)
            model.logits(torch.randint(0, 50000, (1, 64), device="cuda"), gcache)

            def gstep():
                model.logits(token, gcache)
                gcache.offset -= 1

            _fused_stages(gstep, dims.n_text_layer, args.out, f"fused-graph{'' if pdl is None else '-no-pdl'} "
                          f"{args.arch} {args.type}")
        triton_decoder.PDL = None
        if args.step_rows:  # the batched long-form step: N rows, each over its own window's cross K/V
            n = args.step_rows
            model.decoder.cuda_graphs = False
            feats = torch.cat([model.embed_audio(mel[:1]) for _ in range(n)])
            bcache = model.decoder.new_kv_cache(feats.to(model.dtype))
            model.logits(torch.randint(0, 50000, (n, 64), device="cuda"), bcache)
            btoken = torch.randint(0, 50000, (n, 1), device="cuda")

            def bstep():
                model.logits(btoken, bcache)
                bcache.offset -= 1

            _profile(bstep, f"decoder-{n}-rows step (eager)", args.rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
