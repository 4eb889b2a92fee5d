"""The project's exception types: one base class so the CLI can print one line and exit."""


class QWhisperError(Exception):
    """Base of every error qwhisper raises on bad input (files, audio, options, devices)."""


class ModelFormatError(QWhisperError):
    """A model file that is not a valid whisper.cpp GGML file (or uses an unsupported feature)."""

    def __init__(self, path, message: str, offset: int | None = None, tensor: str | None = None):
        self.path = str(path)
        self.offset = offset
        self.tensor = tensor
        where = self.path
        if offset is not None:
            where += f" at byte {offset}"
        if tensor is not None:
            where += f" (tensor {tensor!r})"
        super().__init__(f"{where}: {message}")
