"""Is a transcription reproducible run to run? The same audio transcribed --runs times in one
process, the text of each run hashed; with --without, a part of the CUDA path switched off first,
to find which part makes runs differ.

    python benchmarks/check_reproducible.py --model ggml-tiny.en-q5_1.bin --audio devlong.npz \
        [--batch-size 32] [--runs 3] [--without splitk|splitk-pdl|splitk-pipelining|graphs|encoder-graphs|fused-advance|
         triton-attention|triton-cross-attention]

Prints one line: the switch and the hash of each run's text, then the words where the first
differing run parts from run 1. (Session 9 found batched CUDA runs differing; session 10 traced
it to cuDNN's SDPA for the one-query cross-attention: performance.md 10.5 and 11.1.) The audio is
bench_longform.py's `pack` (.npz) or any file qwhisper reads.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SWITCHES = ("splitk", "splitk-pdl", "splitk-pipelining", "graphs", "encoder-graphs", "fused-advance", "triton-attention",
            "triton-cross-attention")


def switch_off(whisper, name: str) -> None:
    import qwhisper.model as qm
    from qwhisper import greedy_loop
    from qwhisper.quants import triton_ops

    if name == "splitk":  # batched steps' products through dequantize + cuBLAS instead
        triton_ops.SPLITK_MAX_M = 0
    elif name == "splitk-pdl":
        triton_ops.SPLITK_PDL = False
    elif name == "splitk-pipelining":
        triton_ops.SPLITK_STAGES = 1
    elif name == "graphs":
        whisper.model.decoder.cuda_graphs = False
    elif name == "encoder-graphs":
        whisper.model.encoder_graphs = False
    elif name == "fused-advance":
        greedy_loop.FUSED_ADVANCE = False
    elif name == "triton-attention":
        qm.CACHED_ATTENTION_TRITON = False
    elif name == "triton-cross-attention":  # cuDNN's SDPA, which differs call to call
        qm.CROSS_ATTENTION_TRITON = False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a GGML file")
    p.add_argument("--audio", required=True, help="bench_longform.py pack's .npz, or an audio file")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=32, help="0: sequential")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--without", choices=SWITCHES, default=None)
    args = p.parse_args(argv)

    import bench_longform

    from qwhisper.transcribe import TranscribeOptions, WhisperModel

    if args.audio.endswith(".npz"):
        samples, _ = bench_longform.load_pack(args.audio, 0.0)
    else:
        from qwhisper.audio import load_audio

        samples = load_audio(args.audio)
    whisper = WhisperModel(args.model, device=args.device)
    if args.without:
        switch_off(whisper, args.without)
    options = TranscribeOptions(language="en")
    texts = []
    for _ in range(args.runs):
        segments = bench_longform.transcribe(whisper, samples, options, args.batch_size, None)
        texts.append(" ".join(s.text.strip() for s in segments))
    hashes = [hashlib.md5(t.encode()).hexdigest()[:8] for t in texts]
    print(f"without {args.without or '-'}: " + " ".join(hashes), flush=True)
    for t in texts[1:]:
        if t != texts[0]:
            a, b = texts[0].split(), t.split()
            for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
                if op != "equal":
                    print(f"   run 1: {' '.join(a[max(0, i1 - 4):i2 + 4])}\n   other: {' '.join(b[max(0, j1 - 4):j2 + 4])}")
                    break
            break
    return 0 if len(set(hashes)) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
