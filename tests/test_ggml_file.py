"""GGML reader/writer: round trips, the real whisper.cpp file, and every kind of bad file."""

import dataclasses
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwhisper.errors import ModelFormatError
from qwhisper.ggml_file import HParams, TensorInfo, expected_tensor_shapes, read_ggml, write_ggml
from qwhisper.quants import GGMLType, tensor_nbytes

# A whisper-shaped model small enough to mutate thousands of times: 1 layer each side, width 32.
SMALL = HParams(n_vocab=40, n_audio_ctx=4, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                n_text_ctx=3, n_text_state=32, n_text_head=2, n_text_layer=1, n_mels=2, ftype=2002)


def small_tensors(rng, hp=SMALL, qtype=GGMLType.Q4_0):
    for name, shape in expected_tensor_shapes(hp).items():
        t = qtype if len(shape) == 2 and "positional" not in name and "conv" not in name else GGMLType.F32
        if name.endswith("conv1.weight") or name.endswith("conv2.weight"):
            t = GGMLType.F16
        raw = rng.integers(0, 256, tensor_nbytes(t, shape), dtype=np.uint8)
        yield TensorInfo(name, t, shape, 0, raw)


def write_small(path, hp=SMALL, seed=0, vocab=None, tensors=None):
    rng = np.random.default_rng(seed)
    mel = rng.standard_normal((hp.n_mels, 201)).astype(np.float32)
    vocab = vocab if vocab is not None else [b"tok%d" % i for i in range(hp.n_vocab - 5)]
    write_ggml(path, hp, mel, vocab, tensors if tensors is not None else small_tensors(rng, hp))
    return path


def test_round_trip_is_byte_identical(tmp_path):
    a = write_small(tmp_path / "a.bin")
    f = read_ggml(a)
    assert f.hparams == SMALL and f.hparams.qnt_version == 2 and f.hparams.file_type_name == "q4_0"
    assert list(f.tensors) == list(expected_tensor_shapes(SMALL))
    write_ggml(tmp_path / "b.bin", f.hparams, f.mel_filters, f.vocab, f.tensors.values())
    assert (tmp_path / "b.bin").read_bytes() == a.read_bytes()


def test_written_file_is_readable_like_any_other(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        mode = stat.S_IMODE(write_small(tmp_path / "a.bin").stat().st_mode)
    finally:
        os.umask(mask)
    assert mode == 0o644  # not mkstemp's 0600: a cached model is shared like any file


def test_offsets_point_at_the_data(tmp_path):
    path = write_small(tmp_path / "a.bin")
    blob = path.read_bytes()
    for t in read_ggml(path).tensors.values():
        assert blob[t.offset:t.offset + t.nbytes] == t.data.tobytes()
        # the header just before the data names this tensor
        assert blob[t.offset - len(t.name):t.offset] == t.name.encode()


def test_real_whisper_cpp_file(shared_q5_1, tmp_path):
    f = read_ggml(shared_q5_1)
    hp = f.hparams
    assert (hp.n_vocab, hp.n_audio_state, hp.n_text_layer, hp.n_mels) == (51864, 384, 4, 80)
    assert hp.file_type_name == "q5_1" and hp.qnt_version == 2
    assert len(f.vocab) == 50256 and f.vocab[0] == b"!" and f.vocab[220] == b" "
    types = f.types()
    assert types[GGMLType.Q5_1] == 65 and types[GGMLType.F16] == 2  # linear weights; conv weights
    assert f["encoder.conv1.bias"].shape == (384, 1) and f["encoder.conv1.bias"].ggml_type == GGMLType.F32
    assert isinstance(f["decoder.token_embedding.weight"].data, np.memmap)  # zero-copy view
    assert list(f.tensors) == list(expected_tensor_shapes(hp))  # whisper.cpp's (openai's) order
    write_ggml(tmp_path / "copy.bin", hp, f.mel_filters, f.vocab, f.tensors.values())
    assert (tmp_path / "copy.bin").read_bytes() == shared_q5_1.read_bytes()


def _corrupt(path, offset, fmt, value):
    blob = bytearray(path.read_bytes())
    struct.pack_into(fmt, blob, offset, value)
    path.write_bytes(bytes(blob))


def _first_tensor_offset(path):
    f = read_ggml(path)
    t = next(iter(f.tensors.values()))
    return t.offset - len(t.name) - 4 * (3 + len(t.shape))  # start of its header


@pytest.mark.parametrize("case, match", [
    ("magic", "bad magic"),
    ("gguf", "GGUF"),
    ("empty", "truncated"),
    ("header", "truncated"),
    ("hparam", "absurd hparam n_audio_layer"),
    ("heads", "not divisible"),
    ("ftype", "ftype"),
    ("qnt_version", "quantization version"),
    ("mel", "mel"),
    ("vocab", "vocabulary size"),
    ("token_len", "truncated"),
    ("n_dims", "n_dims"),
    ("type", "Q4_K.*not supported yet"),
    ("type_unknown", "unknown type 99.*not supported"),
    ("dims", "absurd tensor dims"),
    ("tensor_data", "truncated file: data of"),
    ("block", "not a multiple of its block"),
])
def test_bad_files_raise_one_clear_error(tmp_path, case, match):
    path = write_small(tmp_path / "m.bin")
    t0 = _first_tensor_offset(path)
    if case == "magic":
        _corrupt(path, 0, "<I", 0x12345678)
    elif case == "gguf":
        _corrupt(path, 0, "<I", 0x46554747)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "header":
        path.write_bytes(path.read_bytes()[:20])
    elif case == "hparam":
        _corrupt(path, 4 + 4 * 4, "<i", -3)
    elif case == "heads":
        _corrupt(path, 4 + 4 * 3, "<i", 3)
    elif case == "ftype":
        _corrupt(path, 4 + 40, "<i", 2005)
    elif case == "qnt_version":
        _corrupt(path, 4 + 40, "<i", 1002)
    elif case == "mel":
        _corrupt(path, 48, "<i", 7)
    elif case == "vocab":
        _corrupt(path, 56 + 4 * 2 * 201, "<i", 1 << 30)
    elif case == "token_len":
        _corrupt(path, 60 + 4 * 2 * 201, "<I", 1 << 31)
    elif case == "n_dims":
        _corrupt(path, t0, "<i", 9)
    elif case == "type":
        _corrupt(path, t0 + 8, "<i", 12)
    elif case == "type_unknown":
        _corrupt(path, t0 + 8, "<i", 99)
    elif case == "dims":
        _corrupt(path, t0 + 12, "<i", -1)
    elif case == "tensor_data":
        path.write_bytes(path.read_bytes()[:-5])
    elif case == "block":
        _corrupt(path, t0 + 8, "<i", int(GGMLType.Q8_0))  # first tensor is encoder.positional_embedding (4 x 32)
        _corrupt(path, t0 + 12, "<i", 33)
    with pytest.raises(ModelFormatError, match=match) as e:
        read_ggml(path)
    assert str(path) in str(e.value)


def test_tensor_set_errors_name_the_tensor(tmp_path):
    rng = np.random.default_rng(1)
    ts = list(small_tensors(rng))
    with pytest.raises(ModelFormatError, match="duplicate tensor name") as e:
        read_ggml(write_small(tmp_path / "dup.bin", tensors=ts + [ts[3]]))
    assert e.value.tensor == ts[3].name and e.value.offset > 0
    with pytest.raises(ModelFormatError, match="missing tensor 'decoder.ln.bias'"):
        read_ggml(write_small(tmp_path / "miss.bin", tensors=ts[:-1]))
    odd = TensorInfo("decoder.extra", GGMLType.F32, (2,), 0, np.zeros(8, np.uint8))
    with pytest.raises(ModelFormatError, match="unknown tensor") as e:
        read_ggml(write_small(tmp_path / "extra.bin", tensors=ts + [odd]))
    assert e.value.tensor == "decoder.extra"
    wrong = dataclasses.replace(ts[0], shape=(4, 64), data=np.zeros(4 * 64 * 4, np.uint8))
    with pytest.raises(ModelFormatError, match="does not match hparams"):
        read_ggml(write_small(tmp_path / "shape.bin", tensors=[wrong] + ts[1:]))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        read_ggml(tmp_path / "nope.bin")
    with pytest.raises(ModelFormatError, match="directory"):
        read_ggml(tmp_path)


def test_writer_refuses_mismatched_bytes_and_leaves_no_file(tmp_path):
    bad = TensorInfo("x", GGMLType.Q8_0, (2, 32), 0, np.zeros(10, np.uint8))
    with pytest.raises(ValueError, match="do not fit"):
        write_ggml(tmp_path / "out.bin", SMALL, np.zeros((2, 201), np.float32), [], [bad])
    assert list(tmp_path.iterdir()) == []  # no partial output, no temp file


@pytest.fixture(scope="module")
def small_blob(tmp_path_factory):
    return write_small(tmp_path_factory.mktemp("fuzz") / "seed.bin").read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutations_and_truncations(small_blob, tmp_path, data):
    """Any mutation or truncation of a valid file parses or raises ModelFormatError: nothing else."""
    blob = bytearray(small_blob)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["byte", "int", "truncate"]))
        if kind == "truncate":
            blob = blob[:data.draw(st.integers(0, len(blob)))]
        elif len(blob) >= 4:
            # bias towards the header and the first tensor headers, where the counts live
            pos = data.draw(st.one_of(st.integers(0, min(len(blob) - 4, 2000)), st.integers(0, len(blob) - 4)))
            if kind == "byte":
                blob[pos] = data.draw(st.integers(0, 255))
            else:
                struct.pack_into("<i", blob, pos, data.draw(st.sampled_from(
                    [-1, 0, 1, 3, 31, 33, 1 << 20, 1 << 30, 2**31 - 1, -(2**31)])))
    path = tmp_path / "fuzz.bin"
    path.write_bytes(bytes(blob))
    try:
        f = read_ggml(path)
    except ModelFormatError as e:
        assert str(path) in str(e)
        return
    assert sum(t.nbytes for t in f.tensors.values()) <= len(blob)
