"""qwhisper quantize: whisper.cpp's tensor selection, header, and byte identity with its output."""

import re

import numpy as np
import pytest

from qwhisper.architectures import F32_TENSORS
from qwhisper.cli import main
from qwhisper.errors import QWhisperError
from qwhisper.ggml_file import read_ggml
from qwhisper.quantize import quantize_file
from qwhisper.quants import GGMLType, dequantize, quantize

QTYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
FTYPE_CODE = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}  # whisper.cpp's enum ggml_ftype


@pytest.mark.parametrize("qtype", QTYPES)
def test_selection_rule_and_header(toy_f16, tmp_path, qtype):
    out = tmp_path / f"toy-{qtype}.bin"
    assert main(["quantize", str(toy_f16), str(out), qtype]) == 0
    src, dst = read_ggml(toy_f16), read_ggml(out)
    assert dst.hparams.ftype == 2000 + FTYPE_CODE[qtype] and dst.hparams.qnt_version == 2
    assert dst.vocab == src.vocab and np.array_equal(dst.mel_filters, src.mel_filters)
    assert list(dst.tensors) == list(src.tensors)
    qt = GGMLType[qtype.upper()]
    for name, t in src.tensors.items():
        d = dst.tensors[name]
        if len(t.shape) == 2 and name not in F32_TENSORS:
            assert d.ggml_type == qt, name
            # the bytes are the golden quantization of the f16 weights
            assert np.array_equal(d.data, quantize(t.dequantize(), qt)), name
        else:  # biases, norms, conv weights, positional embeddings: copied as they are
            assert d.ggml_type == t.ggml_type and np.array_equal(d.data, t.data), name


def test_byte_identical_to_whisper_cpp_quantizer(tiny_en_f16, shared_q5_1, tmp_path):
    """shared/models/ggml-tiny.en-q5_1.bin is whisper.cpp's quantizer output for this same f16 input."""
    ours = quantize_file(tiny_en_f16, tmp_path / "ours-q5_1.bin", "q5_1").read_bytes()
    theirs = shared_q5_1.read_bytes()
    if ours != theirs:
        a, b = read_ggml(tmp_path / "ours-q5_1.bin"), read_ggml(shared_q5_1)
        diff = [n for n in b.tensors if not np.array_equal(a.tensors[n].data, b.tensors[n].data)]
        pytest.fail(f"{len(diff)} tensors differ from whisper.cpp's output, first: {diff[:3]}")


@pytest.mark.parametrize("qtype", QTYPES)
def test_pywhispercpp_transcribes_our_quantized_files(tiny_en_f16, tmp_path, qtype):
    """whisper.cpp itself loads each quantized file and transcribes real speech with it."""
    from conftest import SPEECH_DIR, need

    pytest.importorskip("pywhispercpp")
    from pywhispercpp.model import Model

    jfk = need(SPEECH_DIR / "jfk.wav")
    out = quantize_file(tiny_en_f16, tmp_path / f"tiny.en-{qtype}.bin", qtype)
    model = Model(str(out), n_threads=2, print_progress=False, print_realtime=False)
    text = " ".join(s.text for s in model.transcribe(str(jfk)))
    text = " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())  # words only: q4_0 adds commas
    assert "ask not what your country can do for you" in text, text


def test_refuses_bad_requests(toy_f16, tmp_path, capsys):
    with pytest.raises(QWhisperError, match="overwrite the input"):
        quantize_file(toy_f16, toy_f16, "q8_0")
    with pytest.raises(QWhisperError, match="cannot quantize to F16"):
        quantize_file(toy_f16, tmp_path / "x.bin", "f16")
    assert main(["quantize", str(tmp_path / "missing.bin"), str(tmp_path / "o.bin"), "q8_0"]) == 1
    assert "missing.bin" in capsys.readouterr().err and not (tmp_path / "o.bin").exists()
    with pytest.raises(SystemExit):  # argparse rejects the type with its list of choices
        main(["quantize", str(toy_f16), str(tmp_path / "o.bin"), "q3_k"])


def test_requantizing_a_quantized_file(shared_q5_1, tmp_path):
    """An extension over whisper.cpp: q5_1 in, q8_0 out, through the golden dequantization."""
    out = read_ggml(quantize_file(shared_q5_1, tmp_path / "q8.bin", "q8_0"))
    src = read_ggml(shared_q5_1)
    w = src["encoder.blocks.0.mlp.0.weight"]
    assert out["encoder.blocks.0.mlp.0.weight"].ggml_type == GGMLType.Q8_0
    got = dequantize(out["encoder.blocks.0.mlp.0.weight"].data, GGMLType.Q8_0, w.shape)
    ref = w.dequantize()
    # Q8_0: q = round(x / d) with d = amax/127, so |x - d*q| <= d/2; d is then stored as f16
    # (relative error <= 2^-11), which moves d*q by up to |q| * d * 2^-11 <= 127 * d * 2^-11.
    d = np.abs(ref.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(got - ref).reshape(-1, 32) <= d * (0.5 + 127 * 2.0**-11) + 1e-7)


@pytest.mark.parametrize("qtype", QTYPES)
def test_real_tiny_en_dequantizes_like_gguf(tiny_en_f16, tmp_path, qtype):
    """Every tensor of a real quantized tiny.en equals gguf's dequantization, bit for bit
    (base is covered by scripts/report_ggml_files.py -> docs/reports/ggml-files.md)."""
    gguf = pytest.importorskip("gguf")
    f = read_ggml(quantize_file(tiny_en_f16, tmp_path / f"tiny.en-{qtype}.bin", qtype))
    for t in f.tensors.values():
        raw = np.asarray(t.data).reshape(*t.shape[:-1], -1)
        theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(t.ggml_type))).reshape(t.shape)
        assert np.array_equal(t.dequantize().view(np.uint32), theirs.astype(np.float32).view(np.uint32)), t.name
