"""qwhisper: Whisper speech recognition from whisper.cpp GGML files, on NVIDIA GPUs and a numpy golden.

    import qwhisper
    model = qwhisper.load_model("tiny.en")            # a name, or a path to a ggml-*.bin file
    segments, info = model.transcribe("speech.wav")
    for s in segments:
        print(f"[{s.start:.2f} -> {s.end:.2f}] {s.text}")

Importing the package is cheap: torch and the model code load on first use.
"""

import os as _os

__version__ = "0.1.0"

# torch's CPU threads (GNU OpenMP) spin at the end of every parallel region by default. When
# other processes keep the cores busy, a spinning thread burns the time slice its partner needs,
# and a decoder step (hundreds of tiny ops) slows down 3-8x: tiny.en on a 44-s file, 2 threads on
# a 2-core machine under load, took 13-49 s instead of 5-7.6 s with passive waiting, which costs
# nothing measurable on idle cores (docs/reports/speed-cpu.md). libgomp reads the variable when
# torch is first imported, so this only applies if qwhisper is imported first; a value already
# set in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["load_model", "transcribe", "WhisperModel", "TranscribeOptions", "Segment", "TranscriptionInfo",
           "GGMLType", "read_ggml", "__version__"]

_LAZY = {
    "load_model": "transcribe", "transcribe": "transcribe", "WhisperModel": "transcribe",
    "TranscribeOptions": "transcribe", "Segment": "transcribe", "TranscriptionInfo": "transcribe",
    "GGMLType": "quants", "read_ggml": "ggml_file",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'qwhisper' has no attribute {name!r}")
