"""CPU speed: qwhisper next to whisper.cpp (pywhispercpp) on the same file and GGML model.

    python benchmarks/bench_cpu.py [--models tiny.en-q5_1,tiny.en] [--threads 1,2] [--repeat 3]
                                   [--audio jfk,librispeech,devlong] [--report docs/reports/speed-cpu.md]

For every audio x model x thread count, the two engines run in turn (qwhisper, then whisper.cpp,
`--repeat` times, so both see the same machine load) on the same 16 kHz float32 samples:
* qwhisper: `qwhisper.load_model(path, device="cpu").transcribe(audio, language="en")` with
  openai's defaults (greedy, temperature fallback, timestamps, condition_on_previous_text);
  torch.set_num_threads(threads). Phases are timed by wrapping the model's `embed_audio`
  (encoder, one call per 30-s window) and `logits` (a call with one new token per row is a
  decode step; more tokens is the prompt/sot sequence of a window);
* whisper.cpp: `pywhispercpp.model.Model(path, n_threads=threads, print_progress=False,
  language="en")`, its defaults; phases from `whisper_print_timings` (encode ms per run, decode
  ms per run = one token for one decoder, batchd = the best_of fallback samples, prompt).
Reported: wall seconds (median of the repeats), RTFx = audio seconds / wall seconds, process CPU
seconds (all threads), encoder ms per window, decode ms per token, and the number of windows and
decode steps. Model loading and qwhisper's one-time weight dequantization are excluded (a
1-second warm-up transcription first).

The machine is shared: wall times move with other jobs' load (recorded), CPU seconds much less.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import evalsets  # noqa: E402
from wer_cpu import cpu_name, git_commit, stderr_to, version  # noqa: E402

AUDIO = {  # name -> how to get (samples, reference)
    "jfk": "jfk.wav",
    "librispeech": "1998-15444-0000_0004_concat.wav",  # 44 s: 5 consecutive LibriSpeech test-other utterances
    "devlong": None,  # evalsets.devlong(): 619 s
}


@dataclass
class Measure:
    engine: str
    audio: str
    model: str
    threads: int
    audio_s: float
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    encoder_ms: list[float] = field(default_factory=list)  # per window, per repeat
    decode_ms: list[float] = field(default_factory=list)  # per token, per repeat
    windows: int = 0
    steps: int = 0
    text: str = ""
    load: list[str] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_s)


# --- qwhisper -------------------------------------------------------------------------------------

class PhaseTimer:
    """Wraps a qwhisper Whisper model's embed_audio and logits to time the phases (wall)."""

    def __init__(self, model):
        self.model = model
        self.embed, self.logits = model.embed_audio, model.logits
        model.embed_audio, model.logits = self._embed, self._logits
        self.reset()

    def reset(self):
        self.enc_s = self.step_s = self.prompt_s = 0.0
        self.windows = self.steps = self.prompt_tokens = 0

    def _embed(self, mel):
        t = time.perf_counter()
        out = self.embed(mel)
        self.enc_s += time.perf_counter() - t
        self.windows += mel.shape[0]
        return out

    def _logits(self, tokens, cache, *args, **kwargs):
        t = time.perf_counter()
        out = self.logits(tokens, cache, *args, **kwargs)
        dt = time.perf_counter() - t
        if tokens.shape[1] == 1:
            self.step_s += dt
            self.steps += 1
        else:
            self.prompt_s += dt
            self.prompt_tokens += tokens.shape[1]
        return out


class QwhisperEngine:
    name = "qwhisper"

    def __init__(self, path: Path, threads: int):
        import torch

        import qwhisper

        torch.set_num_threads(threads)
        self.model = qwhisper.load_model(path, device="cpu")
        self.timer = PhaseTimer(self.model.model)

    def transcribe(self, audio) -> str:
        segments, _ = self.model.transcribe(audio, language="en", verbose=False)
        return "".join(s.text for s in segments)

    def phases(self) -> tuple[float, float, int, int]:
        t = self.timer
        return (1e3 * t.enc_s / max(t.windows, 1), 1e3 * t.step_s / max(t.steps, 1), t.windows, t.steps)

    def reset(self):
        self.timer.reset()


# --- whisper.cpp ----------------------------------------------------------------------------------

class WhisperCppEngine:
    name = "whisper.cpp"

    def __init__(self, path: Path, threads: int):
        from pywhispercpp.model import Model

        with stderr_to(None):
            self.model = Model(str(path), n_threads=threads, print_progress=False, language="en")

    def transcribe(self, audio) -> str:
        with stderr_to(None):
            segments = self.model.transcribe(audio)
        return " ".join(s.text.strip() for s in segments)

    def reset(self):
        import _pywhispercpp as pw

        pw.whisper_reset_timings(self.model._ctx)

    def phases(self) -> tuple[float, float, int, int]:
        """(encode ms per run, decode ms per run, encode runs, decode runs) from whisper_print_timings."""
        with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
            with stderr_to(log.name):
                self.model.print_timings()
            text = open(log.name).read()

        def runs(key: str) -> tuple[float, int]:
            m = re.search(rf"{key} time =\s*([\d.]+) ms /\s*(\d+) runs", text)
            return (float(m[1]), int(m[2])) if m else (float("nan"), 0)

        enc_ms, enc_n = runs("encode")
        dec_ms, dec_n = runs("decode")
        return enc_ms / max(enc_n, 1), dec_ms / max(dec_n, 1), enc_n, dec_n


# --- main -----------------------------------------------------------------------------------------

def load_audio_set(names: list[str]):
    from qwhisper.audio import load_audio

    speech = {u.name: u for u in evalsets.speech(english_only=True)}
    out = {}
    for n in names:
        if n == "devlong":
            out[n] = evalsets.devlong()[0]
        else:
            out[n] = load_audio(speech[AUDIO[n]].path)
    return out


def measure(engines: list, model: str, audio_name: str, audio, repeat: int, threads: int) -> list[Measure]:
    """Each repeat runs every engine once, in turn, so that they share the machine's load."""
    from qwhisper.audio import SAMPLE_RATE

    out = [Measure(e.name, audio_name, model, threads, len(audio) / SAMPLE_RATE) for e in engines]
    for _ in range(repeat):
        for eng, m in zip(engines, out):
            m.load.append(f"{os.getloadavg()[0]:.1f}")
            eng.reset()
            t0, c0 = time.perf_counter(), time.process_time()
            m.text = eng.transcribe(audio)
            m.wall_s.append(time.perf_counter() - t0)
            m.cpu_s.append(time.process_time() - c0)
            enc, dec, m.windows, m.steps = eng.phases()
            m.encoder_ms.append(enc)
            m.decode_ms.append(dec)
            print(f"  {m.engine}: wall {m.wall_s[-1]:.2f} s, CPU {m.cpu_s[-1]:.2f} s, encoder {enc:.0f} ms/window, "
                  f"decode {dec:.1f} ms/token, load {m.load[-1]}", file=sys.stderr, flush=True)
    return out


def markdown(results: list[Measure], command: str) -> str:
    lines = [
        "| audio | model | threads | engine | wall s (median) | RTFx | CPU s | encoder ms / window | "
        "decode ms / token | windows | decode steps | load avg (1 min) |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    order = list(AUDIO)
    for m in sorted(results, key=lambda m: (order.index(m.audio), m.model, m.threads)):
        lines.append(
            f"| {m.audio} ({m.audio_s:.0f} s) | {m.model} | {m.threads} | {m.engine} | {m.wall:.2f} "
            f"({', '.join(f'{w:.2f}' for w in m.wall_s)}) | {m.audio_s / m.wall:.1f} | "
            f"{statistics.median(m.cpu_s):.2f} | {statistics.median(m.encoder_ms):.0f} | "
            f"{statistics.median(m.decode_ms):.1f} | {m.windows} | {m.steps} | {', '.join(m.load)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny.en-q5_1", help="comma list of model names or GGML paths")
    p.add_argument("--threads", default="1,2", help="comma list of thread counts")
    p.add_argument("--audio", default="jfk,librispeech", help=f"comma list of {', '.join(AUDIO)}")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--engines", default="qwhisper,whisper.cpp")
    p.add_argument("--json", type=Path, help="append the measurements to this JSON file")
    args = p.parse_args(argv)

    from qwhisper.models import resolve_model

    engines = {"qwhisper": QwhisperEngine, "whisper.cpp": WhisperCppEngine}
    audios = load_audio_set(args.audio.split(","))
    warm = next(iter(audios.values()))[:16000]
    results = []
    for model in args.models.split(","):
        path = Path(resolve_model(model))
        for threads in (int(t) for t in args.threads.split(",")):
            # model loading and first use (qwhisper dequantizes its weights) are not timed
            live = [engines[e](path, threads) for e in args.engines.split(",")]
            for e in live:
                e.transcribe(warm)
            for audio_name, audio in audios.items():
                print(f"{audio_name} {model} threads={threads} ...", file=sys.stderr, flush=True)
                results += measure(live, model, audio_name, audio, args.repeat, threads)
            del live
    command = "python benchmarks/bench_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Command: `{command.strip()}` (commit {git_commit()}); {cpu_name()}; torch {version('torch')}, "
          f"pywhispercpp {version('pywhispercpp')}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')!r}\n")
    print(markdown(results, command))
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.is_file() else []
        old.append({"command": command.strip(), "commit": git_commit(), "results": [asdict(m) for m in results]})
        args.json.write_text(json.dumps(old, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
