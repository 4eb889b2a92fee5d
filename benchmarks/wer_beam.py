"""Beam search vs greedy: corpus WER of qwhisper on the offline English sets, per model.

    python benchmarks/wer_beam.py [--models tiny.en tiny.en-q5_1 base base-q5_1] [--beam-size 5]
        [--sets librivox speech-en devlong] [--threads 1] [--no-condition-on-previous-text] [--out wer-beam.json]

Sets (benchmarks/evalsets.py): the 5 LibriVox utterances of pocketsphinx-testdata and the English
WAVs of shared/data/speech, each file transcribed on its own, and "devlong" (those WAVs
concatenated and repeated to 619 s, one long-form transcription); default TranscribeOptions
(temperature fallback, condition_on_previous_text), language "en"; greedy, then beam_size=N
(patience 1, openai's defaults); --no-condition-on-previous-text decodes each window without the
previous text as prompt (openai's remedy for long-form drift). WER after normalize_english on both
sides (qwhisper.normalizer).
Prints a markdown table and writes every transcript to --out (JSON) for inspection, with the runs
of >= 3 consecutive wrong words of each transcription (jiwer's alignment: where whole phrases or
utterances were lost or invented).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from evalsets import devlong, librivox, speech


def error_runs(reference: str, hypothesis: str, min_words: int = 3) -> list[dict]:
    """Non-matching stretches of the word alignment with >= min_words words on either side."""
    import jiwer

    from qwhisper.normalizer import normalize_english

    ref, hyp = normalize_english(reference), normalize_english(hypothesis)
    rw, hw = ref.split(), hyp.split()
    runs = []
    for c in jiwer.process_words(ref, hyp).alignments[0]:
        n = max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
        if c.type != "equal" and n >= min_words:
            runs.append({"type": c.type, "ref_word": c.ref_start_idx,
                         "reference": " ".join(rw[c.ref_start_idx:c.ref_end_idx]),
                         "hypothesis": " ".join(hw[c.hyp_start_idx:c.hyp_end_idx])})
    return runs


def main(argv: list[str] | None = None) -> int:
    from qwhisper.models import resolve_model
    from qwhisper.normalizer import wer
    from qwhisper.transcribe import WhisperModel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny.en", "tiny.en-q5_1", "base", "base-q5_1"])
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--sets", nargs="+", default=["librivox", "speech-en"], choices=["librivox", "speech-en", "devlong"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-condition-on-previous-text", dest="condition", action="store_false")
    p.add_argument("--out", default=None, help="JSON file for the transcripts and figures")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    loaders = {"librivox": lambda: [(u.path, u.reference) for u in librivox()],
               "speech-en": lambda: [(u.path, u.reference) for u in speech(english_only=True)],
               "devlong": lambda: [devlong()]}
    sets = {name: loaders[name]() for name in args.sets}
    rows, dump = [], {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "threads": args.threads, "condition_on_previous_text": args.condition, "models": {}}
    for name in args.models:
        model = WhisperModel(resolve_model(name), "cpu")
        dump["models"][name] = {}
        for label, beam in (("greedy", None), (f"beam {args.beam_size}", args.beam_size)):
            refs, hyps, per_set, t0 = [], [], {}, time.perf_counter()
            for set_name, utts in sets.items():
                s_refs, s_hyps = [], []
                for audio, reference in utts:
                    segments, _ = model.transcribe(audio, language="en", beam_size=beam, verbose=False,
                                                     condition_on_previous_text=args.condition)
                    s_refs.append(reference)
                    s_hyps.append("".join(s.text for s in segments))
                per_set[set_name] = wer(s_refs, s_hyps)
                refs += s_refs
                hyps += s_hyps
            seconds = time.perf_counter() - t0
            total = wer(refs, hyps)
            rows.append((name, label, per_set, total, seconds))
            runs = [error_runs(r, h) for r, h in zip(refs, hyps)]
            dump["models"][name][label] = {"wer": total, "per_set": per_set, "seconds": seconds,
                                           "hypotheses": hyps, "references": refs, "error_runs": runs}
            print(f"{name:14s} {label:7s} WER {100 * total:5.2f} %  ({seconds:.0f} s)", file=sys.stderr, flush=True)

    print("| model | decoding | " + " | ".join(f"{s} WER" for s in sets) + " | all WER | CPU time |")
    print("| --- | --- | " + " | ".join("---" for _ in sets) + " | --- | --- |")
    for name, label, per_set, total, seconds in rows:
        cells = " | ".join(f"{100 * per_set[s]:.1f} %" for s in sets)
        print(f"| {name} | {label} | {cells} | {100 * total:.1f} % | {seconds:.0f} s |")
    if args.out:
        Path(args.out).write_text(json.dumps(dump, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
