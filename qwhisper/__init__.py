"""qwhisper: Whisper speech recognition from whisper.cpp GGML files, on NVIDIA GPUs and a numpy golden.

    import qwhisper
    model = qwhisper.load_model("tiny.en")            # a name, or a path to a ggml-*.bin file
    segments, info = model.transcribe("speech.wav")
    for s in segments:
        print(f"[{s.start:.2f} -> {s.end:.2f}] {s.text}")

Importing the package is cheap: torch and the model code load on first use.
"""

__version__ = "0.1.0"

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
