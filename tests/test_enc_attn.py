"""The cross-attention read from the encoder output (quants/triton_enc_attn.py), against float64.

* `test_interp_*` (in a child process under TRITON_INTERPRET=1, as in test_triton.py): the kernel's
  U = softmax(Q'E^T) E for rows that share windows, head groups padded (3 and 20 heads), key splits
  with a short last one, both C = C1 + C2 forms; and the whole rewrite (Q' = W_k^T q, U, W_v U + b_v)
  against attention over K = E W_k^T + b_k and V = E W_v^T + b_v computed in float64.
* The width rule, on the CPU.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from conftest import run_interpreter_suite

pytest.importorskip("triton")

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
interp = pytest.mark.skipif(not INTERPRETING, reason="runs in the interpreter child process (test_interpreter_suite)")


def _ea():
    from qwhisper.quants import triton_enc_attn

    return triton_enc_attn


def test_interpreter_suite():
    """Run this file's interpreter tests in a child process with TRITON_INTERPRET=1."""
    if INTERPRETING:
        pytest.skip("already in the interpreter process")
    run_interpreter_suite(__file__)


def test_split_width():
    ea = _ea()
    assert [ea.split_width(c) for c in (384, 512, 768, 1024, 1280, 48)] == [
        (256, 128), (512, 0), (512, 256), (1024, 0), (1024, 256), (32, 16)]
    for bad in (1500, 40, 8):
        with pytest.raises(ValueError, match="two powers of 2"):
            ea.split_width(bad)


def _softmax_rows(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@interp
@pytest.mark.parametrize("hg", [16, 32])
@pytest.mark.parametrize("n_head,d", [(3, 16), (20, 4), (6, 64)], ids=["3x16", "20x4", "6x64"])
def test_interp_enc_attention(n_head, d, hg, monkeypatch):
    """U against float64 softmax(ln 2 * Q' E^T) E of the same float16 inputs: rows 0..3 on windows
    [1, 0, 1, 2], S = 50 keys in splits of 32 (the last one 18), 16 or 32 heads a program."""
    ea = _ea()
    monkeypatch.setattr(ea, "HEAD_GROUP", hg)
    rng = np.random.default_rng(n_head)
    c, s, rows = n_head * d, 50, 4
    enc = torch.from_numpy(rng.standard_normal((3, s, c)).astype(np.float32)).half()
    qp = torch.from_numpy(rng.standard_normal((rows, n_head, c)).astype(np.float32) / np.sqrt(c)).half()
    windows = torch.tensor([1, 0, 1, 2], dtype=torch.int32)
    u = ea.enc_attention(qp, enc, windows, keys_split=32)
    assert u.shape == (rows, n_head, c) and u.dtype == torch.float32
    e64, q64 = enc.double().numpy(), qp.double().numpy()
    for r in range(rows):
        e = e64[windows[r]]
        p = _softmax_rows(math.log(2) * q64[r] @ e.T)  # [H, S]
        want = p @ e
        # P is rounded to float16 before P . E (as flash attention does): <= 2^-11 of |P| . |E|
        bound = 2.0**-10 * (p @ np.abs(e)) + 1e-6
        err = np.abs(u[r].double().numpy() - want)
        assert (err <= bound).all(), f"row {r}: err {err.max():.3g}"
    with pytest.raises(ValueError, match="multiple of"):
        ea.enc_attention(qp, enc, windows, keys_split=24)
    with pytest.raises(ValueError, match="int32"):
        ea.enc_attention(qp, enc, windows.long())


@interp
def test_interp_rewrite_equals_kv_attention():
    """Q' = W_k^T q, U, W_v U + b_v (the module's three parts) against attention over K = E W_k^T + b_k,
    V = E W_v^T + b_v in float64: the identity the module rests on (b_k drops out of the softmax)."""
    ea = _ea()
    rng = np.random.default_rng(7)
    n_head, d, s, rows = 4, 8, 40, 3
    c = n_head * d
    enc = torch.from_numpy(rng.standard_normal((2, s, c)).astype(np.float32)).half()
    w_k, w_v = (rng.standard_normal((2, c, c)) / np.sqrt(c)).astype(np.float32)
    b_k, b_v = rng.standard_normal((2, c)).astype(np.float32)
    q = rng.standard_normal((rows, c)).astype(np.float32)
    windows = torch.tensor([0, 1, 1], dtype=torch.int32)
    wk = ea.head_weights(torch.from_numpy(w_k), n_head, ea.key_scale(d))
    wv = ea.head_weights(torch.from_numpy(w_v), n_head)
    qp = ea.query_product(torch.from_numpy(q).half(), wk)  # (H, R, C)
    o = ea.value_product(ea.attend(qp, enc, windows, keys_split=32), wv, torch.from_numpy(b_v)).double().numpy()
    e64 = enc.double().numpy()
    for r in range(rows):
        k = e64[windows[r]] @ w_k.T.astype(np.float64) + b_k
        v = e64[windows[r]] @ w_v.T.astype(np.float64) + b_v
        want = np.concatenate([
            _softmax_rows(q[r, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d))
            @ v[:, h * d:(h + 1) * d] for h in range(n_head)])
        scale = np.abs(v).max(axis=0)
        assert (np.abs(o[r] - want) <= 2e-3 * scale).all(), f"row {r}: {np.abs(o[r] - want).max():.3g}"


@pytest.mark.cuda
def test_enc_attention_on_cuda_large_v3_shape():
    """The compiled kernel at large-v3's width (C = 1024 + 256, 20 heads in two groups of 16) over
    1500 keys in the module's splits, rows sharing a window, against float64 on the GPU."""
    ea = _ea()
    gen = torch.Generator(device="cuda").manual_seed(3)
    rows, n_head, c, s = 5, 20, 1280, 1500
    enc = torch.randn(3, s, c, device="cuda", generator=gen).half()
    qp = (torch.randn(rows, n_head, c, device="cuda", generator=gen) / 8).half()
    windows = torch.tensor([2, 0, 2, 1, 0], dtype=torch.int32, device="cuda")
    u = ea.enc_attention(qp, enc, windows)
    e = enc.double()[windows.long()]  # (R, S, C)
    p = torch.softmax(math.log(2) * torch.einsum("rhc,rsc->rhs", qp.double(), e), dim=-1)
    want = torch.einsum("rhs,rsc->rhc", p, e)
    bound = 2.0**-10 * torch.einsum("rhs,rsc->rhc", p, e.abs()) + 1e-6
    assert ((u.double() - want).abs() <= bound).all(), f"max err {(u.double() - want).abs().max().item():.3g}"


@pytest.mark.cuda
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphed"])
def test_step_from_encoder_output_on_cuda(shared_q5_1, monkeypatch, graphs):
    """model.CROSS_FROM_ENCODER on the real tiny.en q5_1, three windows (float16, eager and graphed
    steps): after the same prompt pass (which keeps the K/V), four one-token steps' logits are
    those of the K/V path within 1 % of their range, with the same argmax where its margin is clear."""
    from qwhisper import model as m
    from qwhisper.loader import load_model

    model = load_model(shared_q5_1, "cuda")
    model.decoder.cuda_graphs = graphs
    gen = torch.Generator(device="cuda").manual_seed(5)
    features = model.embed_audio(torch.randn(3, model.dims.n_mels, 3000, device="cuda", generator=gen))
    prompt = torch.randint(0, 50000, (3, 3), device="cuda", generator=gen)
    steps = torch.randint(0, 50000, (4, 3, 1), device="cuda", generator=gen)

    def run(on: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(m, "CROSS_FROM_ENCODER", on)
        model.decoder._graphed.clear()  # a fresh buffer set, so a graph of the other setting is not replayed
        cache = model.new_kv_cache(features)
        assert (cache.enc is not None) == on
        out = [model.logits(prompt, cache)[:, -1]]
        out += [model.logits(t, cache)[:, -1] for t in steps]
        return [o.float() for o in out]

    off, on = run(False), run(True)
    for i, (a, b) in enumerate(zip(off, on)):
        span = (a.max(dim=-1).values - a.min(dim=-1).values)[:, None]
        assert ((a - b).abs() <= 1e-2 * span).all(), f"step {i}: {((a - b).abs() / span).max().item():.3g}"
        top2 = a.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2e-2 * span[:, 0]
        assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear]), f"step {i}"


BLOCK_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


@interp
@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_interp_products_on_blocks(type_name):
    """query_product_blocks and value_product_blocks against float64 products of the golden's
    dequantized weights rounded to float16 (as the kernels round them): q given as a tensor and as
    the query product's split-K Partials (summed in the kernel as Partials.tensor() sums them)."""
    from qwhisper.quants import GGMLType, quantize, ref, triton_ops

    ea = _ea()
    ggml_type = GGMLType[type_name]
    rng = np.random.default_rng(int(ggml_type))
    n_head, d, rows = 4, 64, 5  # C 256: 4 splits of the query product; 5 rows in a 16-row tile
    c = n_head * d
    raws, ws = [], []
    for _ in range(3):
        w = (rng.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32)
        raw = np.ascontiguousarray(quantize(w, ggml_type)).reshape(-1)
        raws.append(torch.from_numpy(raw.copy()))
        ws.append(ref.dequantize(raw, ggml_type, (c, c)).astype(np.float16).astype(np.float64))
    _, w_k, w_v = ws  # (the query weight only makes the partials of q)
    x = torch.from_numpy(rng.standard_normal((rows, c)).astype(np.float32)).half()
    b_q, b_v = (torch.from_numpy(rng.standard_normal(c).astype(np.float32)) for _ in range(2))
    parts = triton_ops.splitk_linear(x, raws[0], ggml_type, (c, c), b_q)
    assert parts.parts.shape[0] == 4
    q = parts.tensor()  # (rows, C) float16
    want_qp = np.stack([ea.key_scale(d) * q.double().numpy()[:, h * d:(h + 1) * d] @ w_k[h * d:(h + 1) * d]
                        for h in range(n_head)])  # (H, rows, C)
    for given in (q, parts):
        qp = ea.query_product_blocks(given, raws[1], ggml_type, n_head, torch.float16)
        assert qp.shape == (n_head, rows, c) and qp.dtype == torch.float16
        err = np.abs(qp.double().numpy() - want_qp)
        assert (err <= 2.0**-10 * np.abs(want_qp) + 1e-3).all(), f"{type_name} Q': {err.max():.3g}"
    u = torch.from_numpy(rng.standard_normal((n_head, rows, c)).astype(np.float32)).half()
    o = ea.value_product_blocks(u, raws[2], ggml_type, b_v)
    want = np.concatenate([u.double().numpy()[h] @ w_v[h * d:(h + 1) * d].T for h in range(n_head)], axis=1)
    want += b_v.double().numpy()
    scale = np.concatenate([np.abs(u.double().numpy()[h]) @ np.abs(w_v[h * d:(h + 1) * d]).T for h in range(n_head)], axis=1)
    err = np.abs(o.double().numpy() - want)
    assert o.shape == (rows, c) and (err <= 2.0**-9 * (scale + np.abs(want)) + 1e-3).all(), f"{type_name} o: {err.max():.3g}"


def test_cross_from_encoder_failure_falls_back_to_kv(monkeypatch):
    """A kernel failure (here a RuntimeError) warns, turns model.CROSS_FROM_ENCODER off and gives
    None, so the step uses the K/V; with the switch off nothing is tried."""
    from qwhisper import model as m

    class Failing:
        calls = 0

        def _cross_from_encoder(self, p, enc):
            Failing.calls += 1
            raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(m, "CROSS_FROM_ENCODER", True)
    with pytest.warns(UserWarning, match="using the cross K/V"):
        assert m._cross_from_encoder_ran(Failing(), None, None) is None
    assert m.CROSS_FROM_ENCODER is False and Failing.calls == 1
    assert m._cross_from_encoder_ran(Failing(), None, None) is None and Failing.calls == 1
