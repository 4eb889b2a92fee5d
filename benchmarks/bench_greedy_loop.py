"""Greedy decode loop speed: qwhisper.greedy_loop (static state, one CUDA graph per step, "all
finished" read every 8 steps) against the reference loop (DecodingTask._main_loop, fast_greedy
off), on the same encoded 30-s windows of real speech, in one process; checks that both give the
same tokens.

    # here, CPU, one thread (tiny.en): also splits the time into model steps and loop overhead
    python benchmarks/bench_greedy_loop.py --model tiny.en --device cpu --threads 1 --windows 4

    # GPU (no PyAV there: the devlong .npz of `bench_longform.py pack`, PYTHONPATH=. from the checkout)
    PYTHONPATH=. python benchmarks/bench_greedy_loop.py --audio .gpurun/devlong.npz \
        --model .gpurun/ggml-tiny.en-q5_1.bin --device cuda --windows 16 --batch-sizes 1,4

Windows: consecutive 30-s windows of the audio (--audio .npz, else the wavs of
shared/data/speech concatenated). Each mode decodes every window once untimed (CUDA graphs, kernels), then
--repeat times; the fastest run is kept. Tokens = sampled tokens + EOT per window. On the CPU
the model's forward passes are timed (synchronous there) and subtracted: "loop ms/token" is the
Python/torch work around the model (filters, argmax, bookkeeping). On CUDA only wall clock per
token is meaningful (the GPU is synchronised at the end of each window).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(REPO)))

SAMPLE_RATE = 16000
WINDOW = 30 * SAMPLE_RATE


def load_windows(audio_path: str | None, n: int) -> list[np.ndarray]:
    if audio_path:
        z = np.load(audio_path)
        audio = z["audio"].astype(np.float32) / np.float32(32768.0)
    else:
        from qwhisper.audio import load_audio

        speech = Path(os.environ.get("QWHISPER_SHARED", "/work/shared")) / "data" / "speech"
        audio = np.concatenate([load_audio(p) for p in sorted(speech.glob("*.wav"))])
    return [audio[i * WINDOW: (i + 1) * WINDOW] for i in range(min(n, len(audio) // WINDOW))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--audio", default=None, help="the .npz of bench_longform.py pack (default: shared speech wavs)")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--batch-sizes", default="1", help="windows decoded together, comma-separated")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--without-timestamps", action="store_true")
    args = ap.parse_args()

    import torch

    from qwhisper.audio import N_FRAMES, log_mel_spectrogram_torch, pad_or_trim
    from qwhisper.decoding import DecodingOptions, DecodingTask
    from qwhisper.transcribe import WhisperModel

    if args.threads:
        torch.set_num_threads(args.threads)
    wm = WhisperModel(args.model, args.device)
    model, tok = wm.model, wm.tokenizer
    cuda = torch.device(args.device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    windows = load_windows(args.audio, args.windows)
    mels = torch.stack([pad_or_trim(log_mel_spectrogram_torch(torch.from_numpy(w), wm.mel_filters), N_FRAMES)
                        for w in windows])
    features = model.embed_audio(mels.to(model.device))
    options = DecodingOptions(language="en", without_timestamps=args.without_timestamps)

    model_s = [0.0]
    logits = model.logits

    @functools.wraps(logits)
    def timed_logits(*a, **k):  # CPU: synchronous, so this is the model's time
        t = time.perf_counter()
        out = logits(*a, **k)
        model_s[0] += time.perf_counter() - t
        return out

    model.logits = timed_logits
    print(f"{args.model} on {args.device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}), "
          f"{len(windows)} windows, load {os.getloadavg()[0]:.2f}")
    print("| loop | batch | tokens | ms/token | model ms/token | loop ms/token |")
    print("|---|---|---|---|---|---|")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        results = {}
        for fast in (False, True):
            DecodingTask.fast_greedy = fast
            best = None
            for rep in range(args.repeat + 1):
                model_s[0] = 0.0
                out, t0 = [], time.perf_counter()
                for i in range(0, len(windows), batch):
                    out += DecodingTask(model, tok, options).run(features[i: i + batch])
                    sync()
                wall = time.perf_counter() - t0
                if rep and (best is None or wall < best[0]):
                    best = (wall, model_s[0])
            results[fast] = [r.tokens for r in out]
            n = sum(len(r.tokens) + 1 for r in out)
            wall, ms = best
            split = "- | -" if cuda else f"{1e3 * ms / n:.3f} | {1e3 * (wall - ms) / n:.3f}"
            print(f"| {'greedy_loop' if fast else 'reference'} | {batch} | {n} | {1e3 * wall / n:.3f} | {split} |")
        print(f"identical tokens (batch {batch}): {results[True] == results[False]}")
        if not cuda:
            replay_overhead(model, tok, features, options, batch, args.repeat)
    DecodingTask.fast_greedy = True


class Replay:
    """The model's recorded logits, returned in order (no model work): times the loop alone."""

    def __init__(self, model, recorded):
        self.dims, self.device, self.recorded = model.dims, model.device, recorded

    def new_kv_cache(self, audio_features, n_group=1):
        from types import SimpleNamespace

        return SimpleNamespace(offset=0)

    def logits(self, tokens, cache, logit_positions=None):
        cache.offset += tokens.shape[1]
        return self.recorded.pop(0).clone()


def replay_overhead(model, tok, features, options, batch: int, repeat: int) -> None:
    """CPU: the loop's own ms/token, each loop fed the logits the real model gave it (recorded)."""
    from qwhisper.decoding import DecodingTask

    recorded = []
    logits = model.logits

    def record(*a, **k):
        out = logits(*a, **k)
        recorded.append(out.clone())
        return out

    model.logits = functools.wraps(logits)(record)
    batches = [features[i: i + batch] for i in range(0, len(features), batch)]
    for fast in (False, True):
        DecodingTask.fast_greedy = fast
        per_batch = []
        for f in batches:
            recorded.clear()
            n = sum(len(r.tokens) + 1 for r in DecodingTask(model, tok, options).run(f))
            per_batch.append((f, list(recorded), n))
        best = None
        for _ in range(max(repeat, 3)):
            wall = 0.0
            for f, rec, n in per_batch:
                replay = Replay(model, list(rec))
                t0 = time.perf_counter()
                DecodingTask(replay, tok, options).run(f)
                wall += time.perf_counter() - t0
            best = wall if best is None else min(best, wall)
        n = sum(n for _, _, n in per_batch)
        print(f"| {'greedy_loop' if fast else 'reference'} (replayed logits) | {batch} | {n} | - | 0 | "
              f"{1e3 * best / n:.3f} |")
    model.logits = logits


if __name__ == "__main__":
    main()
