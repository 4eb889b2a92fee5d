"""`qwhisper verify`: the checker itself, on the CPU (torch backend vs the numpy golden) and on CUDA.

The verifier must report zero error for a correct path and catch a wrong one: a planted
one-ulp change in one block type's dequantization has to show up in the dequantization table,
in the matmul errors and in the verdict.
"""

import numpy as np
import pytest

from qwhisper.quants import GGMLType

TYPES = ("f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0")


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    """The toy.en architecture (1 narrow layer each side, real vocabulary) in all six types."""
    from qwhisper.architectures import write_random_model
    from qwhisper.quantize import quantize_file

    d = tmp_path_factory.mktemp("verify")
    f16 = d / "toy-f16.bin"
    write_random_model(f16, "toy.en", "f16", seed=3)
    files = {"f16": f16}
    for q in TYPES[1:]:
        files[q] = quantize_file(f16, d / f"toy-{q}.bin", q)
    return files


@pytest.fixture(scope="module")
def chirp(tmp_path_factory):
    """2 s of a rising tone, saved as a .npy of float32 16 kHz samples."""
    t = np.arange(32000) / 16000
    x = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)
    path = tmp_path_factory.mktemp("audio") / "chirp.npy"
    np.save(path, x)
    return path


def test_cpu_path_matches_golden_for_every_type(toy_files):
    from qwhisper.verify import verify_model

    for q, path in toy_files.items():
        r = verify_model(str(path), "cpu", matmul_rows=(1, 7))
        types = {d.ggml_type for d in r.dequant}
        expected = {"F32", "F16"} | ({q.upper()} if q != "f16" else set())
        assert types == expected, (q, types)
        for d in r.dequant:
            assert d.exact and d.max_abs == 0.0 and d.elements > 0, (q, d)
        # 2 encoder attn + mlp (6) + decoder self/cross attn + mlp (10) + the vocabulary projection
        assert len(r.matmul) == 17
        assert 0 < r.worst_matmul() < 1e-5, q
        assert r.passed


def test_planted_dequantization_error_is_caught(toy_files, monkeypatch):
    """One ulp added to every Q4_0 weight of the CPU path: verify must see it everywhere."""
    import torch

    from qwhisper.quants import torch_ops
    from qwhisper.verify import verify_model

    good = torch_ops._DEQUANTIZE_BLOCKS[GGMLType.Q4_0]

    def off_by_one_ulp(b):
        w = good(b)
        return torch.nextafter(w, torch.full_like(w, float("inf")))

    monkeypatch.setitem(torch_ops._DEQUANTIZE_BLOCKS, GGMLType.Q4_0, off_by_one_ulp)
    r = verify_model(str(toy_files["q4_0"]), "cpu", matmul_rows=(3,))
    q4 = next(d for d in r.dequant if d.ggml_type == "Q4_0")
    assert q4.mismatched == q4.elements and 0 < q4.max_abs < 1e-3
    assert not q4.exact and not r.passed
    assert all(d.exact for d in r.dequant if d.ggml_type != "Q4_0")


def test_audio_check_report_and_cli(toy_files, chirp, tmp_path):
    from qwhisper.cli import main
    from qwhisper.verify import format_report, load_json, load_samples, save_json, verify_model

    samples = load_samples(str(chirp))
    r = verify_model(str(toy_files["q8_0"]), "cpu", samples, "chirp.npy", max_tokens=4, matmul_rows=(1,))
    a = r.audio
    assert a.same_tokens and a.golden_text == a.device_text
    assert 2 <= a.tokens <= 2 + 4  # <|startoftranscript|><|notimestamps|> + up to 4 sampled tokens
    assert a.encoder_rel < 1e-5 and a.logits_rel < 1e-4 and a.logits_e2e_rel < 1e-4 and a.argmax_agree == 1.0

    text = format_report([r], "test machine")
    row = next(line for line in text.splitlines() if line.startswith("| toy-q8_0.bin |"))
    assert "Q8_0 0" in row and "| yes |" in row and row.rstrip().endswith("| PASS |")
    assert "| decoder.token_embedding | Q8_0 | 51864x64 |" in text

    save_json([r], "test machine", tmp_path / "v.json")  # the report can be rebuilt from the JSON
    again, env = load_json(tmp_path / "v.json")
    assert env == "test machine" and format_report(again, env) == text

    report = tmp_path / "v.md"
    rc = main(["verify", str(toy_files["f16"]), "--device", "cpu", "--audio", str(chirp), "--max-tokens", "2",
               "--report", str(report)])
    assert rc == 0
    assert "| toy-f16.bin | cpu float32 | F32 0, F16 0 | yes |" in report.read_text()


def test_load_samples_npy(tmp_path):
    from qwhisper.errors import QWhisperError
    from qwhisper.verify import load_samples

    s16 = np.array([0, 1, -32768, 32767], dtype=np.int16)
    np.save(tmp_path / "a.npy", s16)
    np.testing.assert_array_equal(load_samples(str(tmp_path / "a.npy")), s16 / np.float32(32768))
    np.save(tmp_path / "b.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(QWhisperError, match="1-D"):
        load_samples(str(tmp_path / "b.npy"))


@pytest.mark.cuda
def test_cuda_path_matches_golden(toy_files, chirp):
    """Triton dequantization bit-exact (float32 and float16) for all six types; linear's ways
    within float16 tolerance; the fp16 model's logits close to the golden's."""
    from qwhisper.verify import MATMUL_TOL, load_samples, verify_model

    for q, path in toy_files.items():
        samples = load_samples(str(chirp)) if q == "q5_1" else None
        r = verify_model(str(path), "cuda", samples, "chirp.npy", max_tokens=4)
        assert r.dtype == "float16"
        for d in r.dequant:
            assert d.exact and d.fp16_mismatched == 0, (q, d)
        assert r.worst_matmul() < MATMUL_TOL["float16"], q
        ways = {w for m in r.matmul for w in m.way.values()}
        assert ways == ({"cublas"} if q == "f16" else {"gemv", "tc", "dequant+cublas"}), (q, ways)
        if samples is not None:
            assert r.audio.encoder_rel < 1e-2 and r.audio.logits_e2e_rel < 2e-2
