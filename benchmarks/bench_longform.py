"""Long-form speed: RTFx (audio s / wall s), peak VRAM and WER of a 10-minute input, the
sequential seek loop against the batched pipeline (qwhisper.batched) at several batch sizes.

Two steps, as bench_transcribe.py: the GPU machine has no PyAV (no audio decoding), no network and
no qwhisper install (run from the checkout with PYTHONPATH=.).

    # 1. here: benchmarks/evalsets.devlong() (619 s of dense real English speech: the English files
    #    of shared/data/speech concatenated, repeated past 600 s) as int16 samples (exact: load_audio's
    #    s16 / 32768) + the reference text of each utterance and where it starts
    python benchmarks/bench_longform.py pack --out .gpurun/devlong.npz

    # 2a. a real GGML file: sequential (batch size 0) and batched, each transcription timed whole
    #     (log-mel, language, chunking, encoder, decoder, fallback, segments), WER against the reference.
    #     The file must travel: shared/models/... where the checkout has shared/, else copy
    #     /work/shared/models/ggml-tiny.en-q5_1.bin (31 MB) beside the .npz (19 MB) under .gpurun/
    PYTHONPATH=. python benchmarks/bench_longform.py run --audio .gpurun/devlong.npz \
        --model .gpurun/ggml-tiny.en-q5_1.bin --device cuda --batch-sizes 0,8,16,32 --out $OUT/longform-tiny.json

    # 2b. large-v3 shapes on random weights (bench_model.py's fast generator; seconds to write):
    #     every window decodes exactly --tokens 112 tokens (<|endoftext|> suppressed, sample_len 112,
    #     one temperature, no thresholds, no tails) so that the work per window is fixed whatever the
    #     weights say: decoder calls = 112 x batches, row steps = 112 x windows; "sequential" here is
    #     the batched pipeline at batch size 1 (the same chunks, one at a time)
    PYTHONPATH=. python benchmarks/bench_longform.py synthetic --audio .gpurun/devlong.npz \
        --arch large-v3 --type q5_0 --dir /tmp/qwhisper-bench --device cuda --batch-sizes 1,8,16,32 \
        --out $OUT/longform-large-v3-q5_0.json

    # here, on the CPU (tiny.en, the first 120 s; one thread)
    python benchmarks/bench_longform.py run --audio .gpurun/devlong.npz --model tiny.en --device cpu \
        --threads 1 --limit-seconds 120 --batch-sizes 0,4,8 --warmup short

Every mode is run once untimed first (--warmup full: the whole input, so that Triton kernels and
the CUDA graph of every batch shape exist; short: the first 35 s; none), then --repeat times, the
fastest kept. Times are wall clock with the GPU synchronised at the end; "encoder s" is the part
inside model.embed_audio (synchronised around each call), the rest is decoding and bookkeeping.
Peak VRAM: torch.cuda.max_memory_allocated during the timed runs, above what was allocated before
(the model's weights). WER: qwhisper.normalizer.wer (openai's English normaliser) of the whole
transcript against the reference, in percent. The run prints a markdown table and writes --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(REPO)))

SAMPLE_RATE = 16000


# --- pack ----------------------------------------------------------------------------------------

def pack(out: str, min_seconds: float = 600.0) -> None:
    """devlong as int16 with per-utterance references and start samples."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import evalsets

    from qwhisper.audio import load_audio

    parts = [(load_audio(u.path), u.reference) for u in evalsets.speech(english_only=True)]
    audio, refs, starts, total = [], [], [], 0
    while total < min_seconds * SAMPLE_RATE:  # evalsets.devlong's loop, keeping the boundaries
        for a, r in parts:
            starts.append(total)
            audio.append(a)
            refs.append(r)
            total += len(a)
    x = np.concatenate(audio)
    expected, _ = evalsets.devlong(min_seconds)
    assert np.array_equal(x, expected), "pack's concatenation differs from evalsets.devlong()"
    s16 = np.round(x * 32768.0).astype(np.int16)
    assert np.array_equal(s16.astype(np.float32) / np.float32(32768.0), x)  # exact round trip
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, audio=s16, starts=np.array(starts, np.int64), meta=json.dumps({"references": refs}))
    print(f"{out}: {len(refs)} utterances, {len(x) / SAMPLE_RATE:.1f} s")


def load_pack(path: str, limit_seconds: float = 0.0) -> tuple[np.ndarray, str]:
    """(float32 samples, reference text); with limit_seconds, the utterances that start and end
    before it (a cut at an utterance boundary, so the reference matches the audio)."""
    z = np.load(path)
    audio = z["audio"].astype(np.float32) / np.float32(32768.0)
    starts = [int(s) for s in z["starts"]] + [len(audio)]
    refs = json.loads(str(z["meta"]))["references"]
    n = len(refs)
    if limit_seconds > 0:
        n = max(1, sum(1 for e in starts[1:] if e <= limit_seconds * SAMPLE_RATE))
    return audio[: starts[n]], " ".join(refs[:n])


# --- run -----------------------------------------------------------------------------------------

def environment(device: str) -> dict:
    import subprocess

    import torch

    commit = os.environ.get("QWHISPER_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True, check=False).stdout.strip()
        except OSError:  # no git on the machine
            pass
    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "commit": commit or "unknown", "python": platform.python_version(), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        import triton

        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, triton=triton.__version__)
    return env


class _EncoderTimer:
    """Wraps model.embed_audio: seconds spent inside (synchronised), windows encoded, calls."""

    def __init__(self, model, sync):
        self.model, self.sync = model, sync
        self.inner = model.embed_audio
        self.seconds, self.windows, self.calls = 0.0, 0, 0

    def __call__(self, mel):
        self.sync()
        t0 = time.perf_counter()
        out = self.inner(mel)
        self.sync()
        self.seconds += time.perf_counter() - t0
        self.windows += mel.shape[0]
        self.calls += 1
        return out

    def reset(self):
        self.seconds, self.windows, self.calls = 0.0, 0, 0


class _StepCounter:
    """Wraps model.logits: decoder calls (one per step of a batch, the prompt pass included) and
    rows x calls (each window's steps, summed)."""

    def __init__(self, model):
        self.inner = model.logits
        self.calls = self.row_steps = 0

    def __call__(self, tokens, cache, alignment_heads=None, logit_positions=None):
        # the model's own signature: decoding.Inference looks for logit_positions in it
        self.calls += 1
        self.row_steps += tokens.shape[0]
        kwargs = {k: v for k, v in (("alignment_heads", alignment_heads), ("logit_positions", logit_positions))
                  if v is not None}
        return self.inner(tokens, cache, **kwargs)


def transcribe(whisper, samples: np.ndarray, options, batch_size: int, vad=None):
    """Segments of one transcription: the seek loop (batch_size 0), else the batched pipeline
    with `batch_size` windows per batch (1 included: the same chunks one at a time)."""
    from qwhisper.batched import BatchedPipeline
    from qwhisper.transcribe import transcribe

    if batch_size == 0:
        segments, _ = transcribe(whisper, samples, dataclasses.replace(options, batch_size=0), verbose=False)
        return list(segments)
    pipeline = BatchedPipeline(whisper, dataclasses.replace(options, batch_size=batch_size), vad=vad,
                               verbose=False)
    return [s for _, segs in pipeline.run([pipeline.open(samples)]) for s in segs]


def measure(whisper, samples: np.ndarray, reference: str | None, options, batch_sizes: list[int], device: str,
            warmup: str, repeat: int, vad=None) -> list[dict]:
    import torch

    from qwhisper.normalizer import wer

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    timer = _EncoderTimer(whisper.model, sync)
    whisper.model.embed_audio = timer  # instance attributes: shadow the methods for this model only
    steps = whisper.model.logits = _StepCounter(whisper.model)
    audio_s = len(samples) / SAMPLE_RATE
    rows = []
    try:
        for bs in batch_sizes:
            if warmup != "none":
                transcribe(whisper, samples if warmup == "full" else samples[: 35 * SAMPLE_RATE], options, bs, vad)
            sync()
            if cuda:
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            best = None
            for _ in range(repeat):
                timer.reset()
                steps.calls = steps.row_steps = 0
                t0 = time.perf_counter()
                segments = transcribe(whisper, samples, options, bs, vad)
                sync()
                dt = time.perf_counter() - t0
                if best is None or dt < best["seconds"]:
                    best = {"seconds": dt, "encoder_seconds": timer.seconds, "windows": timer.windows,
                            "encoder_calls": timer.calls, "decoder_calls": steps.calls,
                            "decoder_row_steps": steps.row_steps, "segments": segments}
            segments = best.pop("segments")
            text = "".join(s.text for s in segments).strip()
            row = {"batch_size": bs, "mode": "sequential" if bs == 0 else f"batched {bs}", **best,
                   "rtfx": audio_s / best["seconds"], "n_segments": len(segments),
                   "tokens": sum(len(s.tokens) for s in segments),
                   "fallback_segments": sum(1 for s in segments if s.temperature > options.temperature[0]),
                   "text": text,
                   "monotonic": all(a.end <= b.start for a, b in itertools.pairwise(segments))
                   and all(0 <= s.start < s.end <= audio_s + 1e-6 for s in segments)}
            if reference is not None:
                row["wer"] = 100.0 * wer(reference, text)
            if cuda:
                row["peak_vram_bytes"] = torch.cuda.max_memory_allocated() - base
            rows.append(row)
            print(_row(row), flush=True)
    finally:
        del whisper.model.embed_audio, whisper.model.logits
    return rows


HEADER = ("| mode | wall s | RTFx | encoder s (windows) | decoder calls (row steps) | segments | WER % | peak VRAM MB |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")


def _row(r: dict) -> str:
    wer = f"{r['wer']:.2f}" if "wer" in r else "-"
    vram = f"{r['peak_vram_bytes'] / 1e6:.0f}" if "peak_vram_bytes" in r else "-"
    return (f"| {r['mode']} | {r['seconds']:.2f} | {r['rtfx']:.1f} | {r['encoder_seconds']:.2f} ({r['windows']}) | "
            f"{r['decoder_calls']} ({r['decoder_row_steps']}) | {r['n_segments']} | {wer} | {vram} |")


def report(result: dict) -> str:
    env = result["env"]
    where = (f"{env['gpu']}, CUDA {env.get('cuda')}, triton {env.get('triton')}" if "gpu" in env
             else f"CPU {env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads)")
    title = (f"{result['label']}: {result['audio_seconds']:.1f} s of audio, {where}, torch {env['torch']}, "
             f"commit {env['commit']}, {env['date']}")
    lines = [title, "", HEADER] + [_row(r) for r in result["rows"]]
    return "\n".join(lines) + "\n"


def _threads(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def run(args: argparse.Namespace) -> dict:
    _threads(args)
    from qwhisper.transcribe import TranscribeOptions, WhisperModel

    env = environment(args.device)  # before: the commit of the code that runs
    samples, reference = load_pack(args.audio, args.limit_seconds)
    whisper = WhisperModel(args.model, device=args.device)
    _tuning(whisper, args)
    options = TranscribeOptions(language="en")  # defaults otherwise (greedy + fallback, timestamps)
    rows = measure(whisper, samples, reference, options, args.batch_sizes, args.device, args.warmup, args.repeat)
    return {"env": env, "label": f"{Path(str(whisper.path)).name} (real weights)",
            "audio_seconds": len(samples) / SAMPLE_RATE, "rows": rows}


def _tuning(whisper, args: argparse.Namespace) -> None:
    """--graph-max-rows, --cache-dequantized-decoder, --sdpa-self-attention: switches for the batched step."""
    import qwhisper.model as qm

    if args.graph_max_rows:
        qm.GRAPH_MAX_ROWS = args.graph_max_rows
    if args.cache_dequantized_decoder:  # float16 copies of the decoder's weights, read by cuBLAS
        whisper.model.cache_decoder_weights()
    if args.sdpa_self_attention:  # one-token self-attention over the whole masked cache, as before
        qm.CACHED_ATTENTION_TRITON = False


def synthetic_model(folder: str, arch: str, ftype: str, tokens: int, device: str):
    """(WhisperModel, TranscribeOptions, VadOptions) of the synthetic run: random weights of a named
    architecture (folder/random-{arch}-{ftype}.bin, written once) and options under which every
    window decodes exactly `tokens` tokens. longform_idle.py profiles the same run."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_model import write_fast_random_model

    from qwhisper.batched import VadOptions
    from qwhisper.transcribe import TranscribeOptions, WhisperModel

    path = Path(folder) / f"random-{arch}-{ftype}.bin"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_fast_random_model(path, arch, ftype)
        print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    whisper = WhisperModel(str(path), device=device)
    eot = whisper.tokenizer.eot
    # EOT suppressed from the first step on, sample_len tokens, one temperature, nothing skipped:
    # every window costs the same, exactly `tokens` steps after the prompt
    options = TranscribeOptions(language="en", temperature=0.0, sample_len=tokens, suppress_tokens=(-1, eot),
                                compression_ratio_threshold=None, logprob_threshold=None,
                                no_speech_threshold=None)
    # no tails (the garbage timestamps of random weights would add windows): one window a chunk
    return whisper, options, VadOptions(tail_margin_s=None)


def synthetic(args: argparse.Namespace) -> dict:
    """Random weights of a named architecture, exactly --tokens decoder steps per window."""
    _threads(args)
    whisper, options, vad = synthetic_model(args.dir, args.arch, args.type, args.tokens, args.device)
    env = environment(args.device)
    samples, _ = load_pack(args.audio, args.limit_seconds)
    _tuning(whisper, args)
    rows = measure(whisper, samples, None, options, args.batch_sizes, args.device, args.warmup, args.repeat, vad)
    for r in rows:
        r["tokens_per_window"] = args.tokens
    return {"env": env, "label": f"{args.arch} {args.type} random weights, {args.tokens} tokens "
            f"per window", "audio_seconds": len(samples) / SAMPLE_RATE, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--out", required=True)
    a.add_argument("--min-seconds", type=float, default=600.0)
    for name in ("run", "synthetic"):
        r = sub.add_parser(name)
        r.add_argument("--audio", required=True, help="the .npz written by `pack`")
        r.add_argument("--device", default="cuda")
        r.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")],
                       default=[0, 8, 16, 32] if name == "run" else [1, 8, 16, 32],
                       help="comma list; 0: the sequential seek loop")
        r.add_argument("--limit-seconds", type=float, default=0.0, help="only the utterances inside the first N s")
        r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
        r.add_argument("--warmup", choices=["full", "short", "none"], default="full")
        r.add_argument("--repeat", type=int, default=1, help="timed runs per mode, the fastest kept")
        r.add_argument("--out", default=None, help="JSON of the results")
        r.add_argument("--graph-max-rows", type=int, default=0, help="model.GRAPH_MAX_ROWS for this run (0: default)")
        r.add_argument("--cache-dequantized-decoder", action="store_true",
                       help="keep float16 copies of the decoder's quantized weights (cuBLAS reads them)")
        r.add_argument("--sdpa-self-attention", action="store_true",
                       help="one-token self-attention by SDPA over the whole cache (model.CACHED_ATTENTION_TRITON off)")
        if name == "run":
            r.add_argument("--model", required=True, help="GGML file or model name")
        else:
            r.add_argument("--arch", default="large-v3")
            r.add_argument("--type", default="q5_0")
            r.add_argument("--dir", default="/tmp/qwhisper-bench", help="where the random model file is written")
            r.add_argument("--tokens", type=int, default=112, help="decoder steps per window")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.out, args.min_seconds)
        return 0
    result = run(args) if args.cmd == "run" else synthetic(args)
    text = report(result)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
