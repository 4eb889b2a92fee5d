"""`qwhisper detect-language AUDIO... [--model base] [--top 5] [--json]`: the spoken language.

The first 30 s of each file (log-mel of the audio + 30 s of zeros, cut to one window, as
`transcribe` and whisper.cpp see it) are encoded, and the decoder's distribution after
<|startoftranscript|>, restricted to the language tokens, is the answer (openai's
`detect_language`, qwhisper.decoding.detect_language). Needs a multilingual model.

Output, one line per file: `FILE: es 0.991 (spanish), en 0.003 (english), ...`, or with
--json one JSON object per line: {"file", "language", "probability", "top": [[code, p], ...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from .decoding import OptionError
from .tokenizer import LANGUAGES


@torch.no_grad()
def language_probabilities(model, audio) -> list[tuple[str, float]]:
    """{language: probability} of a file (path, or 16 kHz float32 samples), most likely first.

    model: a qwhisper.transcribe.WhisperModel of a multilingual model."""
    from .audio import N_FRAMES, N_SAMPLES, load_audio, log_mel_spectrogram_torch, pad_or_trim
    from .decoding import detect_language

    if not model.tokenizer.is_multilingual:
        raise OptionError(f"{model.path.name} is an English-only model: language detection needs a "
                          "multilingual one (e.g. --model base)")
    if isinstance(audio, (str, os.PathLike)):
        audio = load_audio(os.fspath(audio))
    samples = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(model.device)
    filters = torch.as_tensor(model.mel_filters).to(model.device)
    mel = pad_or_trim(log_mel_spectrogram_torch(samples, filters, padding=N_SAMPLES), N_FRAMES)
    _, probs = detect_language(model.model, model.model.embed_audio(mel[None]), model.tokenizer)
    return sorted(probs[0].items(), key=lambda kv: kv[1], reverse=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="+", help="audio files ('-' reads stdin)")
    parser.add_argument("--model", "-m", default="base", help="a multilingual model name (base, small-q5_1, ...) or GGML path")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--top", type=int, default=5, help="how many languages to print per file")
    parser.add_argument("--json", action="store_true", help="one JSON object per file instead of text")


def run(args: argparse.Namespace) -> int:
    from .audio import AudioError
    from .transcribe import WhisperModel

    if args.top < 1:
        raise OptionError(f"--top must be >= 1, not {args.top}")
    model = WhisperModel(args.model, args.device)
    failed = 0
    for path in args.audio:
        try:
            ranked = language_probabilities(model, path)
        except AudioError as e:
            print(f"qwhisper detect-language: error: {e}", file=sys.stderr)
            failed += 1
            continue
        top = ranked[: args.top]
        if args.json:
            print(json.dumps({"file": path, "language": top[0][0], "probability": round(top[0][1], 6),
                              "top": [[c, round(p, 6)] for c, p in top]}, ensure_ascii=False), flush=True)
        else:
            print(f"{path}: " + ", ".join(f"{c} {p:.3f} ({LANGUAGES[c]})" for c, p in top), flush=True)
    return 1 if failed else 0


__all__ = ["add_arguments", "language_probabilities", "run"]
