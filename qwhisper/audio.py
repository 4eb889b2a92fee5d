"""Audio front end: decode any file to 16 kHz mono float32, pad/trim, and Whisper's log-mel.

The constants and the log-mel math are openai/whisper's (`whisper/audio.py`). Decoding uses
PyAV (it bundles ffmpeg's libraries, so no ffmpeg binary is needed) and resamples to s16 mono
16 kHz before dividing by 32768: the same samples openai/whisper gets from
`ffmpeg -ac 1 -ar 16000 -f s16le` and faster-whisper's `decode_audio` gets from PyAV.

Two log-mel implementations, same math:
  log_mel_spectrogram        numpy golden (float64 inside, float32 out) -- the reference
  log_mel_spectrogram_torch  production path (float32, torch.stft on CPU or CUDA)
The mel filters are an input (the GGML file carries them); `mel_filters` recomputes them
(librosa's slaney filterbank, bit-exact) for the model converter.
"""

from __future__ import annotations

import io
import os
import sys
from typing import BinaryIO, Union

import numpy as np

from .errors import QWhisperError


def exact_div(x: int, y: int) -> int:
    assert x % y == 0, f"{x} is not a multiple of {y}"
    return x // y


# hard-coded audio hyperparameters (openai/whisper's names and values)
SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window at 16 kHz
HOP_LENGTH = 160  # 10 ms hop at 16 kHz
CHUNK_LENGTH = 30  # seconds of audio per encoder window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-second chunk
N_FRAMES = exact_div(N_SAMPLES, HOP_LENGTH)  # 3000 frames in a mel spectrogram input
N_FREQS = N_FFT // 2 + 1  # 201 rfft bins: the second dimension of the mel filters

N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # 320: the encoder's stride-2 conv halves the frame rate
FRAMES_PER_SECOND = exact_div(SAMPLE_RATE, HOP_LENGTH)  # 100: 10 ms per audio frame
TOKENS_PER_SECOND = exact_div(SAMPLE_RATE, N_SAMPLES_PER_TOKEN)  # 50: 20 ms per audio token

# The STFT is computed this many frames at a time so that memory stays bounded on long files
# (an hour of audio is 360k frames; all at once would be ~1.2 GB of complex128 in the golden).
_FRAMES_PER_CHUNK = 4096

AudioSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]


class AudioError(QWhisperError):
    """Audio input that cannot be used: missing, not audio, no audio stream, or empty."""

    def __init__(self, source: str, message: str):
        self.source = source
        super().__init__(f"{source}: {message}")


# --------------------------------------------------------------------------------------------
# decoding


def _open_source(source: AudioSource) -> tuple[object, str]:
    """Return (what av.open accepts, a name for error messages)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path == "-":
            # stdin is usually a pipe (not seekable); containers like mp4 need seeking, so
            # buffer it once in memory.
            return io.BytesIO(sys.stdin.buffer.read()), "<stdin>"
        if not os.path.exists(path):
            raise AudioError(path, "no such file")
        if os.path.isdir(path):
            raise AudioError(path, "is a directory, not an audio file")
        return path, path
    if hasattr(source, "read"):
        return source, str(getattr(source, "name", "<file object>"))
    raise TypeError(f"load_audio: expected a path, '-', bytes or a binary file, got {type(source)!r}")


def load_audio(source: AudioSource, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio (or video) file to mono float32 samples at `sr` Hz.

    source: a path, "-" for stdin, bytes, or a binary file object. Any format ffmpeg reads
    (wav, flac, mp3, ogg/vorbis/opus, m4a/aac, webm, mp4/mkv/mov video); the first audio
    stream is used. Returns shape (n_samples,), float32 in [-1, 1): s16 samples / 32768.

    Decoding streams packets through the resampler; only the s16 result (2 bytes/sample)
    is held before the final float32 array. Packets that fail to decode are skipped and a
    container that breaks off mid-stream (a truncated file) yields the audio before the
    break, as the ffmpeg CLI does. Raises AudioError (naming the file) for a missing file,
    a file ffmpeg cannot read, one with no audio stream, and one with no audio samples.
    """
    try:
        import av
    except ImportError as e:  # a dependency, imported late so the mel code works without it
        raise QWhisperError("decoding audio needs PyAV: pip install av") from e

    target, name = _open_source(source)
    try:
        container = av.open(target, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError) as e:
        raise AudioError(name, f"not a readable audio file ({_reason(e)})") from e

    chunks: list[np.ndarray] = []  # int16 mono pieces
    n_bad_packets = 0
    first_error = None
    with container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise AudioError(name, f"no audio stream (streams found: {', '.join(kinds)})")
        stream = container.streams.audio[0]
        resampler, setup = None, None

        def resample(frame):
            nonlocal resampler, setup
            # A stream may change rate/layout mid-way (e.g. concatenated mp3s); PyAV's
            # resampler is fixed to its first frame's format, so flush it and start anew.
            key = (frame.format.name, frame.layout.name, frame.sample_rate)
            if resampler is not None and key != setup:
                yield from resampler.resample(None)
                resampler = None
            if resampler is None:
                resampler = av.AudioResampler(format="s16", layout="mono", rate=sr)
                setup = key
            yield from resampler.resample(frame)

        def keep(frames):
            for out in frames:
                # packed s16 mono: to_ndarray() is (1, n_samples); copy so the frame can go
                chunks.append(np.array(out.to_ndarray().reshape(-1), dtype=np.int16))

        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:  # a corrupt packet: skip it, as ffmpeg does
                    n_bad_packets += 1
                    first_error = first_error or e
                    continue
                for frame in frames:
                    keep(resample(frame))
        except av.FFmpegError as e:  # the container breaks off (truncated file)
            first_error = first_error or e
        if resampler is not None:
            keep(resampler.resample(None))  # flush the resampler's delay line

    n = sum(len(c) for c in chunks)
    if n == 0:
        why = f" ({n_bad_packets} packets failed to decode: {_reason(first_error)})" if first_error else ""
        raise AudioError(name, f"contains no audio samples{why}")
    audio = np.empty(n, dtype=np.float32)
    pos = 0
    for c in chunks:
        # /32768 is exact in float32 (a power of two): the same numbers as openai's
        # np.frombuffer(out, np.int16).astype(np.float32) / 32768.0
        np.divide(c, np.float32(32768.0), out=audio[pos : pos + len(c)])
        pos += len(c)
    return audio


def _reason(e: BaseException | None) -> str:
    if e is None:
        return "unknown error"
    text = getattr(e, "strerror", None) or str(e)
    return text.strip() or type(e).__name__


# --------------------------------------------------------------------------------------------
# padding


def pad_or_trim(array, length: int = N_SAMPLES, *, axis: int = -1):
    """Zero-pad or trim `array` (numpy array or torch tensor) to `length` along `axis`,
    as the encoder expects (N_SAMPLES samples, or N_FRAMES mel frames with axis=-1)."""
    torch = sys.modules.get("torch")  # a tensor implies torch is already imported
    n = array.shape[axis]
    if torch is not None and torch.is_tensor(array):
        if n > length:
            array = array.narrow(axis, 0, length)
        elif n < length:
            pads = [0, 0] * array.ndim  # F.pad lists (left, right) pairs from the last dim
            pads[2 * ((array.ndim - 1 - axis) % array.ndim) + 1] = length - n
            array = torch.nn.functional.pad(array, pads)
        return array
    array = np.asarray(array)
    if n > length:
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, length)
        array = array[tuple(index)]
    elif n < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - n)
        array = np.pad(array, widths)
    return array


# --------------------------------------------------------------------------------------------
# mel filterbank (librosa.filters.mel, slaney scale and norm), for the model converter


def _hz_to_mel(freq):
    """Slaney mel scale (librosa.hz_to_mel, htk=False): linear below 1 kHz, log above."""
    freq = np.asanyarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3  # 66.67 Hz per mel in the linear part
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp  # 15 mel
    logstep = np.log(6.4) / 27.0  # 6.4x frequency per 27 mel
    if freq.ndim:
        log_t = freq >= min_log_hz
        mels[log_t] = min_log_mel + np.log(freq[log_t] / min_log_hz) / logstep
    elif freq >= min_log_hz:
        mels = min_log_mel + np.log(freq / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels):
    """Inverse of _hz_to_mel (librosa.mel_to_hz, htk=False)."""
    mels = np.asanyarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    if mels.ndim:
        log_t = mels >= min_log_mel
        freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    elif mels >= min_log_mel:
        freqs = min_log_hz * np.exp(logstep * (mels - min_log_mel))
    return freqs


def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels) (htk=False, norm="slaney",
    fmin=0, fmax=sr/2) in plain numpy: shape (n_mels, n_fft // 2 + 1), float32.

    openai/whisper's mel_filters.npz (80 and 128 bins) was made by librosa; this follows
    librosa's steps operation for operation (float64 math, float32 rounding where librosa
    stores into its float32 array) so the result is bit-identical to it.
    """
    if n_mels < 1:
        raise ValueError(f"mel_filters: n_mels must be positive, got {n_mels}")
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)  # (n_freqs,) bin centre frequencies
    min_mel = _hz_to_mel(0.0)
    max_mel = _hz_to_mel(float(sr) / 2)
    mel_f = _mel_to_hz(np.linspace(min_mel, max_mel, n_mels + 2))  # (n_mels + 2,) band edges
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]  # rising slope of triangle i
    upper = ramps[2:] / fdiff[1:, None]  # falling slope of triangle i
    # librosa assigns each row into a float32 array: the first rounding
    weights = np.maximum(0, np.minimum(lower, upper)).astype(np.float32)
    # slaney norm: each triangle gets area ~1 (2 / bandwidth in Hz); librosa's in-place
    # `weights *= enorm` multiplies float32 by float64 in float64 and rounds again
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return (weights.astype(np.float64) * enorm[:, None]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# log-mel spectrogram


def _check_filters(filters, n_samples: int) -> None:
    if filters.ndim != 2 or filters.shape[1] != N_FREQS:
        raise ValueError(f"mel filters must have shape (n_mels, {N_FREQS}), got {tuple(filters.shape)}")
    if n_samples <= N_FFT // 2:
        # torch.stft's reflect padding needs more than N_FFT/2 samples; openai's transcribe
        # always appends 30 s of zeros (padding=N_SAMPLES), which avoids this.
        raise ValueError(
            f"log-mel needs more than {N_FFT // 2} samples (after padding), got {n_samples}; "
            f"pass padding=N_SAMPLES as transcription does"
        )


def log_mel_spectrogram(audio: np.ndarray, filters: np.ndarray, padding: int = 0) -> np.ndarray:
    """Whisper's log-mel spectrogram, numpy golden.

    audio: (n_samples,) float32 at 16 kHz; filters: (n_mels, 201) from the GGML file;
    padding: zeros appended first (transcription uses N_SAMPLES).
    Returns (n_mels, (n_samples + padding) // HOP_LENGTH) float32.

    openai/whisper's steps: periodic Hann window of N_FFT, hop 160, centred frames with
    reflect padding of N_FFT/2 (torch.stft defaults), last frame dropped, |X|^2, filters @,
    log10(max(., 1e-10)), floor at (global max - 8), (x + 4) / 4. Whisper does all of this
    in float32; this golden does it in float64 from the float32 inputs (audio, filters) and
    rounds once at the end, so it is the exact value the float32 paths approximate. Frames
    are processed _FRAMES_PER_CHUNK at a time to bound memory.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    filters = np.asarray(filters, dtype=np.float32)
    if padding > 0:
        audio = np.pad(audio, (0, padding))
    _check_filters(filters, len(audio))

    padded = np.pad(audio, N_FFT // 2, mode="reflect")  # same as torch.stft center=True
    n_frames = len(audio) // HOP_LENGTH  # 1 + len // hop frames, minus the dropped last one
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic Hann (torch.hann_window)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    filters64 = filters.astype(np.float64)

    log_spec = np.empty((filters.shape[0], n_frames), dtype=np.float64)
    for start in range(0, n_frames, _FRAMES_PER_CHUNK):
        stop = min(start + _FRAMES_PER_CHUNK, n_frames)
        spec = np.fft.rfft(frames[start:stop] * window, axis=-1)  # (chunk, 201) complex128
        power = spec.real**2 + spec.imag**2
        mel = filters64 @ power.T  # (n_mels, chunk)
        log_spec[:, start:stop] = np.log10(np.maximum(mel, 1e-10))
    # in place: on an hour of audio log_spec is 230 MB (80 bins, float64)
    np.maximum(log_spec, log_spec.max() - 8.0, out=log_spec)
    log_spec += 4.0
    log_spec /= 4.0
    return log_spec.astype(np.float32)


def log_mel_spectrogram_torch(audio, filters, padding: int = 0):
    """Whisper's log-mel spectrogram in torch (CPU or CUDA), float32 like openai/whisper.

    audio: (n_samples,) or (batch, n_samples) tensor (a numpy array is converted);
    filters: (n_mels, 201), moved to audio's device. Returns (n_mels, n_frames) or
    (batch, n_mels, n_frames) float32 with n_frames = (n_samples + padding) // HOP_LENGTH.
    Each batch row is its own file: its max (for the max - 8 floor) is taken per row.

    Same operations as openai/whisper's log_mel_spectrogram (torch.stft with
    return_complex, .abs() ** 2, filters @, clamp, log10), but the frames go through
    torch.stft _FRAMES_PER_CHUNK at a time (reflect-padded once, center=False per chunk),
    so an hour of audio does not need a 600 MB complex spectrogram at once.
    """
    import torch
    import torch.nn.functional as F

    if not torch.is_tensor(audio):
        audio = torch.from_numpy(np.asarray(audio))
    audio = audio.to(torch.float32)
    filters = torch.as_tensor(filters).to(device=audio.device, dtype=torch.float32)
    batched = audio.ndim == 2
    if not batched:
        audio = audio.reshape(1, -1)
    if padding > 0:
        audio = F.pad(audio, (0, padding))
    _check_filters(filters, audio.shape[-1])

    n_frames = audio.shape[-1] // HOP_LENGTH
    # reflect padding as torch.stft(center=True) does it (F.pad wants a (N, C, L) input)
    padded = F.pad(audio[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")[:, 0, :]
    window = torch.hann_window(N_FFT, device=audio.device)  # periodic, float32
    log_spec = torch.empty(audio.shape[0], filters.shape[0], n_frames, device=audio.device)
    for start in range(0, n_frames, _FRAMES_PER_CHUNK):
        stop = min(start + _FRAMES_PER_CHUNK, n_frames)
        # frames start..stop-1 read padded samples [start*hop, (stop-1)*hop + N_FFT)
        piece = padded[:, start * HOP_LENGTH : (stop - 1) * HOP_LENGTH + N_FFT]
        stft = torch.stft(piece, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
        magnitudes = stft.abs() ** 2  # (batch, 201, chunk)
        mel = filters @ magnitudes  # (batch, n_mels, chunk)
        log_spec[:, :, start:stop] = torch.clamp(mel, min=1e-10).log10()
    floor = log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0
    log_spec = torch.maximum(log_spec, floor)
    log_spec = (log_spec + 4.0) / 4.0
    return log_spec if batched else log_spec[0]
