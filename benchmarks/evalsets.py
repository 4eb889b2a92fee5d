"""The offline evaluation sets: real speech with reference transcripts, read where it lives.

- librivox: the 5 LibriVox utterances of Debian's pocketsphinx-testdata (transcripts in its
  `transcription` file, `<s> ... </s> (utt-id)` lines).
- speech: the WAVs of shared/data/speech with manifest.tsv (English ones unless asked).
- devlong: the English files of shared/data/speech, in manifest order, concatenated without gaps
  and repeated until at least 600 s (DESIGN.md's long-form workload; 619 s).
Third-party audio is never copied into the project.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")


def shared_dir() -> Path:
    if os.environ.get("QWHISPER_SHARED"):
        return Path(os.environ["QWHISPER_SHARED"])
    repo = Path(__file__).resolve().parents[1]
    for cand in (repo / "shared", repo.parent / "shared", Path("/work/shared")):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("shared/ data folder not found; set QWHISPER_SHARED")


@dataclass(frozen=True)
class Utterance:
    name: str
    path: Path
    reference: str
    language: str = "en"


def librivox() -> list[Utterance]:
    out = []
    for line in (LIBRIVOX_DIR / "transcription").read_text().splitlines():
        m = re.match(r"<s>\s*(.*?)\s*</s>\s*\((\S+)\)", line)
        if m:
            out.append(Utterance(m[2], LIBRIVOX_DIR / f"{m[2]}.wav", m[1]))
    return out


def speech(english_only: bool = True) -> list[Utterance]:
    folder = shared_dir() / "data" / "speech"
    out = []
    with open(folder / "manifest.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            name = row["file"]
            lang = "zh" if name.startswith("zh_") else "es" if name.startswith("es_") else "en"
            if english_only and lang != "en":
                continue
            out.append(Utterance(name, folder / name, row["reference_text"], lang))
    return out


def devlong(min_seconds: float = 600.0) -> tuple[np.ndarray, str]:
    """(16 kHz float32 audio, reference text) of the long-form workload."""
    from qwhisper.audio import SAMPLE_RATE, load_audio

    parts = [(load_audio(u.path), u.reference) for u in speech(english_only=True)]
    audio, refs, total = [], [], 0
    while total < min_seconds * SAMPLE_RATE:
        for a, r in parts:
            audio.append(a)
            refs.append(r)
            total += len(a)
    return np.concatenate(audio), " ".join(refs)
