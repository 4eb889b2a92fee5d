"""Per-program timeline of the graphed one-row fused step: where each stage's time goes under PDL.

    python benchmarks/trace_step.py [--arch large-v3] [--type q5_0] [--positions 36,200]
                                    [--dir /tmp/qwm] [--keep-files] [--out trace.npz]

With StepTrace records on (quants/triton_decoder.trace_steps), every GEMV and attention kernel of
the step writes, for each of its programs, the GPU's %globaltimer (ns, 32-ns ticks on an H100) at
its start, after its PDL wait and at its end, and the SM it ran on. This captures the step with
the records on (random weights, as bench_model), runs it up to each of --positions and prints,
per stage (averaged over the layers; the vocabulary projection once), in us:

- span: from the previous kernel's last program end to this kernel's last program end (the
  stages' spans add up to the step, less the embedding and the greedy kernels, which write none);
- gap: from the previous kernel's last end to this kernel's first wait release (the PDL chain);
- wait -> median end, median -> last end (the tail the next kernel waits for);
- late: programs that started only after the previous kernel had ended (no slot for them before,
  so nothing of theirs was loaded ahead of the wait);
- SMs that ran programs, the most programs one SM ran, a program's time before its wait (median)
  and after it (median / 90th percentile / max).

bench_stages.py gives what removing a stage saves; this gives what happens inside one. Needs CUDA.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(REPO)))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_stages import LAYER_STAGES as STAGES

COLUMNS = ("span", "gap", "wait_to_median_end", "median_to_last_end", "late", "sms", "max_per_sm",
           "before_wait", "after_wait_median", "after_wait_p90", "after_wait_max")


def kernel_rows(records: np.ndarray, n_slots: int) -> list[dict]:
    """One dict of COLUMNS per slot of records (slots, programs, 4) [start, after wait, end, SM],
    times in us; programs that wrote nothing (start 0) are left out."""
    rows, prev_end = [], None
    for s in range(n_slots):
        rec = records[s]
        live = rec[:, 0] > 0
        if not live.any():
            raise ValueError(f"slot {s} has no records")
        st, wt, en = (rec[live, i].astype(np.float64) / 1000.0 for i in range(3))
        per_sm = np.bincount(rec[live, 3].astype(np.int64))
        after = en - np.maximum(wt, st)
        first = prev_end if prev_end is not None else st.min()
        rows.append({"span": en.max() - first, "gap": wt.min() - first if prev_end is not None else np.nan,
                     "wait_to_median_end": np.median(en) - wt.min(), "median_to_last_end": en.max() - np.median(en),
                     "late": float((st > prev_end).sum()) if prev_end is not None else 0.0,
                     "sms": float((per_sm > 0).sum()), "max_per_sm": float(per_sm.max()),
                     "before_wait": float(np.median(wt - st)), "after_wait_median": float(np.median(after)),
                     "after_wait_p90": float(np.percentile(after, 90)), "after_wait_max": float(after.max())})
        prev_end = en.max()
    return rows


def stage_table(rows: list[dict], names: list[str], n_layer: int) -> str:
    """Markdown table of kernel_rows averaged per stage of the layer (slot i -> STAGES[i % 8]), and
    the vocabulary projection (the last slot)."""
    if len(rows) != 8 * n_layer + 1:
        raise ValueError(f"{len(rows)} kernels recorded, a {n_layer}-layer step has {8 * n_layer + 1}")
    groups = [(f"{stage} ({names[i]})", rows[i:8 * n_layer:8]) for i, stage in enumerate(STAGES)]
    groups.append((f"head ({names[-1]})", rows[-1:]))
    lines = ["| stage | " + " | ".join(COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for label, rs in groups:
        vals = [np.nanmean([r[c] for r in rs]) for c in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(f"{v:.0f}" if c in ("late", "sms", "max_per_sm") else f"{v:.2f}"
                                                   for c, v in zip(COLUMNS, vals)) + " |")
    total = sum(r["span"] for r in rows)
    lines.append(f"\nsum of the spans: {total:.1f} us ({len(rows)} kernels)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="large-v3")
    p.add_argument("--type", default="q5_0")
    p.add_argument("--positions", default="36,200", help="trace the step at these positions (after the 4-token start)")
    p.add_argument("--dir", default="/tmp/qwhisper-bench")
    p.add_argument("--keep-files", action="store_true")
    p.add_argument("--out", default=None, help="npz of the raw records and kernel names")
    args = p.parse_args(argv)

    import bench_model as bm
    import torch

    from qwhisper.architectures import ARCHITECTURES
    from qwhisper.loader import load_model
    from qwhisper.quants import triton_decoder as td

    if not torch.cuda.is_available():
        print("trace_step needs a CUDA GPU", file=sys.stderr)
        return 2
    positions = sorted(int(v) for v in args.positions.split(","))
    n_layer = ARCHITECTURES[args.arch].n_text_layer
    path = bm.fast_random_model(args.dir, args.arch, args.type)
    dev = torch.device("cuda")
    try:
        model = load_model(str(path), dev)
    finally:
        if not args.keep_files:
            path.unlink(missing_ok=True)
    trace = td.StepTrace(torch.zeros((8 * n_layer + 1, td.TRACE_MAX_PROGRAMS, 4), dtype=torch.int64, device=dev), [])
    print(torch.cuda.get_device_name(0), torch.__version__, args.arch, args.type, flush=True)
    saved = {}
    with torch.no_grad():
        xa = model.embed_audio(torch.randn(1, model.dims.n_mels, 2 * model.dims.n_audio_ctx, device=dev))
        model.decoder.cuda_graphs = True
        model.decoder.fused_step = True
        model.decoder.drop_graphs()
        td.trace_steps(trace)
        try:
            cache = model.new_kv_cache(xa)
            model.logits(torch.tensor([[1, 2, 3, 4]], device=dev), cache)
            tok = torch.full((1, 1), 440, dtype=torch.long, device=dev)
            for pos in positions:
                while cache.offset <= pos:  # the step at `pos` is the last one run
                    model.logits(tok, cache)
                torch.cuda.synchronize()
                if model.decoder._fused_error:
                    print(f"the fused step failed: {model.decoder._fused_error}", file=sys.stderr)
                    return 1
                rec = trace.records.cpu().numpy()
                saved[f"records_{pos}"] = rec
                rows = kernel_rows(rec, len(trace.names))
                print(f"\n## trace_step {args.arch} {args.type}, the step at position {pos}\n", flush=True)
                print(stage_table(rows, trace.names, n_layer), flush=True)
        finally:
            td.trace_steps(None)
            model.decoder.drop_graphs()
    if args.out:
        np.savez_compressed(args.out, names=np.array(trace.names), **saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
