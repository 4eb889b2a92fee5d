"""Kernel benchmark: y = x @ W.T for raw ggml weights W on the GPU, at Whisper's shapes.

    python benchmarks/bench_qmatmul.py [--out DIR] [--append benchmarks/README.md] [--jobs 8] [--tune]

Prints the device, versions, the two ceilings measured on this card (device-to-device copy
bandwidth, counting bytes read + written; bf16/fp16 8192^3 matmul rate on random data), then for
every weight type x shape x M the time of each way to compute the product:

  linear      triton_ops.linear: what the model runs (its pick() of the three below; for the
              weights the model holds in planes rows on CUDA, the vocabulary and the decoder
              blocks' weights (model_planes), linear on planes: one row through the Gluon GEMV,
              quants/gluon_gemv.py)
  gemv        qmatmul: fused dequant-GEMV on CUDA cores, reads the raw blocks once (M <= 16)
  tc          qgemm_fused: fused dequant-GEMM on tensor cores (tl.dot), BLOCK_M 16 (M <= 16)
  deq+cublas  dequantize into a reusable buffer of x's dtype, then torch.nn.functional.linear
  cublas-f16  F.linear on a weight already held in float16: the reference a 16-bit model pays

Times are per call in a CUDA graph (graph_timing.graph_us, median of 9 replays) of one call per
copy of the weight, with enough copies to fill 4x the L2 (at most 1024; 2 for M >= 1500, whose
products are compute-bound), so each call reads its weight from device memory, as a decode step's
layers do, and no host launch time is counted.
(Until session 10 this used triton.testing.do_bench with an L2 flush before each call; there the
Python launch time of a call could outlast the flush, and on session 10's machines it inflated
one-row times to 70-95 us for 4-us kernels.) GB/s counts the weight bytes as stored (the quantized
size for q types) over the time; "% copy" relates that to the measured copy bandwidth.
Shapes (N, K): attention (d, d), MLP in (4d, d), MLP out (d, 4d), vocabulary (V, d) for
d = 384 (tiny), 768 (small), 1280 (large-v3). M = 1 (greedy step), 5 (beams), 16, 32 (batched
steps), 1500 (encoder window), 12000 (encoder, 8 windows; not for the vocabulary).

--jobs N compiles every kernel variant first in N processes (the Triton cache is shared), so the
timing run does not wait on serial compiles. --tune sweeps the GEMV's (BLOCK_N, NB, warps,
prefetch) at M = 1 and the tensor-core kernel's tiles at M = 5, 16 on representative shapes.
Writes bench_qmatmul_full.md (every row), bench_qmatmul.md (the summary appended to --append)
and bench_qmatmul.json under --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # graph_timing

from qwhisper.quants import GGMLType, tensor_nbytes

MODELS = {"tiny": (384, 51864), "small": (768, 51865), "large-v3": (1280, 51866)}  # (d, vocab)
ENC_BATCH = 8  # M = 1500 x 8: the encoder's products at batch 8 (bench_model's batched encoder)
TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.F16]
MS = [1, 5, 16, 32, 1500, ENC_BATCH * 1500]


def shapes() -> list[tuple[str, str, int, int]]:
    out = []
    for model, (d, vocab) in MODELS.items():
        out += [(model, "attn", d, d), (model, "mlp.in", 4 * d, d), (model, "mlp.out", d, 4 * d), (model, "vocab", vocab, d)]
    return out


def commit() -> str:
    if os.environ.get("QWHISPER_COMMIT"):
        return os.environ["QWHISPER_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except Exception:
        return "unknown"


def raw_weight(t: GGMLType, n: int, k: int, device: str) -> torch.Tensor:
    """Raw bytes of a random (n, k) weight: quantized on the GPU-free golden would take minutes for
    the vocabulary matrices, so random bytes with a sane f16 scale field stand in (timing only)."""
    g = torch.Generator().manual_seed(n * 7 + k)
    nbytes = tensor_nbytes(t, (n, k))
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g)
    if t == GGMLType.F16:
        raw = torch.randn(n * k, generator=g).half().view(torch.uint8)
    else:
        import numpy as np

        # d (and m) fields: the f16 scales of real weights, so no inf/NaN reaches the products
        size = {GGMLType.Q4_0: 18, GGMLType.Q4_1: 20, GGMLType.Q5_0: 22, GGMLType.Q5_1: 24, GGMLType.Q8_0: 34}[t]
        blocks = raw.view(-1, size)
        scales = torch.from_numpy((np.random.default_rng(n).random(blocks.shape[0]) * 0.01 + 1e-3).astype(np.float16).view(np.uint8).reshape(-1, 2))
        blocks[:, 0:2] = scales
        if t in (GGMLType.Q4_1, GGMLType.Q5_1):
            blocks[:, 2:4] = scales
    return raw.to(device)


def providers(t: GGMLType, m: int) -> list[str]:
    if t == GGMLType.F16:
        return ["cublas-f16"]
    if m <= 16:
        return ["linear", "gemv", "tc", "deq+cublas", "cublas-f16"]
    if m <= 32:  # the batched pipeline's steps (model.GRAPH_MAX_ROWS)
        return ["linear", "tc", "deq+cublas", "cublas-f16"]
    return ["linear", "cublas-f16"]  # linear = deq+cublas here (the fused tensor-core GEMM lost, run 1)


def make_fn(prov: str, t: GGMLType, x: torch.Tensor, raw: torch.Tensor, n: int, k: int, config=None):
    from qwhisper.quants import triton_ops as T

    if prov == "linear":
        if model_planes(t, n, k, x.shape[0]):  # as the model holds the weight on CUDA (loader)
            from qwhisper.quants.planes import to_planes

            p = to_planes(raw, t, n, k).reshape(-1)
            return lambda: T.linear(x, p, t, (n, k), planes=True)
        return lambda: T.linear(x, raw, t, (n, k))
    if prov == "gemv":
        return lambda: T.qmatmul(x, raw, t, (n, k), config=config)
    if prov == "tc":
        return lambda: T.qgemm_fused(x, raw, t, (n, k), config=config)
    if prov == "deq+cublas":
        return lambda: T.dequant_matmul(x, raw, t, (n, k))
    if prov == "cublas-f16":
        w = T.dequantize(raw, t, (n, k), dtype=torch.float16) if t != GGMLType.F16 else T._dense_view(raw, t, (n, k))
        return lambda: torch.nn.functional.linear(x, w)
    raise ValueError(prov)


def model_planes(t: GGMLType, n: int, k: int, m: int) -> bool:
    """Whether the model would hold this weight in planes rows when multiplying m rows: the
    vocabulary (N >= 16384, loader.VOCAB_PLANES) or a decoder block's weight (a decoder's 1..32
    rows; the encoder's weights of the same shapes stay in ggml blocks; loader.BLOCK_PLANES:
    attn (N = K) as attn.out, mlp.in as mlp.0, mlp.out as mlp.2), of a type and K the Gluon GEMV
    takes, where Gluon runs (quants/gluon_gemv.py)."""
    from qwhisper import loader
    from qwhisper.quants import gluon_gemv

    name = {n == k: "attn.out", n == 4 * k: "mlp.0", k == 4 * n: "mlp.2"}.get(True)
    which = (loader.VOCAB_PLANES and n >= 16384) or (m <= 32 and name in loader.BLOCK_PLANES)
    return which and gluon_gemv.supports(t, n, k) and gluon_gemv.usable(torch.device("cuda"), t)


GEMV_TUNE = [(8, 8, 2), (16, 8, 2), (4, 8, 2), (8, 16, 4), (4, 16, 4), (2, 16, 4), (1, 16, 4), (16, 16, 4)]
TC_TUNE = [(16, 64, 2, 8, 4, 4), (16, 64, 4, 8, 4, 3), (16, 128, 2, 8, 4, 4), (16, 64, 2, 8, 4, 3)]
TC_TUNE_32 = [(32, 64, 2, 8, 4, 3), (32, 64, 4, 8, 4, 3), (32, 128, 2, 8, 4, 3), (32, 32, 4, 8, 4, 3), (16, 32, 4, 8, 2, 3)]


ONLY_MS: list[int] = []  # --ms: measure only these M


def tasks(tune: bool) -> list[tuple]:
    """(type, n, k, m, provider, config) for every measurement, the warm-up's work list."""
    out = []
    for t in TYPES:
        for model, name, n, k in shapes():
            for m in MS:
                if ONLY_MS and m not in ONLY_MS:
                    continue
                if m > 1500 and name == "vocab":  # the vocabulary projection is the decoder's: no batched windows
                    continue
                for prov in providers(t, m):
                    out.append((t, n, k, m, prov, None))
    if tune:
        for t in [t for t in TYPES if t != GGMLType.F16]:
            for n, k in [(1280, 1280), (5120, 1280), (1280, 5120), (51866, 1280), (51864, 384), (1536, 384)]:
                for bn, nb, nw in GEMV_TUNE:
                    for pf in (True, False):
                        out.append((t, n, k, 1, "gemv", (1, bn, nb, nw, pf)))
            for n, k in [(51866, 1280), (51864, 384)]:
                for m in (5, 16):
                    for cfg in TC_TUNE:
                        out.append((t, n, k, m, "tc", cfg))
            for n, k in [(1280, 1280), (5120, 1280), (1280, 5120), (3840, 1280)]:  # batched steps' shapes
                for m in (16, 32):
                    for cfg in TC_TUNE + TC_TUNE_32:
                        if cfg[0] >= m or cfg[0] == 16:
                            out.append((t, n, k, m, "tc", cfg))
    return out


def _warm(chunk: list[tuple]) -> int:
    """Compile (and run once) each task's kernel in this process; returns how many ran."""
    done = 0
    for t, n, k, m, prov, cfg in chunk:
        if prov == "cublas-f16":
            continue
        x = torch.randn(m, k, device="cuda").half()
        raw = torch.zeros(tensor_nbytes(t, (n, k)), dtype=torch.uint8, device="cuda")
        try:
            make_fn(prov, t, x, raw, n, k, cfg)()
            done += 1
        except Exception as e:  # reported again (with the timing) by the main run
            print(f"warm-up {t.name} {n}x{k} M={m} {prov} {cfg}: {type(e).__name__}: {e}", file=sys.stderr)
    torch.cuda.synchronize()
    return done


def warm_up(all_tasks: list[tuple], jobs: int) -> None:
    """Compile every distinct kernel in `jobs` processes; the Triton disk cache carries them over."""
    seen, unique = set(), []
    for t, n, k, m, prov, cfg in all_tasks:
        # kernels specialise on types, constexprs and the divisibility of N, K and M == 1
        key = (t, n % 16 == 0, k, m, prov, cfg)
        if key not in seen:
            seen.add(key)
            unique.append((t, n, k, m, prov, cfg))
    t0 = time.time()
    chunks = [unique[i::jobs] for i in range(jobs)]
    with mp.get_context("spawn").Pool(jobs) as pool:
        n_done = sum(pool.map(_warm, chunks))
    print(f"# compiled {n_done} kernel variants in {jobs} processes: {time.time() - t0:.1f} s", flush=True)


def ceilings() -> dict:
    from triton.testing import do_bench

    nbytes = 1 << 30
    a = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=25, rep=200, return_mode="median")
    out = {"copy_GBps": 2 * nbytes / ms / 1e6}  # read + write
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        x = torch.randn(8192, 8192, device="cuda", dtype=dt)
        y = torch.randn(8192, 8192, device="cuda", dtype=dt)
        ms = do_bench(lambda: x @ y, warmup=50, rep=300, return_mode="median")
        out[f"{name}_TFLOPs"] = 2 * 8192**3 / ms / 1e9
    a = b = None  # free the 2 GiB before the sweep
    return out


RING_L2_MULTIPLE, MAX_COPIES = 4, 1024


def cold_us(prov: str, t: GGMLType, x: torch.Tensor, raw: torch.Tensor, n: int, k: int, cfg, wbytes: int) -> float:
    """us per call of make_fn(prov, ...) in a CUDA graph over copies of the weight that together
    fill RING_L2_MULTIPLE x the L2: each call finds its weight in device memory, not in L2."""
    from graph_timing import graph_us

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    copies = min(MAX_COPIES, max(2, -(-RING_L2_MULTIPLE * l2 // wbytes)))
    if x.shape[0] >= 1500:  # compute-bound products whose outputs would fill the graph's pool
        copies = 2
    fns = [make_fn(prov, t, x, raw if i == 0 else raw.clone(), n, k, cfg) for i in range(copies)]
    return graph_us(lambda: [f() for f in fns], calls=copies)


def measure(all_tasks: list[tuple], copy_gbps: float) -> list[dict]:
    rows = []
    cache: dict = {}
    for t, n, k, m, prov, cfg in all_tasks:
        if (t, n, k) not in cache:
            cache.clear()
            torch.cuda.empty_cache()
            cache[(t, n, k)] = raw_weight(t, n, k, "cuda")
        raw = cache[(t, n, k)]
        x = torch.randn(m, k, device="cuda").half()
        row = {"type": t.name, "N": n, "K": k, "M": m, "provider": prov, "config": cfg}
        try:
            wbytes = tensor_nbytes(t, (n, k)) if prov != "cublas-f16" else 2 * n * k
            us = cold_us(prov, t, x, raw, n, k, cfg, wbytes)
            row.update(us=us, weight_GBps=wbytes / us / 1e3, pct_copy=100 * wbytes / us / 1e3 / copy_gbps,
                       TFLOPs=2 * m * n * k / us / 1e6)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
    return rows


def fmt_full(rows: list[dict]) -> str:
    lines = ["| type | N x K | M | provider | config | us | weight GB/s | % copy | TFLOP/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['type']} | {r['N']}x{r['K']} | {r['M']} | {r['provider']} | {r['config'] or ''} | error: {r['error']} | | | |")
        else:
            lines.append(f"| {r['type']} | {r['N']}x{r['K']} | {r['M']} | {r['provider']} | {r['config'] or ''} | {r['us']:.1f} | "
                         f"{r['weight_GBps']:.0f} | {r['pct_copy']:.0f} | {r['TFLOPs']:.2f} |")
    return "\n".join(lines)


def fmt_summary(rows: list[dict]) -> str:
    """Per type and shape: what linear() takes at M = 1, 5, 16, 1500 and 1500 x ENC_BATCH, next to the f16
    reference."""
    by = {}
    for r in rows:
        if r["config"] is None and "error" not in r:
            by[(r["type"], r["N"], r["K"], r["M"], r["provider"])] = r
    from qwhisper.quants.triton_ops import pick

    mb = ENC_BATCH * 1500
    lines = ["| type | shape | N x K | M=1 us (weight GB/s, % copy) | f16 cuBLAS M=1 us | M=5 us | M=16 us | "
             f"M=1500 us (TFLOP/s) | f16 cuBLAS M=1500 us | M={mb} us (TFLOP/s) | f16 cuBLAS M={mb} us |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in TYPES:
        for model, name, n, k in shapes():
            label = f"{model} {name}"
            ref = {m: by.get(("F16", n, k, m, "cublas-f16")) or by.get((t.name, n, k, m, "cublas-f16")) for m in MS}
            if t == GGMLType.F16:
                cells = [ref[1] and f"{ref[1]['us']:.1f} ({ref[1]['weight_GBps']:.0f}, {ref[1]['pct_copy']:.0f}%)", "",
                         ref[5] and f"{ref[5]['us']:.1f}", ref[16] and f"{ref[16]['us']:.1f}"]
                for m in (1500, mb):
                    cells += [ref[m] and f"{ref[m]['us']:.1f} ({ref[m]['TFLOPs']:.0f})", ""]
            else:
                lin = {m: by.get((t.name, n, k, m, "linear")) for m in MS}
                cells = [lin[1] and f"{lin[1]['us']:.1f} ({lin[1]['weight_GBps']:.0f}, {lin[1]['pct_copy']:.0f}%)",
                         ref[1] and f"{ref[1]['us']:.1f}"]
                cells += [lin[m] and f"{lin[m]['us']:.1f} {pick(m, n, k, torch.float16)}" for m in (5, 16)]
                for m in (1500, mb):
                    cells += [lin[m] and f"{lin[m]['us']:.1f} ({lin[m]['TFLOPs']:.0f})", ref[m] and f"{ref[m]['us']:.1f}"]
            lines.append(f"| {t.name} | {label} | {n}x{k} | " + " | ".join(c or "-" for c in cells) + " |")
    return "\n".join(lines)


def fmt_tune(rows: list[dict]) -> str:
    lines = ["| type | N x K | M | provider | best config | us | % copy | runner-up | us |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        if r["config"] is not None and "error" not in r:
            groups.setdefault((r["type"], r["N"], r["K"], r["M"], r["provider"]), []).append(r)
    for (t, n, k, m, p), rs in groups.items():
        rs.sort(key=lambda r: r["us"])
        second = rs[1] if len(rs) > 1 else None
        lines.append(f"| {t} | {n}x{k} | {m} | {p} | {rs[0]['config']} | {rs[0]['us']:.1f} | {rs[0]['pct_copy']:.0f} | "
                     + (f"{second['config']} | {second['us']:.1f} |" if second else "- | - |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"), help="folder for the result files")
    ap.add_argument("--append", help="markdown file to append the summary to (benchmarks/README.md)")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="processes compiling kernels first (0: none)")
    ap.add_argument("--tune", action="store_true", help="also sweep kernel tile configs")
    ap.add_argument("--types", help="comma-separated subset of types, e.g. q5_0,q8_0")
    ap.add_argument("--ms", help="comma-separated subset of M (rows of x), e.g. 1,16")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_qmatmul: no CUDA device", file=sys.stderr)
        return 2
    global TYPES, ONLY_MS
    if args.ms:
        ONLY_MS = [int(v) for v in args.ms.split(",")]
    if args.types:
        TYPES = [GGMLType[s.strip().upper()] for s in args.types.split(",")]
    import triton

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    head = {
        "date": datetime.date.today().isoformat(), "commit": commit(), "device": props.name,
        "sms": props.multi_processor_count, "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.version.cuda,
    }
    print("# " + ", ".join(f"{k} {v}" for k, v in head.items()), flush=True)
    head.update(ceilings())
    print(f"# copy {head['copy_GBps']:.0f} GB/s (read+write), bf16 matmul {head['bf16_TFLOPs']:.0f} TFLOP/s, "
          f"fp16 {head['fp16_TFLOPs']:.0f} TFLOP/s", flush=True)
    all_tasks = tasks(args.tune)
    if args.jobs > 0:
        warm_up(all_tasks, args.jobs)
    t0 = time.time()
    rows = measure(all_tasks, head["copy_GBps"])
    print(f"# {len(rows)} measurements in {time.time() - t0:.0f} s", flush=True)
    title = (f"### {head['date']}, commit {head['commit']}, {head['device']} ({head['sms']} SMs), torch {head['torch']}, "
             f"triton {head['triton']}, CUDA {head['cuda']}\n\nMeasured ceilings: copy {head['copy_GBps']:.0f} GB/s "
             f"(read+write), bf16 matmul {head['bf16_TFLOPs']:.0f} TFLOP/s, fp16 {head['fp16_TFLOPs']:.0f} TFLOP/s.\n")
    summary = title + "\n" + fmt_summary(rows) + "\n"
    if args.tune:
        summary += "\nTile sweeps:\n\n" + fmt_tune(rows) + "\n"
    (out / "bench_qmatmul_full.md").write_text(title + "\n" + fmt_full(rows) + "\n")
    (out / "bench_qmatmul.md").write_text(summary)
    (out / "bench_qmatmul.json").write_text(json.dumps({"head": head, "rows": rows}, default=str))
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + summary)
    print(summary)
    errors = [r for r in rows if "error" in r]
    for r in errors[:10]:
        print(f"ERROR {r['type']} {r['N']}x{r['K']} M={r['M']} {r['provider']} {r['config']}: {r['error']}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
