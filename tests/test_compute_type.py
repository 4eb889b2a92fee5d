"""compute_type: the torch backend's activation dtype (float16 on CUDA by default, float32 on request)."""

import pytest
import torch

from conftest import LIBRIVOX_DIR, need
from qwhisper.decoding import OptionError
from qwhisper.transcribe import WhisperModel


def test_compute_type_validation(toy_f16):
    with pytest.raises(OptionError, match="compute_type"):
        WhisperModel(toy_f16, device="cpu", compute_type="bfloat8")
    with pytest.raises(OptionError, match="float16 needs a CUDA device"):
        WhisperModel(toy_f16, device="cpu", compute_type="float16")
    assert WhisperModel(toy_f16, device="cpu", compute_type="float32").model.dtype == torch.float32
    with pytest.raises(OptionError, match="cache_decoder_weights"):
        WhisperModel(toy_f16, backend="numpy", cache_decoder_weights=True)
    assert WhisperModel(toy_f16, device="cpu").model.dtype == torch.float32


def test_cli_passes_compute_type():
    import argparse

    from qwhisper.transcribe import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["a.wav", "--compute-type", "float32"]).compute_type == "float32"
    assert parser.parse_args(["a.wav"]).compute_type == "auto"
    assert parser.parse_args(["a.wav", "--cache-decoder-weights"]).cache_decoder_weights
    assert not parser.parse_args(["a.wav"]).cache_decoder_weights


@pytest.mark.cuda
def test_cuda_float32_matches_the_golden(shared_q5_1):
    """float32 activations on CUDA (weights still read as raw blocks by the Triton kernels) give the
    numpy golden's tokens on real speech."""
    import wave

    import numpy as np

    # the stdlib reads this 16-kHz mono WAV (the GPU machine has no PyAV): load_audio's samples
    with wave.open(str(need(LIBRIVOX_DIR / "sense_and_sensibility_01_austen_64kb-0870.wav"))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    gpu = WhisperModel(shared_q5_1, device="cuda", compute_type="float32")
    assert gpu.model.dtype == torch.float32
    golden = WhisperModel(shared_q5_1, backend="numpy")
    ours = [s.tokens for s in gpu.transcribe(audio, language="en", verbose=False)[0]]
    theirs = [s.tokens for s in golden.transcribe(audio, language="en", verbose=False)[0]]
    assert ours == theirs
