"""Beam search vs greedy: corpus WER of qwhisper on the offline English sets, per model.

    python benchmarks/wer_beam.py [--models tiny.en tiny.en-q5_1 base base-q5_1] [--beam-size 5]
        [--threads 1] [--out docs/reports/wer-beam.json]

Sets (benchmarks/evalsets.py): the 5 LibriVox utterances of pocketsphinx-testdata and the English
WAVs of shared/data/speech, each file transcribed on its own with the default TranscribeOptions
(temperature fallback, condition_on_previous_text), language "en"; greedy, then beam_size=N
(patience 1, openai's defaults). WER after normalize_english on both sides (qwhisper.normalizer).
Prints a markdown table and writes every transcript to --out (JSON) for inspection.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from evalsets import librivox, speech  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from qwhisper.models import resolve_model
    from qwhisper.normalizer import wer
    from qwhisper.transcribe import WhisperModel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny.en", "tiny.en-q5_1", "base", "base-q5_1"])
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the transcripts and figures")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    sets = {"librivox": librivox(), "speech-en": speech(english_only=True)}
    rows, dump = [], {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "threads": args.threads, "models": {}}
    for name in args.models:
        model = WhisperModel(resolve_model(name), "cpu")
        dump["models"][name] = {}
        for label, beam in (("greedy", None), (f"beam {args.beam_size}", args.beam_size)):
            refs, hyps, per_set, t0 = [], [], {}, time.perf_counter()
            for set_name, utts in sets.items():
                s_refs, s_hyps = [], []
                for u in utts:
                    segments, _ = model.transcribe(u.path, language="en", beam_size=beam, verbose=False)
                    s_refs.append(u.reference)
                    s_hyps.append("".join(s.text for s in segments))
                per_set[set_name] = wer(s_refs, s_hyps)
                refs += s_refs
                hyps += s_hyps
            seconds = time.perf_counter() - t0
            total = wer(refs, hyps)
            rows.append((name, label, per_set["librivox"], per_set["speech-en"], total, seconds))
            dump["models"][name][label] = {"wer": total, "per_set": per_set, "seconds": seconds,
                                           "hypotheses": hyps, "references": refs}
            print(f"{name:14s} {label:7s} WER {100 * total:5.2f} %  ({seconds:.0f} s)", file=sys.stderr, flush=True)

    print("| model | decoding | LibriVox WER | speech-en WER | all WER | CPU time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, label, a, b, total, seconds in rows:
        print(f"| {name} | {label} | {100 * a:.1f} % | {100 * b:.1f} % | {100 * total:.1f} % | {seconds:.0f} s |")
    if args.out:
        Path(args.out).write_text(json.dumps(dump, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
