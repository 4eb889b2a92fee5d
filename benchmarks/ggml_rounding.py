"""Diagnostic: does whisper.cpp's activation rounding explain a transcript difference?

ggml's CPU matmuls do not multiply float32 activations: for a block-quantized weight the activation
row is first quantized to 8 bits per 32-value block (q8_0 for Q4_0/Q5_0/Q8_0 weights, q8_1 for
Q4_1/Q5_1; the dot products are then exact integer sums times the two scales), and for an F16
weight it is rounded to float16. qwhisper's CPU path (and the numpy golden) keep float32
activations. This script re-runs qwhisper's CPU model with that rounding applied to the input of
every QLinear and prints the transcripts next to plain qwhisper and whisper.cpp (pywhispercpp):

    python benchmarks/ggml_rounding.py --model base-q4_0 --utterances 1998-15444-0000_0004_concat.wav

The rounding is emulated (activations rounded, products in float32), not ggml's exact summation
order; if the emulated transcript moves to whisper.cpp's, the difference is arithmetic.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

QK = 32


def round_like_ggml(x: torch.Tensor, weight_type) -> torch.Tensor:
    """x (..., K) as ggml's CPU matmul sees it against a weight of `weight_type`."""
    from qwhisper.quants import GGMLType

    if weight_type == GGMLType.F32:
        return x
    if weight_type == GGMLType.F16:
        return x.half().float()
    k = x.shape[-1]
    blocks = x.float().reshape(*x.shape[:-1], k // QK, QK)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127.0  # quantize_row_q8_0/q8_1: d = amax / 127
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.round(blocks * inv).clamp(-127, 127)  # roundf: halves away from zero (rare ties aside)
    return (q * d.half().float()).reshape(x.shape)  # the scale is stored as float16


def _f16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


@contextlib.contextmanager
def ggml_activation_rounding(model=None, full: bool = False):
    """Round QLinear inputs as ggml's CPU matmuls do; with `full` also what whisper.cpp keeps in
    float16: attention q/k/v (flash attention's f16 K/V cache and f16 Q) and GELU (ggml's f16
    lookup table: input and output rounded to float16)."""
    from torch import nn

    from qwhisper.model import QLinear

    original, gelu = QLinear.forward, nn.GELU.forward
    f16_out = set()
    if full and model is not None:
        f16_out = {id(m) for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in ("query", "key", "value")}

    def forward(self, x):
        y = original(self, round_like_ggml(x, self.ggml_type))
        return _f16(y) if id(self) in f16_out else y

    QLinear.forward = forward
    if full:
        nn.GELU.forward = lambda self, x: _f16(gelu(self, _f16(x)))
    try:
        yield
    finally:
        QLinear.forward, nn.GELU.forward = original, gelu


def main(argv=None) -> int:
    import evalsets
    from pywhispercpp.model import Model

    import qwhisper
    from qwhisper.audio import load_audio
    from qwhisper.models import resolve_model
    from qwhisper.normalizer import normalize_english

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="base-q4_0")
    p.add_argument("--utterances", nargs="+", required=True, help="names from benchmarks/evalsets.py")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    utts = {u.name: u for u in evalsets.librivox() + evalsets.speech(english_only=True)}
    path = resolve_model(args.model)
    model = qwhisper.load_model(path, device="cpu")
    cpp = Model(str(path), n_threads=args.threads, print_progress=False, language="en", redirect_whispercpp_logs_to=None)
    for name in args.utterances:
        audio = load_audio(utts[name].path)
        plain = "".join(s.text for s in model.transcribe(audio, language="en", verbose=False)[0])
        with ggml_activation_rounding():
            emulated = "".join(s.text for s in model.transcribe(audio, language="en", verbose=False)[0])
        with ggml_activation_rounding(model.model, full=True):
            full = "".join(s.text for s in model.transcribe(audio, language="en", verbose=False)[0])
        theirs = " ".join(s.text.strip() for s in cpp.transcribe(audio))
        print(f"## {name} ({args.model})")
        for label, text in (("qwhisper", plain), ("+ matmul input rounding", emulated),
                            ("+ also f16 q/k/v and GELU", full), ("whisper.cpp", theirs)):
            same = normalize_english(text) == normalize_english(theirs)
            print(f"- {label}: {normalize_english(text)}" + ("" if label == "whisper.cpp" else f"  [= whisper.cpp: {same}]"))
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
