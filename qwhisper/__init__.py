"""qwhisper: Whisper speech recognition from whisper.cpp GGML files, on NVIDIA GPUs and a numpy golden."""

__version__ = "0.1.0"
