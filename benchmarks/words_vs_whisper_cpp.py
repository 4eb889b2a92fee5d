"""Word timestamps: qwhisper (openai's method) vs whisper.cpp's DTW token timestamps, same model file.

    python benchmarks/words_vs_whisper_cpp.py [--model PATH] [--preset tiny.en] [--files a.wav ...]

For each file (default: the English WAVs of shared/data/speech and the LibriVox utterances),
qwhisper transcribes with word_timestamps=True and whisper.cpp (pywhispercpp, flash attention off,
`dtw_token_timestamps` with the model's alignment-head preset) with its defaults. whisper.cpp's
t_dtw of a token is where its DTW path enters the next token's row, i.e. the token's end; a
word's end is its last token's t_dtw and its start the previous token's (0 at a window start).
Words are matched by difflib over the normalised word sequences; the table gives per file the
words matched, the median and largest |start difference| and |end difference|, the largest
end difference over the words without trailing punctuation, and the share of matched words with
both within 0.3 s. (A word's trailing comma/period is a token of its own; openai's merge, which
we follow, keeps the word's end before it, where whisper.cpp ends the word after it -- so across
a pause after a comma the two ends differ by the pause.)
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from evalsets import librivox, shared_dir, speech


def whisper_cpp_words(model_path: str, preset: str, audio: np.ndarray) -> list[tuple[str, float, float]]:
    import _pywhispercpp as pw
    from pywhispercpp.model import Model

    presets = pw.whisper_alignment_heads_preset
    m = Model(model_path, n_threads=2, print_progress=False, print_realtime=False, redirect_whispercpp_logs_to=None,
              context_params={"flash_attn": False, "dtw_token_timestamps": True,
                              "dtw_aheads_preset": getattr(presets, "WHISPER_AHEADS_" + preset.upper().replace(".", "_")
                                                           .replace("-", "_"))})
    m.transcribe(audio)
    ctx = m._ctx
    eot = pw.whisper_token_eot(ctx)
    words, prev_end, last_seg_t0 = [], 0.0, None
    for i in range(pw.whisper_full_n_segments(ctx)):
        seg_t0 = pw.whisper_full_get_segment_t0(ctx, i) / 100
        word = None
        for j in range(pw.whisper_full_n_tokens(ctx, i)):
            d = pw.whisper_full_get_token_data(ctx, i, j)
            if d.id >= eot:
                continue
            text, t = pw.whisper_full_get_token_text(ctx, i, j), d.t_dtw / 100
            if word is None and last_seg_t0 is not None and prev_end > seg_t0 + 0.5:
                prev_end = seg_t0  # a new window began (its path starts at the window's start)
            if text.startswith(" ") or word is None:
                if word is not None:
                    words.append(tuple(word))
                word = [text, prev_end, t]
            else:
                word[0] += text
                word[2] = t
            prev_end = t
        if word is not None:
            words.append(tuple(word))
        last_seg_t0 = seg_t0
    return words


def compare(ours: list[tuple[str, float, float]], theirs: list[tuple[str, float, float]]):
    norm = lambda w: w.strip().strip(".,!?;:\"'").lower()
    sm = difflib.SequenceMatcher(a=[norm(w[0]) for w in ours], b=[norm(w[0]) for w in theirs], autojunk=False)
    pairs = [(ours[a + i], theirs[b + i]) for a, b, n in sm.get_matching_blocks() for i in range(n)]
    ds = np.array([abs(o[1] - t[1]) for o, t in pairs])
    de = np.array([abs(o[2] - t[2]) for o, t in pairs])
    return pairs, ds, de


def main(argv: list[str] | None = None) -> int:
    import torch

    from qwhisper.audio import load_audio
    from qwhisper.transcribe import WhisperModel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(shared_dir() / "models" / "ggml-tiny.en-q5_1.bin"))
    p.add_argument("--preset", default="tiny.en", help="whisper.cpp's alignment-head preset of the model")
    p.add_argument("--files", nargs="*", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    files = args.files or [str(u.path) for u in speech(english_only=True)] + [str(u.path) for u in librivox()]
    model = WhisperModel(args.model, "cpu")
    print("| file | words (matched) | start Δ median / max | end Δ median / max | end Δ max, no punctuation | both within 0.3 s |")
    print("| --- | --- | --- | --- | --- | --- |")
    all_s, all_e, all_np = [], [], []
    for f in files:
        audio = load_audio(f)
        segments, _ = model.transcribe(audio, word_timestamps=True, verbose=False)
        ours = [(w.word, w.start, w.end) for s in segments for w in s.words]
        pairs, ds, de = compare(ours, whisper_cpp_words(args.model, args.preset, audio))
        plain = np.array([not (o[0].rstrip()[-1:] in ".,!?;:" or t[0].rstrip()[-1:] in ".,!?;:") for o, t in pairs])
        all_s += ds.tolist()
        all_e += de.tolist()
        all_np += de[plain].tolist()
        within = np.mean((ds <= 0.3 + 1e-9) & (de <= 0.3 + 1e-9)) if len(pairs) else float("nan")
        print(f"| {Path(f).name} | {len(ours)} ({len(pairs)}) | {np.median(ds):.2f} / {ds.max():.2f} s | "
              f"{np.median(de):.2f} / {de.max():.2f} s | {de[plain].max():.2f} s | {100 * within:.0f} % |", flush=True)
    s, e, n = np.array(all_s), np.array(all_e), np.array(all_np)
    print(f"| all | {len(s)} matched | {np.median(s):.2f} / {s.max():.2f} s | {np.median(e):.2f} / {e.max():.2f} s | "
          f"{n.max():.2f} s | {100 * np.mean((s <= 0.3 + 1e-9) & (e <= 0.3 + 1e-9)):.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
