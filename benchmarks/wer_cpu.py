"""CPU word error rates: qwhisper next to whisper.cpp (pywhispercpp) on the same GGML files.

    python benchmarks/wer_cpu.py [--models tiny.en,base] [--types f16,q8_0,q5_1,q4_0] [--threads 2]
                                 [--reuse whispercpp] [--report docs/reports/wer-cpu.md]

Audio: the 5 LibriVox utterances of Debian's pocketsphinx-testdata and the English WAVs of
shared/data/speech (benchmarks/evalsets.py), decoded once by qwhisper.audio.load_audio and given
to both engines as the same 16 kHz float32 array.

Models: tiny.en and base (multilingual) converted from the installed CTranslate2 packages by
`qwhisper.models.resolve_model` (f16; the -q8_0/-q5_1/-q4_0 names are quantized from it by
qwhisper.quantize). Both engines read the same file.

Decoding, both engines greedy with the language set to English:
* qwhisper: `qwhisper.load_model(path, device="cpu").transcribe(audio, language="en")`, i.e.
  openai/whisper's defaults (temperature fallback 0, 0.2, ... 1.0 on compression ratio > 2.4 or
  avg logprob < -1, no-speech 0.6, condition_on_previous_text, timestamps on);
* whisper.cpp: `pywhispercpp.model.Model(path, n_threads=THREADS, print_progress=False,
  language="en")`, its defaults (greedy, temperature fallback with best_of 5, no_context,
  timestamps on).
WER: corpus-level (word edits / reference words) after qwhisper.normalizer.normalize_english
on both sides. A row passes when qwhisper's WER is at most 0.5 point above whisper.cpp's.

Writes the markdown report and, next to it, a .json with every raw transcript (and each model
file's SHA-1); `--reuse ENGINE` takes that engine's transcripts from the existing JSON for model
files with the same SHA-1 instead of decoding again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import evalsets  # noqa: E402

ENGINES = ("qwhisper", "whispercpp")
MODELS = ("tiny.en", "base")
TYPES = ("f16", "q8_0", "q5_1", "q4_0")
MAX_DELTA_POINTS = 0.5  # acceptance: qwhisper WER - whisper.cpp WER <= 0.5 percentage point


@dataclass
class Run:
    """One engine on one model file: transcripts per utterance, and the time spent."""

    engine: str
    model: str  # name as resolved, e.g. "tiny.en-q5_1"
    path: str
    sha1: str
    hyps: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0  # transcribe calls only (model loading excluded)
    cpu_s: float = 0.0  # process CPU time of the same calls (all threads)


def sha1_of(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def model_name(base: str, qtype: str) -> str:
    return base if qtype == "f16" else f"{base}-{qtype}"


# --- the two engines ------------------------------------------------------------------------------

def run_qwhisper(path: Path, audios: dict, threads: int, **options) -> tuple[dict[str, str], float, float]:
    import torch

    import qwhisper

    torch.set_num_threads(threads)
    model = qwhisper.load_model(path, device="cpu")
    # the first call dequantizes the weights into the CPU cache: not part of any utterance's time
    list(model.transcribe(next(iter(audios.values()))[:16000], language="en", verbose=False, **options)[0])
    hyps, wall, cpu = {}, 0.0, 0.0
    for name, audio in audios.items():
        t0, c0 = time.perf_counter(), time.process_time()
        segments, _ = model.transcribe(audio, language="en", verbose=False, **options)
        hyps[name] = "".join(s.text for s in segments)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return hyps, wall, cpu


def run_qwhisper_wcpp_rules(path: Path, audios: dict, threads: int) -> tuple[dict[str, str], float, float]:
    """Diagnostic: qwhisper with whisper.cpp's conventions where it has an option for them:
    short windows padded with the mel of silence (pad_window="silence", qwhisper's default too), no
    previous-text prompt, best_of 5 when falling back to sampling, non-speech tokens not suppressed."""
    return run_qwhisper(path, audios, threads, pad_window="silence", condition_on_previous_text=False, best_of=5,
                        suppress_tokens=None)


def run_qwhisper_zero_pad(path: Path, audios: dict, threads: int) -> tuple[dict[str, str], float, float]:
    """Diagnostic: openai transcribe's window padding (zero-valued log-mel frames, pad_window="zeros")."""
    return run_qwhisper(path, audios, threads, pad_window="zeros")


def run_qwhisper_no_context(path: Path, audios: dict, threads: int) -> tuple[dict[str, str], float, float]:
    """Diagnostic: qwhisper's defaults but no previous-text prompt (whisper.cpp's no_context) only."""
    return run_qwhisper(path, audios, threads, condition_on_previous_text=False)


# the diagnostic variants, in the order of the report's columns: (engine key, column title)
DIAGNOSTICS = (("qwhisper-zeros", "openai's zero padding"), ("qwhisper-noctx", "no previous-text prompt"),
               ("qwhisper-wcpp", "all of whisper.cpp's conventions"))


@contextlib.contextmanager
def stderr_to(path: str | None):
    """Point fd 2 (whisper.cpp's C-level log) at a file, or /dev/null, for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path or os.devnull, "w") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run_whispercpp(path: Path, audios: dict, threads: int) -> tuple[dict[str, str], float, float]:
    from pywhispercpp.model import Model

    with stderr_to(None):
        model = Model(str(path), n_threads=threads, print_progress=False, language="en")
    hyps, wall, cpu = {}, 0.0, 0.0
    for name, audio in audios.items():
        t0, c0 = time.perf_counter(), time.process_time()
        with stderr_to(None):
            segments = model.transcribe(audio)
        hyps[name] = " ".join(s.text.strip() for s in segments)  # pywhispercpp strips segment texts
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return hyps, wall, cpu


RUNNERS = {"qwhisper": run_qwhisper, "whispercpp": run_whispercpp, "qwhisper-wcpp": run_qwhisper_wcpp_rules,
           "qwhisper-zeros": run_qwhisper_zero_pad, "qwhisper-noctx": run_qwhisper_no_context}


# --- scoring --------------------------------------------------------------------------------------

def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words) after normalize_english on both sides."""
    from qwhisper.normalizer import _edit_distance, normalize_english

    ref, hyp = normalize_english(reference).split(), normalize_english(hypothesis).split()
    return _edit_distance(ref, hyp), len(ref)


def corpus_wer(utts, hyps: dict[str, str]) -> float:
    """Percent: total edits / total reference words (qwhisper.normalizer.wer's definition)."""
    from qwhisper.normalizer import wer

    return 100 * wer([u.reference for u in utts], [hyps[u.name] for u in utts])


# What the diagnosis showed when this script was written (the tables above are recomputed on every run).
FINDINGS = """\
Reading (analysis of 2026-11-26 on these files; the tables above are recomputed on every run):

* **Window padding was the main difference**, and qwhisper now pads as whisper.cpp does. 16 of the
  17 utterances are shorter than 30 s, so every window is padded. openai/whisper's `transcribe`
  pads the window's log-mel with zero-valued frames (`pad_or_trim(mel[:, seek:seek + segment_size])`);
  whisper.cpp encodes `mel[:, seek:seek + 3000]` of the audio padded with 30 s of zero samples,
  i.e. the log-mel of silence, which is also what Whisper saw in training (clips padded as audio).
  The encoder sees a different input, and near-tied tokens flip. Example, base f16,
  1089-134686-0001 ("STUFF IT INTO YOU ..."), after `<|0.00|> Stuff`: silence padding gives
  log P(" it") = -0.49 vs log P("ed") = -1.04; zero padding gives log P("ed") = -0.60 vs
  log P(" it") = -0.87, so zero padding writes "Stuffed into you" (3 edits instead of 0). Over the
  8 files the silence padding is better on 5, equal on 2 and one word worse on 1 (column "openai's
  zero padding" above), so it became qwhisper's default (`pad_window="silence"`; `"zeros"` keeps
  openai's).
* **condition_on_previous_text** matters for the one file longer than 30 s (44 s, two windows):
  whisper.cpp's default `no_context` drops the prompt; its effect here is a word or two either way.
* **What remains is arithmetic, not rules.** whisper.cpp computes quantized products with
  activations rounded to 8 bits per 32-block (q8_0/q8_1 dot products) and f16 ones with f16
  activations and an f16 KV cache; qwhisper on the CPU uses float32 activations and float32
  dequantized weights. The remaining flips sit where the model is unsure: base q4_0 on the 44-s
  file (a full 30-s window: no padding, no prompt involved) diverges after "... give evidence of
  Carl", where qwhisper's top token has probability 0.20 (log P = -1.61) and whisper.cpp's choice
  " to" 0.04; differences go both ways (tiny.en q8_0: qwhisper better by 0.73 point).
  Proof for that row: `python benchmarks/ggml_rounding.py --model base-q4_0 --utterances
  1998-15444-0000_0004_concat.wav 1089-134686-0001.wav` re-runs qwhisper with whisper.cpp's
  roundings emulated (matmul inputs quantized to 8 bits per block, q/k/v and GELU in float16):
  the 44-s file's transcript then equals whisper.cpp's word for word ("carl to do so"), which
  accounts for the whole +0.73 (the other differing file, "countalled" vs "countled", is one
  edit on both sides). Rounding the matmul inputs alone is not enough.
* The corpus is small (413 words): 0.5 point is 2 words, one utterance.
"""


# --- report ---------------------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(dist)
    except PackageNotFoundError:
        return "?"


def git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPO, check=True).stdout.strip()
    except Exception:
        return "unknown"


def _without_reuse(command: str) -> str:
    words = command.split()
    out = [w for i, w in enumerate(words) if w != "--reuse" and (i == 0 or words[i - 1] != "--reuse")]
    return " ".join(w for w in out if not w.startswith("--reuse="))


def _differing_utterances(name: str, utts, ours: Run, theirs: Run, titles: tuple[str, str, str]) -> list[str]:
    """A collapsed table of the utterances whose normalised transcripts differ between two runs
    (theirs: whisper.cpp's), word edits of each, the differing words in bold. titles: the column
    titles of our edits, our transcript and theirs."""
    from qwhisper.normalizer import normalize_english

    diff = [u for u in utts if normalize_english(ours.hyps[u.name]) != normalize_english(theirs.hyps[u.name])]
    lines = [f"<details><summary>{name}: {len(diff)} of {len(utts)} utterances differ</summary>\n"]
    if diff:
        lines += [f"| utterance | words | {titles[0]} | whisper.cpp edits | {titles[1]} | {titles[2]} |",
                  "| --- | ---: | ---: | ---: | --- | --- |"]
    for u in diff:
        eq, n = word_errors(u.reference, ours.hyps[u.name])
        ew, _ = word_errors(u.reference, theirs.hyps[u.name])
        hq, hw = _mark(normalize_english(ours.hyps[u.name]), normalize_english(theirs.hyps[u.name]))
        lines.append(f"| {u.name} | {n} | {eq} | {ew} | {hq} | {hw} |")
    return lines + ["", "</details>", ""]


def markdown(utts, sets: dict[str, list], runs: dict[tuple[str, str], Run], rows: list[tuple[str, str]],
             command: str, threads: int, audio_s: float, load: str, reused: set[str] = frozenset()) -> str:
    from qwhisper.normalizer import normalize_english

    diagnose = [(k, title) for k, title in DIAGNOSTICS if any(e == k for e, _ in runs)]
    n_words = sum(word_errors(u.reference, "")[1] for u in utts)
    lines = [
        "# CPU word error rates: qwhisper vs whisper.cpp",
        "",
        f"Command: `{command}` (commit {git_commit()})"
        + (f"; transcripts of {', '.join(sorted(reused))} were taken from an earlier run's JSON (same model files, "
           f"by SHA-1); from scratch: `{_without_reuse(command)}`." if reused else "."),
        "",
        f"Machine: {cpu_name()}, shared with other jobs (load average at the start: {load}). "
        f"torch {version('torch')}, pywhispercpp {version('pywhispercpp')} (whisper.cpp's CPU build), "
        f"{threads} thread(s) for each engine.",
        "",
        f"Audio: {len(utts)} utterances, {audio_s:.1f} s, {n_words} reference words: "
        + ", ".join(f"{k} {len(v)}" for k, v in sets.items())
        + " (benchmarks/evalsets.py). Both engines get the same 16 kHz float32 samples and the same GGML "
        "file (converted from the installed CTranslate2 packages by qwhisper.models.resolve_model, "
        "quantized by qwhisper.quantize).",
        "",
        "Decoding: greedy, language English. qwhisper with openai/whisper's defaults (temperature fallback, "
        "condition_on_previous_text, timestamps); whisper.cpp with its own (temperature fallback with "
        "best_of 5, no_context, timestamps). WER: corpus-level after qwhisper.normalizer.normalize_english "
        f"on both sides. Acceptance: qwhisper's WER at most {MAX_DELTA_POINTS} point above whisper.cpp's.",
        "",
        "| model | type | qwhisper WER | whisper.cpp WER | delta (points) | pass | "
        + " | ".join(f"qwhisper / whisper.cpp {k}" for k in sets) + " | qwhisper CPU s | whisper.cpp CPU s |",
        "| --- | --- | ---: | ---: | ---: | --- | " + " | ".join("---:" for _ in sets) + " | ---: | ---: |",
    ]
    failed = []
    for base, qtype in rows:
        name = model_name(base, qtype)
        q, w = runs[("qwhisper", name)], runs[("whispercpp", name)]
        wq, ww = corpus_wer(utts, q.hyps), corpus_wer(utts, w.hyps)
        ok = wq - ww <= MAX_DELTA_POINTS + 1e-9
        if not ok:
            failed.append(name)
        per_set = [f"{corpus_wer(v, q.hyps):.2f} / {corpus_wer(v, w.hyps):.2f}" for v in sets.values()]
        lines.append(f"| {base} | {qtype} | {wq:.2f} % | {ww:.2f} % | {wq - ww:+.2f} | {'yes' if ok else 'NO'} | "
                     + " | ".join(per_set) + f" | {q.cpu_s:.1f} | {w.cpu_s:.1f} |")
    lines += ["", f"Result: {len(rows) - len(failed)} of {len(rows)} rows pass"
              + (f"; failing: {', '.join(failed)}." if failed else "."),
              "",
              "Times: process CPU seconds of the transcribe calls over all utterances (model loading and "
              "qwhisper's one-time weight dequantization excluded; wall seconds, which move with the shared "
              "machine's load, are in the JSON): indicative only, see speed-cpu.md for the speed comparison.",
              "",
              "__DIAGNOSIS__",
              "## Appendix: utterances where the two engines' normalised transcripts differ",
              ""]
    for base, qtype in rows:
        name = model_name(base, qtype)
        lines += _differing_utterances(name, utts, runs[("qwhisper", name)], runs[("whispercpp", name)],
                                       ("qwhisper edits", "qwhisper (normalised)", "whisper.cpp (normalised)"))
    if diagnose:
        lines += ["## Appendix: qwhisper with all of whisper.cpp's conventions vs whisper.cpp", ""]
        for base, qtype in rows:
            name = model_name(base, qtype)
            if ("qwhisper-wcpp", name) in runs:
                lines += _differing_utterances(name, utts, runs[("qwhisper-wcpp", name)], runs[("whispercpp", name)],
                                               ("qwhisper (wcpp conventions) edits", "qwhisper", "whisper.cpp"))
    lines += ["References (normalised):", "", "<details><summary>show</summary>\n"]
    lines += [f"- {u.name}: {normalize_english(u.reference)}" for u in utts]
    lines += ["", "</details>", ""]
    diag = []
    if diagnose:
        diag = ["## Diagnosis: the decoding conventions behind the differences", "",
                "qwhisper rerun with one convention changed at a time (benchmarks/wer_cpu.py "
                "`--diagnose`): *openai's zero padding*: `pad_window=\"zeros\"`, a window shorter than 30 s is "
                "completed with zero-valued log-mel frames (openai's transcribe) instead of the log-mel of the zero "
                "samples that follow the audio (whisper.cpp's, qwhisper's default); *no previous-text prompt*: "
                "condition_on_previous_text=False (whisper.cpp's no_context); *all*: both, plus best_of 5 when "
                "falling back to sampling and no suppression of non-speech tokens. WER, and delta against "
                "whisper.cpp's WER in points.", "",
                "| model | type | qwhisper (defaults) | whisper.cpp | "
                + " | ".join(title for _, title in diagnose) + " |",
                "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in diagnose) + " |"]
        for base, qtype in rows:
            name = model_name(base, qtype)
            ww = corpus_wer(utts, runs[("whispercpp", name)].hyps)
            cells = []
            for k, _ in diagnose:
                r = runs.get((k, name))
                cells.append(f"{corpus_wer(utts, r.hyps):.2f} % ({corpus_wer(utts, r.hyps) - ww:+.2f})" if r else "")
            wq = corpus_wer(utts, runs[("qwhisper", name)].hyps)
            diag.append(f"| {base} | {qtype} | {wq:.2f} % ({wq - ww:+.2f}) | {ww:.2f} % | " + " | ".join(cells) + " |")

        def passing(engine: str) -> str:
            ok = [corpus_wer(utts, runs[(engine, n)].hyps) - corpus_wer(utts, runs[("whispercpp", n)].hyps)
                  <= MAX_DELTA_POINTS + 1e-9 for n in (model_name(b, t) for b, t in rows) if (engine, n) in runs]
            return f"{sum(ok)} of {len(ok)}"

        diag += [f"| rows within {MAX_DELTA_POINTS} point | | {passing('qwhisper')} | | "
                 + " | ".join(passing(k) for k, _ in diagnose) + " |", "", FINDINGS, ""]
    i = lines.index("__DIAGNOSIS__")
    lines[i:i + 1] = diag
    return "\n".join(lines)


def _mark(a: str, b: str, context: int = 4) -> tuple[str, str]:
    """The two word sequences with the words outside their longest common parts in bold; common
    runs longer than 2 * context words are shortened to their ends around an ellipsis."""
    import difflib

    wa, wb = a.split(), b.split()
    oa, ob = [], []
    ops = difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes()
    for k, (op, i1, i2, j1, j2) in enumerate(ops):
        seg_a, seg_b = " ".join(wa[i1:i2]), " ".join(wb[j1:j2])
        if op == "equal":
            words = wa[i1:i2]
            if len(words) > 2 * context:
                head = words[:context] if k > 0 else []
                tail = words[-context:] if k < len(ops) - 1 else []
                seg_a = seg_b = " ".join(head + ["…"] + tail)
            oa.append(seg_a)
            ob.append(seg_b)
        else:
            if seg_a:
                oa.append(f"**{seg_a}**")
            if seg_b:
                ob.append(f"**{seg_b}**")
    return " ".join(oa), " ".join(ob)


# --- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma list of base models")
    p.add_argument("--types", default=",".join(TYPES), help="comma list of f16 and quantization types")
    p.add_argument("--threads", type=int, default=2, help="threads of each engine (torch / whisper.cpp)")
    p.add_argument("--reuse", default="", help=f"comma list of engines ({', '.join(RUNNERS)}) whose transcripts "
                   "are taken from the existing JSON when the model file's SHA-1 matches")
    p.add_argument("--diagnose", action="store_true",
                   help="also run qwhisper with whisper.cpp's conventions (run_qwhisper_wcpp_rules)")
    p.add_argument("--report", type=Path, default=REPO / "docs" / "reports" / "wer-cpu.md")
    args = p.parse_args(argv)

    from qwhisper.audio import SAMPLE_RATE, load_audio
    from qwhisper.models import resolve_model

    sets = {"librivox": evalsets.librivox(), "speech": evalsets.speech(english_only=True)}
    utts = [u for v in sets.values() for u in v]
    audios = {u.name: load_audio(u.path) for u in utts}
    audio_s = sum(len(a) for a in audios.values()) / SAMPLE_RATE
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())

    json_path = args.report.with_suffix(".json")
    old = {}
    if json_path.is_file():
        for r in json.loads(json_path.read_text(encoding="utf-8")).get("runs", []):
            old[(r["engine"], r["model"], r["sha1"])] = r
    reuse = {e for e in args.reuse.split(",") if e}
    if reuse - set(RUNNERS):
        p.error(f"--reuse: unknown engine(s) {sorted(reuse - set(RUNNERS))}")

    rows = [(b, t) for b in args.models.split(",") for t in args.types.split(",")]
    runs: dict[tuple[str, str], Run] = {}
    reused_engines: set[str] = set()
    for base, qtype in rows:
        name = model_name(base, qtype)
        path = Path(resolve_model(name))
        sha1 = sha1_of(path)
        for engine in ENGINES + (tuple(k for k, _ in DIAGNOSTICS) if args.diagnose else ()):
            prev = old.get((engine, name, sha1))
            if engine in reuse and prev and set(prev["hyps"]) >= set(audios):
                run = Run(engine, name, str(path), sha1, prev["hyps"], prev["wall_s"], prev["cpu_s"])
                reused_engines.add(engine)
                print(f"{engine} {name}: reused from {json_path.name}", file=sys.stderr)
            else:
                print(f"{engine} {name}: transcribing {len(audios)} utterances ...", file=sys.stderr, flush=True)
                hyps, wall, cpu = RUNNERS[engine](path, audios, args.threads)
                run = Run(engine, name, str(path), sha1, hyps, wall, cpu)
                print(f"  {wall:.1f} s wall, {cpu:.1f} s CPU, WER {corpus_wer(utts, hyps):.2f} %", file=sys.stderr)
            runs[(engine, name)] = run

    command = "python benchmarks/wer_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = markdown(utts, sets, runs, rows, command.strip(), args.threads, audio_s, load, reused_engines)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report, encoding="utf-8")
    raw = {"command": command.strip(), "threads": args.threads,
           "references": {u.name: u.reference for u in utts},
           "runs": [r.__dict__ for r in runs.values()]}
    json_path.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
