#!/usr/bin/env python
"""Word error rate of GGML model files under whisper.cpp itself (pywhispercpp's CPU build).

Checks that files written by `qwhisper convert` / `qwhisper quantize` are good models in the
peer's hands, on real English speech:

* the 5 LibriVox utterances of Debian's pocketsphinx-testdata (Sense and Sensibility), and
* the English WAVs of shared/data/speech/manifest.tsv (files named `<lang>_...` are skipped).

Decoding is pywhispercpp's default: greedy, temperature fallback, timestamps on, language forced
to English (`--language`), `n_threads` 2. WER is corpus-level (errors / reference words) after
`normalize()`: lowercase, hyphens to spaces, punctuation removed (in-word apostrophes kept),
mr/mrs/dr spelled out as LibriSpeech writes them; numbers are NOT spelled out (none of these
references contains digits, and whisper wrote none for them in our runs).

    python scripts/wer_pywhispercpp.py MODEL.bin [MODEL.bin ...] [--report FILE]
    python scripts/wer_pywhispercpp.py --build DIR --quant q8_0,q5_1,q4_0 [MODEL.bin ...] --report FILE

`--build DIR` first converts the installed tiny.en and base CTranslate2 packages to DIR/ggml-*.bin
(f16) with qwhisper.convert, and quantizes each to the `--quant` types with qwhisper.quantize.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
SHARED = Path(os.environ.get("QWHISPER_SHARED", "/work/shared"))
SPEECH_DIR = SHARED / "data" / "speech"

_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor"}  # LibriSpeech spells these out


def normalize(text: str) -> str:
    """English WER normaliser (see the module docstring)."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^\w\s']", " ", text)  # punctuation -> space
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)  # quotes; keep apostrophes inside words
    return " ".join(_ABBREVIATIONS.get(w, w) for w in text.split())


@dataclass
class Utterance:
    set: str
    name: str
    wav: Path
    reference: str


def load_utterances() -> list[Utterance]:
    utts = []
    trans = LIBRIVOX_DIR / "transcription"
    if trans.is_file():
        for line in trans.read_text().splitlines():
            m = re.match(r"\s*<s>(.*)</s>\s*\((\S+)\)\s*$", line)
            if m and (LIBRIVOX_DIR / f"{m[2]}.wav").is_file():
                utts.append(Utterance("librivox", m[2], LIBRIVOX_DIR / f"{m[2]}.wav", m[1].strip()))
    else:
        print(f"note: {trans} not found (Debian package pocketsphinx-testdata); LibriVox set skipped",
              file=sys.stderr)
    manifest = SPEECH_DIR / "manifest.tsv"
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                lang = re.match(r"^([a-z]{2})_", row["file"])
                if lang and lang[1] != "en":
                    continue  # zh_..., es_...: not English
                utts.append(Utterance("speech", row["file"], SPEECH_DIR / row["file"], row["reference_text"]))
    else:
        print(f"note: {manifest} not found; speech set skipped", file=sys.stderr)
    return utts


@dataclass
class Result:
    model: Path
    hyps: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def transcribe_all(model_path: Path, utts: list[Utterance], threads: int, language: str) -> Result:
    from pywhispercpp.model import Model

    model = Model(str(model_path), n_threads=threads, print_progress=False, print_realtime=False,
                  language=language, redirect_whispercpp_logs_to=None)
    res = Result(model_path)
    for u in utts:
        t0 = time.perf_counter()
        segments = model.transcribe(str(u.wav))
        res.seconds += time.perf_counter() - t0
        res.hyps[u.name] = " ".join(s.text.strip() for s in segments)  # pywhispercpp strips segment texts
    return res


def scores(utts: list[Utterance], hyps: dict[str, str]):
    import jiwer

    refs = [normalize(u.reference) for u in utts]
    out = jiwer.process_words(refs, [normalize(hyps[u.name]) for u in utts])
    n_words = sum(len(r.split()) for r in refs)
    return out, n_words


def build_models(folder: Path, quants: list[str]) -> list[Path]:
    from qwhisper.convert import convert
    from qwhisper.models import _package_dirs

    paths = []
    for name in ("tiny.en", "base"):
        dirs = _package_dirs(name)
        if dirs is None:
            print(f"note: the {name} weight package is not installed; skipped", file=sys.stderr)
            continue
        f16 = convert(dirs, folder / f"ggml-{name}.bin", ftype="f16")
        paths.append(f16)
        if quants:
            from qwhisper.quantize import quantize_file

            for q in quants:
                paths.append(quantize_file(f16, folder / f"ggml-{name}-{q}.bin", q))
    return paths


def _labels(results: list[Result]) -> list[str]:
    """File names, or folder/name where two models share a name."""
    names = [r.model.name for r in results]
    return [n if names.count(n) == 1 else f"{r.model.parent.name}/{n}" for n, r in zip(names, results)]


def markdown(utts: list[Utterance], results: list[Result], command: str, threads: int) -> str:
    audio_s = sum(_duration(u.wav) for u in utts)
    labels = _labels(results)
    sets = sorted({u.set for u in utts})
    lines = [
        "# WER of GGML files under whisper.cpp (pywhispercpp)",
        "",
        f"Command: `{command}`",
        "",
        f"pywhispercpp {_version('pywhispercpp')}, jiwer {_version('jiwer')}, {_cpu()}, "
        f"n_threads={threads}; greedy decoding, language forced to English. "
        f"{len(utts)} utterances, {audio_s:.1f} s of audio "
        + ", ".join(f"{s}: {sum(u.set == s for u in utts)}" for s in sets) + ".",
        "WER is corpus-level after the normaliser in the script (lowercase, punctuation and hyphens removed, "
        "mr/mrs/dr spelled out; numbers not spelled out).",
        "Times are wall seconds of `transcribe()` calls; on a shared machine they vary with its load.",
        "",
        "| model file | MB | " + " | ".join(f"WER {s}" for s in sets) + " | WER all | S / D / I of words "
        "| transcribe s | RTFx |",
        "| --- | ---: | " + " | ".join("---:" for _ in sets) + " | ---: | --- | ---: | ---: |",
    ]
    for label, r in zip(labels, results):
        per_set = []
        for s in sets:
            o, _ = scores([u for u in utts if u.set == s], r.hyps)
            per_set.append(f"{100 * o.wer:.2f} %")
        o, n = scores(utts, r.hyps)
        lines.append(f"| {label} | {r.model.stat().st_size / 1e6:.1f} | " + " | ".join(per_set)
                     + f" | {100 * o.wer:.2f} % | {o.substitutions} / {o.deletions} / {o.insertions} of {n} "
                     f"| {r.seconds:.1f} | {audio_s / r.seconds:.1f} |")
    lines += ["", "## Per utterance (WER %)", "",
              "| utterance | " + " | ".join(labels) + " |",
              "| --- | " + " | ".join("---:" for _ in results) + " |"]
    for u in utts:
        cells = []
        for r in results:
            o, _ = scores([u], r.hyps)
            cells.append(f"{100 * o.wer:.1f}")
        lines.append(f"| {u.set}/{u.name} | " + " | ".join(cells) + " |")
    lines += ["", "## Transcripts that differ from the reference (normalised)", ""]
    for label, r in zip(labels, results):
        wrong = [u for u in utts if normalize(r.hyps[u.name]) != normalize(u.reference)]
        lines.append(f"<details><summary>{label}: {len(wrong)} of {len(utts)} utterances</summary>\n")
        for u in wrong:
            lines += [f"- {u.name}", f"  - ref: {normalize(u.reference)}", f"  - hyp: {normalize(r.hyps[u.name])}"]
        lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.machine()
    return f"{name} ({os.cpu_count()} CPUs)"


def _duration(wav: Path) -> float:
    import wave

    try:
        with wave.open(str(wav)) as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError):
        return 0.0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", type=Path, metavar="MODEL.bin", help="GGML model files")
    p.add_argument("--build", type=Path, metavar="DIR",
                   help="first convert the installed tiny.en and base packages (f16) into DIR")
    p.add_argument("--quant", default="", help="with --build: comma-separated quantization types, e.g. q8_0,q5_1,q4_0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--language", default="en")
    p.add_argument("--report", type=Path, help="write the markdown report here (it is printed too)")
    args = p.parse_args(argv)

    utts = load_utterances()
    if not utts:
        print("no test audio found", file=sys.stderr)
        return 1
    models = []
    if args.build:
        models += build_models(args.build, [q for q in args.quant.split(",") if q])
    models += args.models
    if not models:
        p.error("give MODEL.bin files or --build DIR")
    results = []
    for m in models:
        print(f"transcribing {len(utts)} utterances with {m} ...", file=sys.stderr)
        results.append(transcribe_all(m, utts, args.threads, args.language))
    command = "python scripts/wer_pywhispercpp.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = markdown(utts, results, command, args.threads)
    print(report)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report, encoding="utf-8")
        # the raw transcripts, as a reference for other engines run on the same files
        raw = {"command": command, "threads": args.threads, "language": args.language,
               "references": {u.name: u.reference for u in utts},
               "models": [{"path": str(r.model), "bytes": r.model.stat().st_size, "seconds": round(r.seconds, 2),
                           "transcripts": r.hyps} for r in results]}
        args.report.with_suffix(".json").write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
