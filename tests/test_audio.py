"""Tests for qwhisper.audio: decoding, pad_or_trim, mel filters and the log-mel spectrogram.

References used (none of them is qwhisper.audio itself):
- openai/whisper's log_mel_spectrogram, re-typed below (one torch.stft over the whole signal);
- an explicit DFT of reflect-padded, Hann-windowed frames, written out with index arithmetic;
- the mel filters whisper.cpp stored in a real GGML file, and librosa (when installed);
- Python's `wave` module for the raw PCM of WAV files, and known answers (silence = -1.5,
  the max - 8 floor, tone frequencies, the (L+R)/2 downmix of ffmpeg's resampler).
"""

from __future__ import annotations

import csv
import io
import struct
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_MODEL_Q5_1 as MODEL  # written by whisper.cpp's quantizer
from conftest import SPEECH_DIR as SPEECH

from qwhisper import audio
from qwhisper.audio import (
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    N_SAMPLES_PER_TOKEN,
    SAMPLE_RATE,
    TOKENS_PER_SECOND,
    AudioError,
    load_audio,
    log_mel_spectrogram,
    log_mel_spectrogram_torch,
    mel_filters,
    pad_or_trim,
)
from qwhisper.errors import QWhisperError

# numpy golden (float64 inside) vs torch float32, in log-mel units ((log10 + 4) / 4).
# torch.stft's float32 rounding error is relative to a frame's total energy, so a weak mel
# band's log10 moves most; the max - 8 floor bounds how weak a band can be (1e-8 of the
# loudest). Measured worst case 2.6e-5 on 44 s of speech; 2e-4 (0.08% in power) leaves
# room for other FFT libraries (MKL, cuFFT) without hiding a wrong formula (>= 1e-2).
TORCH_VS_GOLDEN_ATOL = 2e-4


def ggml_mel_filters(path: Path) -> np.ndarray:
    """The mel filters of a whisper.cpp GGML file: magic u32, 11 int32 hparams, then
    int32 n_mel, int32 n_fft, then n_mel * n_fft float32 (little endian)."""
    with open(path, "rb") as f:
        (magic,) = struct.unpack("<I", f.read(4))
        assert magic == 0x67676D6C  # "ggml"
        hparams = struct.unpack("<11i", f.read(44))
        n_mel, n_fft = struct.unpack("<2i", f.read(8))
        assert n_mel == hparams[9]  # hparams.n_mels
        data = np.frombuffer(f.read(4 * n_mel * n_fft), dtype="<f4")
    return data.reshape(n_mel, n_fft).astype(np.float32)


@pytest.fixture(scope="module")
def ggml_filters() -> np.ndarray:
    if not MODEL.exists():
        pytest.skip(f"{MODEL} not present")
    return ggml_mel_filters(MODEL)


@pytest.fixture(scope="module")
def filters80() -> np.ndarray:
    """Input filters for the log-mel tests (bit-identical to the GGML file's, see below)."""
    return mel_filters(80)


def openai_log_mel(x: np.ndarray, filters: np.ndarray, padding: int = 0) -> np.ndarray:
    """openai/whisper's whisper/audio.py log_mel_spectrogram, same operations."""
    a = torch.from_numpy(x)
    if padding > 0:
        a = torch.nn.functional.pad(a, (0, padding))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(a, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel_spec = torch.from_numpy(filters) @ magnitudes
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


def dft_log_mel(x: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """The spec written out: frames centred on t*160 with mirror indices at the edges,
    sin^2 (= periodic Hann) window, explicit DFT sums for the 201 non-negative bins."""
    n_samples = len(x)
    n = np.arange(N_FFT)
    window = np.sin(np.pi * n / N_FFT) ** 2
    k = np.arange(N_FFT // 2 + 1)[:, None]
    cos = np.cos(2 * np.pi * k * n / N_FFT)
    sin = np.sin(2 * np.pi * k * n / N_FFT)
    power = np.empty((len(k), n_samples // HOP_LENGTH))
    for t in range(power.shape[1]):
        idx = t * HOP_LENGTH - N_FFT // 2 + n
        idx = np.where(idx < 0, -idx, idx)  # mirror at 0 without repeating x[0]
        idx = np.where(idx >= n_samples, 2 * (n_samples - 1) - idx, idx)
        frame = x[idx].astype(np.float64) * window
        power[:, t] = (cos @ frame) ** 2 + (sin @ frame) ** 2
    log_spec = np.log10(np.maximum(filters.astype(np.float64) @ power, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def tone(freq: float, seconds: float, amp: float = 0.5, sr: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ------------------------------------------------------------------------------------------
# constants


def test_constants():
    assert (SAMPLE_RATE, N_FFT, HOP_LENGTH) == (16000, 400, 160)
    assert (N_SAMPLES, N_FRAMES) == (480000, 3000)
    assert N_SAMPLES_PER_TOKEN == 320
    assert (FRAMES_PER_SECOND, TOKENS_PER_SECOND) == (100, 50)


# ------------------------------------------------------------------------------------------
# mel filters


def test_mel_filters_match_ggml_file_bit_exact(ggml_filters):
    ours = mel_filters(80)
    assert ours.dtype == np.float32 and ours.shape == ggml_filters.shape == (80, 201)
    assert np.array_equal(ours, ggml_filters), f"max abs diff {np.abs(ours - ggml_filters).max()}"


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_librosa(n_mels):
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)
    assert np.array_equal(mel_filters(n_mels), ref)


def test_mel_filters_shape_known_answers():
    f = mel_filters(128).astype(np.float64)
    freqs = np.arange(201) * SAMPLE_RATE / N_FFT
    assert f.shape == (128, 201) and (f >= 0).all()
    # slaney scale: 1 kHz = 15 mel, linear (3/200 mel per Hz) below, 27 mel per x6.4 above;
    # 8 kHz = 15 + 27 ln 8 / ln 6.4 mel. Band i spans mel edges i and i+2 of n+2 equal steps.
    top = 15 + 27 * np.log(8) / np.log(6.4)
    edges_mel = np.linspace(0, top, 130)
    edges_hz = np.where(edges_mel < 15, edges_mel * 200 / 3, 1000 * 6.4 ** ((edges_mel - 15) / 27))
    for i in (10, 60, 127):
        lo, hi = edges_hz[i], edges_hz[i + 2]
        nz = freqs[f[i] > 0]
        assert nz.min() > lo - 1e-9 and nz.max() < hi + 1e-9
        # slaney norm: peak height 2 / (hi - lo) at the centre edge
        centre = edges_hz[i + 1]
        expect = (
            2 / (hi - lo) * np.clip(np.minimum((freqs - lo) / (centre - lo), (hi - freqs) / (hi - centre)), 0, None)
        )
        np.testing.assert_allclose(f[i], expect, rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------
# log-mel spectrogram


def test_golden_matches_explicit_dft(filters80):
    x = np.random.default_rng(1).standard_normal(2345).astype(np.float32) * 0.1
    x[:300] += tone(700, 300 / SAMPLE_RATE)  # not stationary: exercises the edge mirrors
    ref = dft_log_mel(x, filters80)
    got = log_mel_spectrogram(x, filters80)
    assert got.shape == ref.shape == (80, 2345 // HOP_LENGTH) and got.dtype == np.float32
    # both float64 inside; the golden rounds to float32 once (values near 1: ulp 1.2e-7)
    np.testing.assert_allclose(got, ref, rtol=0, atol=5e-7)


def test_torch_path_is_openai_bit_for_bit_on_cpu(filters80, monkeypatch):
    # The torch path runs torch.stft per chunk of frames (center=False after one reflect
    # pad); each frame's FFT is the same computation as openai's one-shot stft.
    monkeypatch.setattr(audio, "_FRAMES_PER_CHUNK", 37)  # many chunk boundaries, short signal
    x = np.random.default_rng(2).standard_normal(SAMPLE_RATE * 2 + 77).astype(np.float32) * 0.05
    x[5000:9000] += tone(1234, 4000 / SAMPLE_RATE)
    for padding in (0, 12345):
        ref = openai_log_mel(x, filters80, padding)
        got = log_mel_spectrogram_torch(torch.from_numpy(x), torch.from_numpy(filters80), padding)
        assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape
        assert np.array_equal(got.numpy(), ref)


def test_numpy_golden_vs_torch(filters80, monkeypatch):
    monkeypatch.setattr(audio, "_FRAMES_PER_CHUNK", 500)
    rng = np.random.default_rng(3)
    signals = {
        "noise": rng.standard_normal(40000).astype(np.float32) * 0.1,
        "tones": tone(440, 2.0) + tone(3100, 2.0, amp=0.01),
    }
    jfk = SPEECH / "jfk.wav"
    if jfk.exists():
        signals["jfk"] = load_audio(jfk)
    for name, x in signals.items():
        for padding in (0, N_SAMPLES):
            golden = log_mel_spectrogram(x, filters80, padding)
            fast = log_mel_spectrogram_torch(torch.from_numpy(x), torch.from_numpy(filters80), padding).numpy()
            assert golden.shape == fast.shape == (80, (len(x) + padding) // HOP_LENGTH)
            err = np.abs(golden - fast).max()
            assert err <= TORCH_VS_GOLDEN_ATOL, f"{name} padding={padding}: max abs diff {err}"


def test_torch_batch_rows_are_independent_files(filters80):
    a = tone(500, 1.0, amp=0.9)
    b = np.random.default_rng(4).standard_normal(SAMPLE_RATE).astype(np.float32) * 1e-3
    f = torch.from_numpy(filters80)
    batch = log_mel_spectrogram_torch(torch.from_numpy(np.stack([a, b])), f, padding=N_SAMPLES - SAMPLE_RATE)
    assert tuple(batch.shape) == (2, 80, N_FRAMES)
    for i, x in enumerate((a, b)):
        single = log_mel_spectrogram_torch(torch.from_numpy(x), f, padding=N_SAMPLES - SAMPLE_RATE)
        np.testing.assert_allclose(batch[i].numpy(), single.numpy(), rtol=0, atol=1e-6)


def test_silence_is_minus_one_and_a_half(filters80):
    # all bands clamp to 1e-10: (log10(1e-10) + 4) / 4 = -1.5 everywhere
    x = np.zeros(N_SAMPLES, dtype=np.float32)
    golden = log_mel_spectrogram(x, filters80)
    fast = log_mel_spectrogram_torch(torch.from_numpy(x), torch.from_numpy(filters80)).numpy()
    assert golden.shape == (80, N_FRAMES)
    np.testing.assert_allclose(golden, -1.5, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast, -1.5, rtol=0, atol=1e-6)


def test_floor_is_max_minus_eight_decades(filters80):
    # a loud tone then 30 s of zeros (how transcription pads): the silent frames sit at the
    # floor, exactly 8 decades / 4 = 2.0 below the maximum
    for spec in (
        log_mel_spectrogram(tone(1000, 1.0), filters80, padding=N_SAMPLES),
        log_mel_spectrogram_torch(torch.from_numpy(tone(1000, 1.0)), torch.from_numpy(filters80), N_SAMPLES).numpy(),
    ):
        assert spec.shape == (80, N_FRAMES + 100)
        np.testing.assert_allclose(spec[:, 200:], spec.max() - 2.0, rtol=0, atol=1e-6)
        assert spec.min() >= spec.max() - 2.0 - 1e-6


@pytest.mark.parametrize("freq", [1000, 2000, 4000, 6000])
def test_tone_peaks_in_its_mel_band(filters80, freq):
    # freq is a multiple of 40 Hz, i.e. exactly FFT bin freq / 40; the band whose filter
    # weighs that bin most must be the loudest band in every interior frame
    expected_band = int(np.argmax(filters80[:, freq * N_FFT // SAMPLE_RATE]))
    spec = log_mel_spectrogram(tone(freq, 0.5), filters80)
    assert (np.argmax(spec[:, 3:-3], axis=0) == expected_band).all()


def test_too_short_and_bad_filters(filters80):
    with pytest.raises(ValueError, match="more than 200 samples"):
        log_mel_spectrogram(np.zeros(200, np.float32), filters80)
    with pytest.raises(ValueError, match="shape"):
        log_mel_spectrogram(np.zeros(1000, np.float32), filters80[:, :200])
    # padding fixes the short case, as transcription uses it
    assert log_mel_spectrogram(np.zeros(10, np.float32), filters80, padding=N_SAMPLES).shape == (80, 3000)


@pytest.mark.cuda
def test_torch_cuda_vs_golden(filters80):
    x = tone(440, 5.0) + np.random.default_rng(5).standard_normal(5 * SAMPLE_RATE).astype(np.float32) * 0.01
    golden = log_mel_spectrogram(x, filters80, padding=N_SAMPLES)
    fast = log_mel_spectrogram_torch(torch.from_numpy(x).cuda(), torch.from_numpy(filters80), N_SAMPLES)
    assert fast.is_cuda
    assert np.abs(fast.cpu().numpy() - golden).max() <= TORCH_VS_GOLDEN_ATOL


# ------------------------------------------------------------------------------------------
# pad_or_trim


def test_pad_or_trim_numpy_and_torch():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert pad_or_trim(x, 2).tolist() == [[0, 1], [4, 5], [8, 9]]
    assert pad_or_trim(x, 6).tolist() == [[0, 1, 2, 3, 0, 0], [4, 5, 6, 7, 0, 0], [8, 9, 10, 11, 0, 0]]
    assert pad_or_trim(x, 5, axis=0).shape == (5, 4) and (pad_or_trim(x, 5, axis=0)[3:] == 0).all()
    assert pad_or_trim(x, 4) is x
    assert pad_or_trim(np.ones(7, np.float32)).shape == (N_SAMPLES,)
    t = torch.from_numpy(x)
    for length, axis in ((2, -1), (6, -1), (5, 0), (1, 0), (7, 1)):
        got = pad_or_trim(t, length, axis=axis)
        assert torch.is_tensor(got)
        assert np.array_equal(got.numpy(), pad_or_trim(x, length, axis=axis))


# ------------------------------------------------------------------------------------------
# decoding


def write_wav(path, pcm: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """pcm: (n,) or (n, channels) int16."""
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.astype("<i2").tobytes())


def read_wav(path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def encode(pcm: np.ndarray, fmt: str, codec: str | None, rate: int = SAMPLE_RATE, video: bool = False) -> bytes:
    """Encode 16 kHz mono int16 `pcm` with PyAV into container `fmt` (codec None: no audio)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        if video:
            vs = out.add_stream("mpeg4", rate=25)
            vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        if codec is not None:
            st = out.add_stream(codec, rate=rate)
            st.layout = "mono"
            res = av.AudioResampler(format=st.codec_context.codec.audio_formats[0].name, layout="mono", rate=rate)
            frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = 0  # with timestamps the mp4 muxer records AAC's 1024-sample priming
            for f in res.resample(frame) + res.resample(None):
                out.mux(st.encode(f))
            out.mux(st.encode(None))
        if video:
            for i in range(25):
                out.mux(vs.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 9, np.uint8), format="rgb24")))
            out.mux(vs.encode(None))
    return buf.getvalue()


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    """1 s of 16 kHz int16: a 440 Hz tone plus an amplitude-modulated 1.5 kHz tone."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1500 * t) * np.sin(2 * np.pi * 2 * t)
    return np.round(x * 32767).astype(np.int16)


def test_wav_decodes_exactly(tmp_path, pcm):
    path = tmp_path / "a.wav"
    write_wav(path, pcm)
    got = load_audio(path)
    assert got.dtype == np.float32 and got.shape == pcm.shape
    assert np.array_equal(got, pcm / np.float32(32768))  # openai: int16 -> float32 / 32768
    # same result from a str path, bytes, a file object and stdin ("-")
    data = path.read_bytes()
    assert np.array_equal(load_audio(str(path)), got)
    assert np.array_equal(load_audio(data), got)
    with open(path, "rb") as f:
        assert np.array_equal(load_audio(f), got)


def test_stdin(monkeypatch, tmp_path, pcm):
    path = tmp_path / "a.wav"
    write_wav(path, pcm)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    assert np.array_equal(load_audio("-"), pcm / np.float32(32768))


def test_resample_and_downmix(tmp_path):
    # 44.1 kHz stereo: left 1 kHz at 0.4, right 3 kHz at 0.2. ffmpeg's stereo -> mono
    # downmix is (L + R) / 2, so the mono signal has 1 kHz at 0.2 and 3 kHz at 0.1.
    sr = 44100
    t = np.arange(sr) / sr
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 1000 * t), 0.2 * np.sin(2 * np.pi * 3000 * t)], axis=1)
    write_wav(tmp_path / "s.wav", np.round(stereo * 32767).astype(np.int16), sr)
    got = load_audio(tmp_path / "s.wav")
    assert len(got) == SAMPLE_RATE  # 1 s
    seg = got[2000:14000].astype(np.float64)  # away from the resampler's edges
    win = np.hanning(len(seg))
    spec = np.abs(np.fft.rfft(seg * win)) / (win.sum() / 2)  # sine amplitude at its bin
    freqs = np.fft.rfftfreq(len(seg), 1 / SAMPLE_RATE)
    for f0, amp in ((1000, 0.2), (3000, 0.1)):
        near = np.abs(freqs - f0) < 10
        assert abs(spec[near].max() - amp) < 0.005 * amp
    assert spec[(freqs > 3200)].max() < 1e-3  # nothing else
    # another rate passed explicitly
    assert len(load_audio(tmp_path / "s.wav", sr=8000)) == 8000


@pytest.mark.parametrize(
    "fmt, codec, rate, video, min_snr_db",
    [
        ("flac", "flac", SAMPLE_RATE, False, None),  # lossless: exact
        ("mp3", "libmp3lame", SAMPLE_RATE, False, 20),
        ("ogg", "libopus", 48000, False, 30),
        ("ipod", "aac", SAMPLE_RATE, False, 25),  # .m4a
        ("webm", "libopus", 48000, False, 30),
        ("mp4", "aac", SAMPLE_RATE, True, 25),  # video container with a video stream first
    ],
)
def test_compressed_round_trip(pcm, fmt, codec, rate, video, min_snr_db):
    data = encode(pcm, fmt, codec, rate, video)
    got = load_audio(data)
    ref = pcm / np.float32(32768)
    if min_snr_db is None:
        assert np.array_equal(got, ref)
        return
    # encoder delay must be removed (compare at lag 0); AAC pads to a 1024-sample frame
    assert 0 <= len(got) - len(ref) <= 1024
    got = got[: len(ref)].astype(np.float64)
    snr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((got - ref) ** 2))
    assert snr > min_snr_db, f"{fmt}/{codec}: SNR {snr:.1f} dB"


def _speech_rows():
    manifest = SPEECH / "manifest.tsv"
    if not manifest.exists():
        return []
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.skipif(not _speech_rows(), reason=f"{SPEECH}/manifest.tsv not present")
def test_real_speech_wavs():
    for row in _speech_rows():
        path = SPEECH / row["file"]
        got = load_audio(path)
        assert abs(len(got) / SAMPLE_RATE - float(row["duration_s"])) <= 0.0005, row["file"]
        # these are 16 kHz mono s16 already: decoding must be the identity
        assert np.array_equal(got, read_wav(path) / np.float32(32768)), row["file"]


# ------------------------------------------------------------------------------------------
# errors


def assert_audio_error(source, name: str, match: str):
    with pytest.raises(AudioError, match=match) as info:
        load_audio(source)
    assert isinstance(info.value, QWhisperError)
    assert name in str(info.value)


def test_errors_name_the_file(tmp_path, pcm):
    assert_audio_error(tmp_path / "missing.wav", "missing.wav", "no such file")
    assert_audio_error(tmp_path, str(tmp_path), "directory")

    text = tmp_path / "notes.txt"
    text.write_text("this is not audio\n" * 20)
    # ffmpeg has a "tty" demuxer for text art: should it claim the file, there is no audio stream
    assert_audio_error(text, "notes.txt", "not a readable audio file|no audio stream")

    zero = tmp_path / "zero.wav"
    zero.write_bytes(b"")
    assert_audio_error(zero, "zero.wav", "not a readable audio file")

    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, np.int16))
    assert_audio_error(empty, "empty.wav", "no audio samples")

    video_only = tmp_path / "video.mp4"
    video_only.write_bytes(encode(pcm, "mp4", None, video=True))
    assert_audio_error(video_only, "video.mp4", "no audio stream")

    assert_audio_error(b"\x00garbage" * 100, "<bytes>", "not a readable audio file")
    with pytest.raises(TypeError):
        load_audio(12345)


def test_truncated_files(tmp_path, pcm):
    full = tmp_path / "full.wav"
    write_wav(full, pcm)
    data = full.read_bytes()

    cut_header = tmp_path / "cut_header.wav"
    cut_header.write_bytes(data[:30])  # inside the 44-byte RIFF header
    assert_audio_error(cut_header, "cut_header.wav", "not a readable audio file")

    # an m4a whose index (moov, written last) is cut off cannot be decoded at all
    m4a = encode(pcm, "ipod", "aac")
    cut_m4a = tmp_path / "cut.m4a"
    cut_m4a.write_bytes(m4a[: len(m4a) // 2])
    assert_audio_error(cut_m4a, "cut.m4a", "not a readable audio file")

    # cut inside the samples: like the ffmpeg CLI, the samples before the cut come back
    cut_data = tmp_path / "cut_data.wav"
    cut_data.write_bytes(data[: 44 + 2 * 1000 + 1])
    got = load_audio(cut_data)
    assert np.array_equal(got, pcm[:1000] / np.float32(32768))
