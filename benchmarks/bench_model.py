"""Whole-model speed on the GPU, whisper.cpp's `whisper-bench` measures, on random weights of the
real shapes (tiny, small, large-v3, large-v3-turbo; f16, q8_0, q5_0, q4_0).

    python benchmarks/bench_model.py [--archs tiny,small,large-v3,large-v3-turbo] [--types f16,q8_0,q5_0,q4_0]
        [--dir /tmp/qwhisper-bench] [--out DIR] [--append benchmarks/README.md] [--generator fast|reference]
        [--decode-only]

Per model file:
- encoder: ms per 30-s window at batch 1 and per window at batch --batch (default 8);
- decode: ms per token at batch 1 (one decoder step, model.logits of 1 token with the KV cache,
  no host sync per step), eager and unfused (TextDecoder.cuda_graphs and fused_step off), the
  same with the old vocabulary projection (the tied embedding dequantized to float16 every
  step, then a matmul: the path before Whisper.logits went through triton_ops.linear), and as
  transcription runs it on CUDA: replayed from the model's CUDA graph of the step
  (model._GraphedStep) of the fused kernels (quants/triton_decoder.py), and the graph of the
  unfused step (fused_step off) as the baseline;
- per token of a 5-row step (5 beams sharing the window's cross K/V), eager unfused and
  graphed (fused, unfused), and per token of a 256-token prompt (one call);
- memory: bytes of the model's tensors on the GPU against the file size; peak allocated.
Times: CUDA events around each measured region, median of --reps repetitions after warm-up.

Random weights: `--generator reference` writes the files with
qwhisper.architectures.write_random_model (normal weights quantized by the numpy golden: float16
runs at ~5 M weights/s, so large-v3 f16 takes ~5 min); the default `fast` writes the same
tensors (names, types, shapes, header, mel filters, vocabulary) with random ggml blocks of a
sane scale drawn directly as bytes (seconds even for large-v3). Speed does not depend on the
weight values; the scales keep activations finite.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(REPO)))

ARCHS = ("tiny", "small", "large-v3", "large-v3-turbo")
TYPES = ("f16", "q8_0", "q5_0", "q4_0")
PROMPT_TOKENS = 256
BEAMS = 5
# whisper-bench times 256 one-token decodes at n_past = 0 .. 255 (examples/bench/bench.cpp); the
# other decode/token columns time `steps` tokens after a 4-token start (positions 4 .. 35)
WHISPER_BENCH_STEPS = 256

# whisper.cpp's whisper-bench on an H200 (shared/DESIGN.md): encoder ms, decode ms/token,
# 5-token batch ms/token, prompt ms/token
WHISPER_CPP_H200 = {
    ("large-v3", "f16"): (25.6, 4.06, 1.02, 0.04),
    ("large-v3", "q8_0"): (30.2, 5.24, 1.32, 0.06),
    ("large-v3", "q5_0"): (31.9, 4.73, 1.13, 0.06),
    ("large-v3", "q4_0"): (30.7, 4.92, 1.19, 0.06),
    ("small", "f16"): (6.8, 1.73, 0.43, 0.02),
    ("small", "q5_1"): (9.0, 1.80, 0.41, 0.02),
    ("small", "q4_0"): (8.2, 1.66, 0.39, 0.02),
    ("tiny", "f16"): (1.8, 0.62, 0.15, 0.01),
}


# --- random model files --------------------------------------------------------------------------

def _random_blocks(rng: np.random.Generator, ggml_type, shape: tuple[int, ...]) -> np.ndarray:
    """Raw bytes of a (N, K) tensor of random ggml blocks whose weights have rms ~ 1/sqrt(K)."""
    from qwhisper.quants import BLOCK_SIZES, QK, GGMLType, tensor_nbytes

    k = shape[-1]
    n = math.prod(shape)
    sigma = 1.0 / math.sqrt(k)
    if ggml_type == GGMLType.F16:
        # sign and 10 mantissa bits random, exponent so that |w| lies in [sigma/2, 2 sigma)
        e = math.floor(math.log2(sigma)) + 15  # biased f16 exponent of sigma
        bits = rng.integers(0, 1 << 16, n, dtype=np.uint16) & np.uint16(0x83FF)
        bits |= ((e - (rng.integers(0, 2, n, dtype=np.uint16))) << 10).astype(np.uint16)
        return bits.view(np.uint8)
    n_blocks = n // QK
    ts = BLOCK_SIZES[ggml_type][1]
    raw = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    # q spans [-8, 7] (4-bit), [-16, 15] (5-bit) or [-128, 127] (8-bit) around its zero point
    half = {GGMLType.Q8_0: 128, GGMLType.Q5_0: 16, GGMLType.Q5_1: 16, GGMLType.Q4_0: 8, GGMLType.Q4_1: 8}[ggml_type]
    d = np.float16(sigma * math.sqrt(3) / half)  # uniform q*d has rms sigma
    raw[:, 0:2] = np.frombuffer(d.tobytes(), np.uint8)
    if ggml_type in (GGMLType.Q4_1, GGMLType.Q5_1):  # m = -half*d centres q*d + m
        raw[:, 2:4] = np.frombuffer(np.float16(-half * float(d)).tobytes(), np.uint8)
    assert raw.size == tensor_nbytes(ggml_type, shape)
    return raw.reshape(-1)


def write_fast_random_model(path: str | os.PathLike, arch: str, ftype: str, seed: int = 0) -> None:
    """architectures.write_random_model's file (same tensors, types, header), weights as random blocks."""
    import dataclasses

    from qwhisper.architectures import (
        ARCHITECTURES,
        F32_TENSORS,
        converted_type,
        header_ftype,
        placeholder_vocab,
        sinusoids,
    )
    from qwhisper.audio import mel_filters
    from qwhisper.ggml_file import TensorInfo, expected_tensor_shapes, write_ggml
    from qwhisper.quants import QUANTIZED_TYPES, GGMLType, parse_type, quantize

    qtype = parse_type(ftype)
    hp = dataclasses.replace(ARCHITECTURES[arch], ftype=header_ftype(qtype))
    rng = np.random.default_rng(seed)

    def tensors():
        for name, shape in expected_tensor_shapes(hp).items():
            t = converted_type(name, shape, GGMLType.F16)
            if qtype in QUANTIZED_TYPES and len(shape) == 2 and name not in F32_TENSORS:
                t = qtype
            if t == GGMLType.F32:
                if name == "encoder.positional_embedding":
                    x = sinusoids(*shape)
                elif name.endswith(("ln.weight", "ln_post.weight")):
                    x = np.ones(shape, np.float32)
                else:
                    x = rng.normal(0, 0.02, shape).astype(np.float32)
                yield TensorInfo(name, t, shape, 0, quantize(x, t))
            else:
                yield TensorInfo(name, t, shape, 0, _random_blocks(rng, t, shape))

    write_ggml(path, hp, mel_filters(hp.n_mels), placeholder_vocab(hp), tensors())


def fast_random_model(folder: str | os.PathLike, arch: str, ftype: str) -> Path:
    """folder/ggml-{arch}-{ftype}-random-fast.bin (the name main() gives it), written by
    write_fast_random_model unless it is there already."""
    path = Path(folder) / f"ggml-{arch}-{ftype}-random-fast.bin"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_fast_random_model(path, arch, ftype)
    return path


def _generate(job: tuple[str, str, str, str]) -> tuple[str, float]:
    path, arch, ftype, generator = job
    t0 = time.perf_counter()
    if not Path(path).exists():
        if generator == "reference":
            from qwhisper.architectures import write_random_model

            write_random_model(path, arch, ftype)
        else:
            write_fast_random_model(path, arch, ftype)
    return path, time.perf_counter() - t0


# --- timing --------------------------------------------------------------------------------------

def _median_ms(fn, reps: int, warmup: int = 2) -> float:
    """Median over reps of fn()'s GPU time in ms, CUDA events around each call."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return float(np.median(times))


def _tensor_bytes(module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _bench_eager(r: dict, model, xa, sot, decode_steps, reps: int, steps: int, g) -> None:
    """Eager (unfused, no graph) decode, old-logits A/B, 5-beam step and 256-token prompt, into r."""
    import torch
    import torch.nn.functional as F

    dev = xa.device
    cache = model.new_kv_cache(xa)
    model.logits(sot, cache)
    r["decode_ms_per_token"] = _median_ms(decode_steps(cache, 1), reps) / steps

    # A/B: the vocabulary projection as it was (dequantize the tied embedding every step)
    te = model.decoder.token_embedding
    te.forward = lambda x: F.linear(x, te.dequantized(x.dtype))
    try:
        r["decode_ms_per_token_old_logits"] = _median_ms(decode_steps(cache, 1), reps) / steps
    finally:
        del te.forward

    cache5 = model.new_kv_cache(xa, n_group=BEAMS)
    model.logits(sot.repeat(BEAMS, 1), cache5)
    r["batch5_ms_per_token"] = _median_ms(decode_steps(cache5, BEAMS), reps) / steps / BEAMS

    prompt = torch.randint(0, 50000, (1, PROMPT_TOKENS), device=dev, generator=g)

    def run_prompt():
        cache.offset = 0
        model.logits(prompt, cache)
    r["prompt_ms_per_token"] = _median_ms(run_prompt, reps) / PROMPT_TOKENS


# --ablate: the graphed one-row fused step with module switches of quants/triton_decoder.py
# (and triton_ops.PREFETCH_L2) changed, each against the default
ABLATIONS = {
    "no_pdl": {"PDL": False},
    "no_prefetch": {"PREFETCH_L2": False},
    "no_pdl_no_prefetch": {"PDL": False, "PREFETCH_L2": False},
    "2_warps": {"STEP_WARPS": 2},
    "4_warps_640_programs": {"STEP_WARPS": 4, "STEP_MIN_PROGRAMS": 640},
    "self_attn_1_warp": {"ATTN_WARPS": 1},
    "cross_attn_4_warps": {"CROSS_ONE_ROW_WARPS": 4},
    "cross_attn_4_warps_64_keys": {"CROSS_ONE_ROW_WARPS": 4, "CROSS_SPLIT_S": 64},
    "cross_attn_16_keys": {"CROSS_SPLIT_S": 16},
}


def bench_file(path: str, reps: int, batch: int, steps: int, decode_only: bool = False, ablate: bool = False) -> dict:
    import torch

    from qwhisper.loader import load_model
    from qwhisper.quants import triton_ops

    dev = torch.device("cuda")
    triton_ops._scratch.clear()  # the dequantize buffer of the previous model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    model = load_model(path, dev)
    torch.cuda.synchronize()
    r: dict = {"file_bytes": os.path.getsize(path), "load_s": time.perf_counter() - t0,
               "weights_vram_bytes": _tensor_bytes(model),
               "decoder_weight_bytes": _tensor_bytes(model.decoder)}
    dims = model.dims
    g = torch.Generator(device=dev).manual_seed(0)
    mel1 = torch.randn(1, dims.n_mels, 2 * dims.n_audio_ctx, device=dev, generator=g)
    melb = None if decode_only else torch.randn(batch, dims.n_mels, 2 * dims.n_audio_ctx, device=dev, generator=g)
    with torch.no_grad():
        if not decode_only:
            r["encoder_ms"] = _median_ms(lambda: model.embed_audio(mel1), reps)
            r["encoder_batch_ms_per_window"] = _median_ms(lambda: model.embed_audio(melb), max(3, reps // 3)) / batch
        xa = model.embed_audio(mel1)
        sot = torch.tensor([[1, 2, 3, 4]], device=dev)  # a 4-token start (ids only index the embedding)

        def decode_steps(cache, rows: int, start: int = 4, n: int = steps):
            """n single-token steps from position `start` (default: after the 4-token start);
            cache rewound each time."""
            tok = torch.full((rows, 1), 440, dtype=torch.long, device=dev)

            def run():
                cache.offset = start
                for _ in range(n):
                    model.logits(tok, cache)
            return run

        model.decoder.cuda_graphs = False  # eager unfused steps first
        model.decoder.fused_step = False
        if not decode_only:
            _bench_eager(r, model, xa, sot, decode_steps, reps, steps, g)

        # one-token steps replayed from the model's CUDA graphs (model._GraphedStep): the unfused
        # step (baseline), then the production path, the fused kernels (quants/triton_decoder.py)
        model.decoder.cuda_graphs = True
        for fused, tag in ((False, "_unfused"), (True, "")):
            model.decoder.fused_step = fused  # (drops the captured graphs: each set recaptures)
            gcache = model.new_kv_cache(xa)
            model.logits(sot, gcache)
            r[f"graph_decode_ms_per_token{tag}"] = _median_ms(decode_steps(gcache, 1), reps) / steps
            if fused:  # whisper-bench's decode figure: one-token steps at positions 0 .. 255
                r["graph_decode_ms_per_token_0_255"] = _median_ms(
                    decode_steps(gcache, 1, start=0, n=WHISPER_BENCH_STEPS), reps) / WHISPER_BENCH_STEPS
            gcache5 = model.new_kv_cache(xa, n_group=BEAMS)
            model.logits(sot.repeat(BEAMS, 1), gcache5)
            r[f"graph_batch5_ms_per_token{tag}"] = _median_ms(decode_steps(gcache5, BEAMS), reps) / steps / BEAMS
            del gcache, gcache5
            gc.collect()  # frees the buffer sets for the next round
        # the 256-token prompt as transcription feeds it on CUDA: replayed from the graph of its
        # bucket (model._GraphedStep.prompt), logits of two positions
        prompt = torch.randint(0, 50000, (1, PROMPT_TOKENS), device=dev, generator=g)
        gcache = model.new_kv_cache(xa)

        def run_graph_prompt():
            gcache.offset = 0
            model.logits(prompt, gcache, logit_positions=[0, -1])
        r["graph_prompt_ms_per_token"] = _median_ms(run_graph_prompt, reps) / PROMPT_TOKENS
        del gcache
        # the fused kernels at 5 rows (production keeps beams unfused: model.FUSED_STEP_MAX_ROWS)
        import qwhisper.model as qm

        default_rows, qm.FUSED_STEP_MAX_ROWS = qm.FUSED_STEP_MAX_ROWS, 8
        try:
            model.decoder.drop_graphs()
            gcache5 = model.new_kv_cache(xa, n_group=BEAMS)
            model.logits(sot.repeat(BEAMS, 1), gcache5)
            r["graph_batch5_ms_per_token_fused_kernels"] = _median_ms(decode_steps(gcache5, BEAMS), reps) / steps / BEAMS
            del gcache5
        finally:
            qm.FUSED_STEP_MAX_ROWS = default_rows
            model.decoder.drop_graphs()
        if ablate:  # the graphed fused step with one of its choices switched off or changed
            from qwhisper.quants import triton_decoder

            def owner(k):  # PREFETCH_L2 is triton_ops' switch, the rest triton_decoder's
                return triton_ops if k == "PREFETCH_L2" else triton_decoder

            for tag, settings in ABLATIONS.items():
                saved = {k: getattr(owner(k), k) for k in settings}
                try:
                    for k, v in settings.items():
                        setattr(owner(k), k, v)
                    model.decoder.drop_graphs()
                    gcache = model.new_kv_cache(xa)
                    model.logits(sot, gcache)
                    r[f"graph_decode_ms_per_token_{tag}"] = _median_ms(decode_steps(gcache, 1), reps) / steps
                    del gcache
                finally:
                    for k, v in saved.items():
                        setattr(owner(k), k, v)
                    model.decoder.drop_graphs()
        if any(st.failed for sets in model.decoder._graphed.values() for st in sets):
            r["graph_error"] = "capture failed: eager steps were timed"
        if model.decoder._fused_error or not model.decoder._fused_ran:
            r["fused_error"] = model.decoder._fused_error or "the fused step did not run"
    r["peak_vram_bytes"] = torch.cuda.max_memory_allocated() - base
    return r


# --- report --------------------------------------------------------------------------------------

def environment() -> dict:
    import torch
    import triton

    commit = os.environ.get("QWHISPER_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
    props = torch.cuda.get_device_properties(0)
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "commit": commit or "unknown",
            "gpu": torch.cuda.get_device_name(0), "sms": props.multi_processor_count,
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
            "python": platform.python_version()}


def _ms(r: dict, key: str, digits: int = 3) -> str:
    return f"{r[key]:.{digits}f}" if key in r else "-"


def table(results: dict, env: dict) -> str:
    lines = [(f"### {env['date']}, commit {env['commit']}, {env['gpu']} ({env['sms']} SMs), torch {env['torch']}, "
             f"triton {env['triton']}, CUDA {env['cuda']}"), "",
             ("Random weights of the real shapes; ms. whisper.cpp columns: its whisper-bench on an **H200** "
             "(shared/DESIGN.md), not this card."), "",
             ("Eager columns: the unfused step. CUDA graph columns: the production step (fused kernels of "
              "quants/triton_decoder.py for one row, unfused for 5 beams), the unfused one's graph as the baseline, "
              "and the fused kernels forced on for 5 rows."), "",
             ("| model | type | encoder b1 | encoder per window b8 | decode/token | decode/token, old logits "
             "| decode/token, CUDA graph | decode/token, CUDA graph, positions 0-255 | decode/token, CUDA graph, unfused "
             "| 5-beam step/token | 5-beam, CUDA graph "
             "| 5-beam, CUDA graph, unfused | 5-beam, CUDA graph, fused kernels | prompt/token | prompt/token, CUDA graph | decoder weights GB/s (graph) "
             "| VRAM weights / file MB | peak MB | whisper.cpp H200: enc, dec, 5-batch, prompt |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (arch, ftype), r in results.items():
        if "error" in r:
            lines.append(f"| {arch} | {ftype} | error: {r['error']} |" + " |" * 16)
            continue
        g = r.get("graph_decode_ms_per_token")
        ref = WHISPER_CPP_H200.get((arch, ftype))
        cells = [arch, ftype, _ms(r, "encoder_ms", 2), _ms(r, "encoder_batch_ms_per_window", 2),
                 _ms(r, "decode_ms_per_token"), _ms(r, "decode_ms_per_token_old_logits"),
                 f"{g:.3f}" if g else "-", _ms(r, "graph_decode_ms_per_token_0_255"),
                 _ms(r, "graph_decode_ms_per_token_unfused"), _ms(r, "batch5_ms_per_token"),
                 _ms(r, "graph_batch5_ms_per_token"), _ms(r, "graph_batch5_ms_per_token_unfused"),
                 _ms(r, "graph_batch5_ms_per_token_fused_kernels"),
                 _ms(r, "prompt_ms_per_token", 4), _ms(r, "graph_prompt_ms_per_token", 4),
                 f"{r['decoder_weight_bytes'] / (g * 1e-3) / 1e9:.0f}" if g else "-",
                 f"{r['weights_vram_bytes'] / 1e6:.0f} / {r['file_bytes'] / 1e6:.0f}", f"{r['peak_vram_bytes'] / 1e6:.0f}",
                 " / ".join(f"{v:g}" for v in ref) if ref else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--dir", default="/tmp/qwhisper-bench", help="where the random model files are written")
    p.add_argument("--generator", default="fast", choices=["fast", "reference"])
    p.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1), help="processes writing files")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=8, help="windows of the batched encoder measure")
    p.add_argument("--steps", type=int, default=32, help="decoder steps per decode measure")
    p.add_argument("--out", default=None, help="folder for bench_model.json / .md")
    p.add_argument("--append", default=None, help="append the table to this markdown file")
    p.add_argument("--keep-files", action="store_true", help="leave the random model files in --dir")
    p.add_argument("--decode-only", action="store_true",
                   help="only the graphed decoder steps (fused and unfused): no encoder, eager or prompt measures")
    p.add_argument("--sdpa-self-attention", action="store_true",
                   help="unfused one-token steps (beams) attend over the whole cache with SDPA (model.CACHED_ATTENTION_TRITON off)")
    p.add_argument("--ablate", action="store_true",
                   help="also the graphed fused step without programmatic dependent launch, and without L2 prefetch")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_model: needs a CUDA GPU", file=sys.stderr)
        return 2
    env = environment()
    print(json.dumps(env), flush=True)
    archs, types = args.archs.split(","), args.types.split(",")
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    jobs = [(str(Path(args.dir) / f"ggml-{a}-{t}-random-{args.generator}.bin"), a, t, args.generator)
            for a in archs for t in types]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        gen = dict(pool.map(_generate, jobs))
    print(f"random files ({args.generator}) written in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{Path(k).name} {v:.1f} s" for k, v in gen.items()), flush=True)
    results = {}
    for path, arch, ftype, _ in jobs:
        t1 = time.perf_counter()
        try:
            if args.sdpa_self_attention:
                import qwhisper.model as qm

                qm.CACHED_ATTENTION_TRITON = False
            r = bench_file(path, args.reps, args.batch, args.steps, args.decode_only, args.ablate)
        except Exception as e:  # noqa: BLE001 -- one model's failure must not end the run
            r = {"error": f"{type(e).__name__}: {e}"[:300]}
        torch.cuda.empty_cache()
        r["generate_s"] = gen[path]
        results[(arch, ftype)] = r
        print(f"{arch} {ftype} ({time.perf_counter() - t1:.1f} s): "
              + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
        if not args.keep_files:
            Path(path).unlink(missing_ok=True)
    text = table(results, env)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_model.json").write_text(json.dumps(
            {"env": env, "results": {f"{a} {t}": r for (a, t), r in results.items()}}, indent=1))
        (Path(args.out) / "bench_model.md").write_text(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
