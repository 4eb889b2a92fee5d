"""The fused one-token decoder step (quants/triton_decoder.py) against independent references.

* `test_interp_*`: each kernel on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1),
  small shapes, every weight type the step reads: the LN-GEMV against F.layer_norm and a
  float64 product of the golden dequantized weights (quants/ref.py); q|k|v into the cache;
  attention against float64 softmax; the embedding against the golden rows; and the whole
  step of a small random decoder against the unfused float32 torch step (TextDecoder.forward_at
  on the CPU). They run in a child process (`test_interpreter_suite`), as in test_triton.py.
* `cuda`: on the GPU, the fused step's logits against the float32 CPU model (no worse than the
  unfused float16 step), and greedy tokens of a real transcription against the numpy golden.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_interpreter_suite

from qwhisper.quants import GGMLType, quantize, ref, row_nbytes

pytest.importorskip("triton")

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
interp = pytest.mark.skipif(not INTERPRETING, reason="runs in the interpreter child process (test_interpreter_suite)")
TYPES = [GGMLType.F16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0]


def _td():
    from qwhisper.quants import triton_decoder

    return triton_decoder


def weights(ggml_type: GGMLType, n: int, k: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """Random (n, k) weights quantized by the golden: (raw bytes, golden float32 dequantization)."""
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    raw = np.ascontiguousarray(quantize(w, ggml_type)).reshape(-1)
    return torch.from_numpy(raw.copy()), ref.dequantize(raw, ggml_type, (n, k))


def assert_close(got: torch.Tensor, want: np.ndarray, scale: np.ndarray | float, rtol: float, what: str) -> None:
    """|got - want| <= rtol * scale elementwise (scale: |W| @ |x|-like magnitudes), finite."""
    g = got.detach().double().numpy()
    assert np.isfinite(g).all(), f"{what}: non-finite"
    err = np.abs(g - want)
    bound = rtol * np.broadcast_to(np.asarray(scale, dtype=np.float64), err.shape) + 1e-30
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert (err <= bound).all(), f"{what}: err {err[worst]:.3g} > {bound[worst]:.3g} at {worst}"


def test_interpreter_suite():
    """Run this file's interpreter tests in a child process with TRITON_INTERPRET=1."""
    if INTERPRETING:
        pytest.skip("already in the interpreter process")
    run_interpreter_suite(__file__)


# large-v3's one-row GEMVs below the vocabulary: (name, N, K, LN)
LARGE_V3_GEMVS = (("q|k|v", 3840, 1280, True), ("out", 1280, 1280, False), ("cross-q", 1280, 1280, True),
                  ("fc1", 5120, 1280, True), ("fc2", 1280, 5120, False))


def test_step_settings_by_type_name_block_types_and_fit(monkeypatch):
    """The per-type tables (SECOND_PEEL_NB, WHOLE_ROW_TYPES, LONG_STEPS_WARPS, FC1_ROWS) name block
    types the step reads (a misspelt key would silently do nothing; FC1_ROWS must narrow large-v3's
    fc1 and nothing else), and what _plan makes of them at
    large-v3's shapes covers each row exactly: peeled steps of NB + NB2 blocks, then only whole
    NB-block steps (no clamped blocks), NB2 only for one row; the smaller models' rows are not split
    (PEEL_MIN_BLOCKS)."""
    td = _td()
    names = {t.name.lower() for t in td.FUSED_TYPES if t != GGMLType.F16}
    assert set(td.SECOND_PEEL_NB) <= names and set(td.WHOLE_ROW_TYPES) <= names and set(td.LONG_STEPS_WARPS) <= names
    assert set(td.FC1_ROWS) <= names | {"f16"}  # a tile setting: F16 rows have fc1 tiles too
    fc1_rows = dict(td.FC1_ROWS)
    for name, rows in fc1_rows.items():
        ggml_type = GGMLType[name.upper()]
        plans = [td._plan(1, n, k, ggml_type, ln) for _, n, k, ln in LARGE_V3_GEMVS]
        monkeypatch.setattr(td, "FC1_ROWS", {})
        before = [td._plan(1, n, k, ggml_type, ln) for _, n, k, ln in LARGE_V3_GEMVS]
        monkeypatch.setattr(td, "FC1_ROWS", fc1_rows)
        for (what, *_), plan, old in zip(LARGE_V3_GEMVS, plans, before):
            if what == "fc1":
                assert plan[1] == rows < old[1] and plan[2:] == old[2:], f"{name} fc1: {old} -> {plan}"
            else:
                assert plan == old, f"{name} {what}"
    peeled = set()
    for ggml_type in TYPES[1:]:
        for what, n, k, ln in LARGE_V3_GEMVS:
            _, block_n, nb, nb2, warps, _, even_k = td._plan(1, n, k, ggml_type, ln)
            label = f"{ggml_type.name} {what}"
            if nb2:
                peeled.add(ggml_type.name.lower())
                rest = k // 32 - nb - nb2
                assert rest >= 0 and rest % nb == 0 and even_k, label
                assert td._plan(5, n, k, ggml_type, ln)[3] == 0, label  # beams: as before
            if (ggml_type.name.lower() in td.WHOLE_ROW_TYPES and block_n * k <= td.WHOLE_ROW_MAX_VALUES):
                assert nb + nb2 == k // 32 and warps == td.WHOLE_ROW_WARPS, label
        for d in (384, 512, 768, 1024):  # tiny, base, small, medium: as before
            for n, k, ln in ((3 * d, d, True), (d, d, False), (4 * d, d, True), (d, 4 * d, False)):
                assert td._plan(1, n, k, ggml_type, ln)[3] == 0, f"{ggml_type.name} {n}x{k}"
    assert peeled >= set(td.SECOND_PEEL_NB) | set(td.WHOLE_ROW_TYPES)  # every entry takes effect somewhere


# ------------------------------------------------------------------------------------------
# kernels, interpreted
# ------------------------------------------------------------------------------------------


@interp
def test_interp_attention_adds_qkv_partials():
    """A batched step's self-attention given the q|k|v product as split-K Partials: the kernel
    adds the partial sums of q, k and v itself, and its output and cache rows equal those of the
    same attention given Partials.tensor()'s q, k_new and v_new, bit for bit."""
    from qwhisper.quants import triton_ops

    td = _td()
    rng = np.random.default_rng(8)
    m, s, c, n_head, k_in = 12, 16, 64, 2, 128
    raw = np.ascontiguousarray(quantize(rng.standard_normal((3 * c, k_in)).astype(np.float32), GGMLType.Q5_0)).reshape(-1)
    x = torch.from_numpy(rng.standard_normal((m, k_in)).astype(np.float32)).half()
    bias = torch.from_numpy(rng.standard_normal(3 * c).astype(np.float32))
    parts = triton_ops.splitk_linear(x, torch.from_numpy(raw.copy()), GGMLType.Q5_0, (3 * c, k_in), bias)
    assert parts.parts.shape[0] > 1
    q, k_new, v_new = parts.tensor().split(c, dim=1)
    for pos, split in [(0, 4), (6, 4), (15, 16)]:
        k0 = torch.from_numpy(rng.standard_normal((m, s, c)).astype(np.float16))
        v0 = torch.from_numpy(rng.standard_normal((m, s, c)).astype(np.float16))
        outs = []
        for fused in (False, True):
            k, v = k0.clone(), v0.clone()
            out = torch.full((m, c), float("nan")).half()
            counters = torch.zeros(m * n_head, dtype=torch.int32)
            if fused:
                td.attention(parts, k, v, n_head, out, counters, torch.tensor([pos]), split_s=split)
            else:
                td.attention(q, k, v, n_head, out, counters, torch.tensor([pos]), split_s=split, k_new=k_new, v_new=v_new)
            outs.append((out, k, v))
        (o0, k_a, v_a), (o1, k_b, v_b) = outs
        assert torch.equal(o0, o1) and torch.equal(k_a, k_b) and torch.equal(v_a, v_b), f"pos={pos}"
    with pytest.raises(ValueError, match="need one K/V row each of width 192"):
        td.attention(parts, k, v, n_head, out, counters, None)  # (M, 3C) partials are the self-attention's


@interp
def test_interp_cross_attention_adds_query_partials():
    """A batched step's cross-attention given the query product as split-K Partials (one query
    row per window, 37 keys in 10 splits or in one): the kernel adds the partial sums itself and
    its output equals that of the same attention given Partials.tensor(), bit for bit, and the
    float64 reference within float16 rounding."""
    from qwhisper.quants import triton_ops

    td = _td()
    rng = np.random.default_rng(9)
    m, s, c, n_head, k_in = 12, 37, 64, 2, 128
    raw = np.ascontiguousarray(quantize(rng.standard_normal((c, k_in)).astype(np.float32), GGMLType.Q5_0)).reshape(-1)
    x = torch.from_numpy(rng.standard_normal((m, k_in)).astype(np.float32) * 0.1).half()
    bias = torch.from_numpy(rng.standard_normal(c).astype(np.float32))
    parts = triton_ops.splitk_linear(x, torch.from_numpy(raw.copy()), GGMLType.Q5_0, (c, k_in), bias)
    assert parts.parts.shape[0] > 1
    q = parts.tensor()
    k = torch.from_numpy(rng.standard_normal((m, s, c)).astype(np.float16))
    v = torch.from_numpy(rng.standard_normal((m, s, c)).astype(np.float16))
    counters = torch.zeros(m * n_head, dtype=torch.int32)
    for split in (4, 64):
        outs = []
        for query in (parts, q):
            out = torch.full((m, c), float("nan")).half()
            td.attention(query, k, v, n_head, out, counters, None, split_s=split)
            outs.append(out)
        assert torch.equal(outs[0], outs[1]), f"split={split}"
        want = _attention_ref(q.float().numpy(), k.numpy(), v.numpy(), n_head, s)
        assert_close(outs[0].float(), want, 1.0, 2e-3, f"split={split}")
        assert not counters.any(), "counters must be left zero"
    with pytest.raises(ValueError, match="split_s a power of 2"):
        td.attention(parts, k, v, n_head, out, counters, None, split_s=128)


@interp
@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_interp_gemv_ln_gelu_residual(ggml_type):
    """LN prologue + GELU epilogue (one float16 row) and residual epilogue (5 float32 rows).

    K = 96 is 3 blocks: a partial step of the block loop (EVEN_K off) in every tile."""
    td = _td()
    rng = np.random.default_rng(int(ggml_type))
    n, k = 40, 96
    raw, w = weights(ggml_type, n, k, rng)
    bias = rng.standard_normal(n).astype(np.float32)
    lnw, lnb = rng.uniform(0.5, 1.5, k).astype(np.float32), rng.normal(0, 0.3, k).astype(np.float32)

    # one row, float16 input, LN + GELU; an offset of 3 (mean far from 0) tests the LN statistics
    x16 = torch.from_numpy((rng.standard_normal((1, k)) * 2 + 3).astype(np.float16))
    y = td.gemv(x16, raw, ggml_type, n, torch.from_numpy(bias).half(), (torch.from_numpy(lnw).half(),
                torch.from_numpy(lnb).half(), 1e-5), "gelu")
    xn = F.layer_norm(x16.double(), (k,), torch.from_numpy(lnw).half().double(),
                      torch.from_numpy(lnb).half().double(), 1e-5).numpy()
    pre = xn @ w.astype(np.float64).T + np.float16(bias).astype(np.float64)
    want = F.gelu(torch.from_numpy(pre)).numpy()
    assert y.dtype == torch.float32
    assert_close(y, want, np.abs(xn) @ np.abs(w.T) + 1, 1e-5, f"{ggml_type.name} LN+GELU")

    # five rows, residual added in place into a float32 stream with row stride 2k (a view)
    x = torch.from_numpy(rng.standard_normal((5, k)).astype(np.float32))
    res_full = torch.from_numpy(rng.standard_normal((5, 2 * n)).astype(np.float32))
    res = res_full[:, :n]
    before = res_full.clone()
    td.gemv(x, raw, ggml_type, n, torch.from_numpy(bias), None, "residual", out=res)
    want = before[:, :n].double().numpy() + x.double().numpy() @ w.astype(np.float64).T + bias
    assert_close(res, want, np.abs(x.numpy()) @ np.abs(w.T) + 1, 1e-5, f"{ggml_type.name} residual")
    assert torch.equal(res_full[:, n:], before[:, n:])  # the other half of each row untouched


@interp
@pytest.mark.parametrize("ggml_type", [GGMLType.F16, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q8_0], ids=lambda t: t.name)
def test_interp_gemv_long_steps(ggml_type):
    """K = 1280 without LN: 64 blocks per step (LONG_STEP_NB) over 40 blocks, 24 of them clamped."""
    td = _td()
    rng = np.random.default_rng(int(ggml_type) + 20)
    n, k = 6, 1280
    assert td._tile(1, n, k, 16 if ggml_type == GGMLType.F16 else 5, False)[2] == td.LONG_STEP_NB == 64
    assert td._tile(1, n, k, 5, False)[3] == td.ONE_STEP_WARPS  # 5-bit rows in one step (no effect here)
    assert td._tile(1, n, k, 8, False)[3] == td.ONE_STEP_WARPS  # and 8-bit (ONE_STEP_WARPS_BITS)
    assert td._tile(1, n, k, 4, False)[3] == td.STEP_WARPS
    raw, w = weights(ggml_type, n, k, rng)
    bias = rng.standard_normal(n).astype(np.float32)
    x = torch.from_numpy(rng.standard_normal((1, k)).astype(np.float32))
    res = torch.from_numpy(rng.standard_normal((1, n)).astype(np.float32))
    want = res.double().numpy() + x.double().numpy() @ w.astype(np.float64).T + bias
    td.gemv(x, raw, ggml_type, n, torch.from_numpy(bias), None, "residual", out=res)
    assert_close(res, want, np.abs(x.numpy()) @ np.abs(w.T) + 1, 1e-5, f"{ggml_type.name} long steps")


def _assert_ln_gemv(td, ggml_type, raw, w, bias, x, rng, label):
    """The LN + store GEMV of x (1, K) with a random LayerNorm (drawn from rng) against F.layer_norm
    then the product with the golden dequantization w, in float64."""
    n, k = w.shape
    lnw, lnb = rng.uniform(0.5, 1.5, k).astype(np.float32), rng.normal(0, 0.3, k).astype(np.float32)
    y = td.gemv(x, raw, ggml_type, n, torch.from_numpy(bias), (torch.from_numpy(lnw), torch.from_numpy(lnb), 1e-5),
                "store")
    xn = F.layer_norm(x.double(), (k,), torch.from_numpy(lnw).double(), torch.from_numpy(lnb).double(), 1e-5).numpy()
    want = xn @ w.astype(np.float64).T + bias
    assert_close(y, want, np.abs(xn) @ np.abs(w.T) + 1, 1e-5, label)


def _check_one_row_gemv(td, ggml_type, n, k, ln, rng, label):
    """Random (n, k) weights, bias and one row x (mean far from 0), all drawn from rng: the LN +
    store GEMV (_assert_ln_gemv) or, without LN, the residual GEMV against float64."""
    raw, w = weights(ggml_type, n, k, rng)
    bias = rng.standard_normal(n).astype(np.float32)
    x = torch.from_numpy((rng.standard_normal((1, k)) * 2 + 5).astype(np.float32))
    if ln:
        _assert_ln_gemv(td, ggml_type, raw, w, bias, x, rng, f"{label} LN")
    else:
        res = torch.from_numpy(rng.standard_normal((1, n)).astype(np.float32))
        want = res.double().numpy() + x.double().numpy() @ w.astype(np.float64).T + bias
        td.gemv(x, raw, ggml_type, n, torch.from_numpy(bias), None, "residual", out=res)
        assert_close(res, want, np.abs(x.numpy()) @ np.abs(w.T) + 1, 1e-5, label)


@interp
@pytest.mark.parametrize("ggml_type", [GGMLType.Q8_0, GGMLType.Q5_0], ids=lambda t: t.name)
def test_interp_gemv_fc1_rows(ggml_type, monkeypatch):
    """fc1's tile with FC1_ROWS rows a program (one row, LN, 4x as many rows as columns: the
    programs of 4-16 rows that STEP_MIN_PROGRAMS = 16 gives narrowed to 2) at K 64 and 128, and an
    LN GEMV of fewer rows left as it was, against the golden."""
    td = _td()
    monkeypatch.setattr(td, "STEP_MIN_PROGRAMS", 16)
    name = ggml_type.name.lower()
    monkeypatch.setattr(td, "FC1_ROWS", {name: 2})
    rng = np.random.default_rng(int(ggml_type) + 120)
    for n, k in ((256, 64), (512, 128), (256, 128)):
        block_n = td._plan(1, n, k, ggml_type, True)[1]
        monkeypatch.setattr(td, "FC1_ROWS", {})
        before = td._plan(1, n, k, ggml_type, True)[1]
        monkeypatch.setattr(td, "FC1_ROWS", {name: 2})
        assert block_n == 2 < before if n >= 4 * k else block_n == before > 2, (n, k, block_n, before)
        _check_one_row_gemv(td, ggml_type, n, k, True, rng, f"{ggml_type.name} {n}x{k}")


@interp
@pytest.mark.parametrize("ggml_type", [GGMLType.F16, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q8_0], ids=lambda t: t.name)
def test_interp_gemv_steps_after_the_first(ggml_type, monkeypatch):
    """Rows long enough for the block loop to run after its first step (the one loaded before the
    PDL wait): LN + store at K = 1280 (16 blocks a step: 16, 16, then 8 of 16 live; the
    block-quantized rows fold the LayerNorm, F16 rows normalise x first) and the residual
    epilogue at K = 5120 without LN (64 a step: 64, 64, then 32 of 64 live)."""
    td = _td()
    monkeypatch.setattr(td, "CROSS_Q_NB", 0)  # 16-block steps for the Q5_0 rows too (next test: 32)
    rng = np.random.default_rng(int(ggml_type) + 40)
    n = 6
    bits = 16 if ggml_type == GGMLType.F16 else 5
    for k, ln in ((1280, True), (5120, False)):
        nb = td._tile(1, n, k, bits, ln)[2]
        assert k // 32 > 2 * nb, (k, nb)  # the loop runs twice after the first step
        if ln:
            assert td.folds(ggml_type, k, nb) == (ggml_type != GGMLType.F16)
        _check_one_row_gemv(td, ggml_type, n, k, ln, rng, f"{ggml_type.name} K={k}")


def _assert_early_decode_same_bits(td, ggml_type, n, k, ln, epilogue, rng, monkeypatch):
    """One row through the GEMV with the weights decoded after the PDL wait and before it
    (EARLY_DECODE_4BIT; other types: the same kernel twice): the same bits, and the golden's
    (float64) result. Weights, bias, x (and
    the residual, the LayerNorm) drawn from rng; epilogue 'store' or 'gelu', or 'residual' (no LN)."""
    raw, w = weights(ggml_type, n, k, rng)
    bias = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    x = torch.from_numpy((rng.standard_normal((1, k)) * 2 + 3).astype(np.float32))
    res0 = torch.from_numpy(rng.standard_normal((1, n)).astype(np.float32)) if epilogue == "residual" else None
    lnp = (torch.from_numpy(rng.uniform(0.5, 1.5, k).astype(np.float32)),
           torch.from_numpy(rng.normal(0, 0.3, k).astype(np.float32)), 1e-5) if ln else None
    got = {}
    for early in (False, True):
        monkeypatch.setattr(td, "EARLY_DECODE_4BIT", early)
        if epilogue == "residual":
            got[early] = res0.clone()
            td.gemv(x, raw, ggml_type, n, bias, lnp, "residual", out=got[early])
        else:
            got[early] = td.gemv(x, raw, ggml_type, n, bias, lnp, epilogue)
    label = f"{ggml_type.name} K={k} LN={ln} {epilogue}"
    assert torch.equal(got[True], got[False]), label
    xn = x.double()
    if ln:
        xn = F.layer_norm(xn, (k,), lnp[0].double(), lnp[1].double(), 1e-5)
    xn = xn.numpy()
    want = xn @ w.astype(np.float64).T + bias.double().numpy()
    if epilogue == "gelu":
        want = F.gelu(torch.from_numpy(want)).numpy()
    if epilogue == "residual":
        want = want + res0.double().numpy()
    assert_close(got[True], want, np.abs(xn) @ np.abs(w.T) + 1, 1e-5, label)


@interp
@pytest.mark.parametrize("ggml_type", [GGMLType.Q4_0, GGMLType.Q4_1], ids=lambda t: t.name)
def test_interp_gemv_early_decode_same_bits(ggml_type, monkeypatch):
    """The first step's weights decoded before the PDL wait (EARLY_DECODE_4BIT) give the
    same bits as decoding them after it, for the 4-bit types, with and without LN, in one step
    (K = 96) and in several (K = 1280 with LN, 5120 without); and agree with the golden."""
    td = _td()
    rng = np.random.default_rng(int(ggml_type) + 60)
    for k, ln in ((96, True), (96, False), (1280, True), (5120, False)):
        _assert_early_decode_same_bits(td, ggml_type, 6, k, ln, "store", rng, monkeypatch)


@interp
@pytest.mark.parametrize("ggml_type", TYPES[1:], ids=lambda t: t.name)
def test_interp_gemv_whole_row_before_the_wait(ggml_type, monkeypatch):
    """GEMVs holding their whole row in two peeled steps (WHOLE_ROW_TYPES: K/32 = 3 = 2 + 1, 40 =
    32 + 8, 160 = 128 + 32; 32 in one step; the LayerNorm folded) against the golden, with the LN +
    GELU and the residual epilogues, and the same bits with the weights decoded before the wait or
    after."""
    td = _td()
    monkeypatch.setattr(td, "WHOLE_ROW_TYPES", tuple(t.name.lower() for t in TYPES))
    monkeypatch.setattr(td, "WHOLE_ROW_MAX_VALUES", 1 << 20)  # K 5120 too (the GPU's limit is a tuning)
    assert td._whole_row(1, 6, 96, ggml_type.name.lower(), 1) is None  # short rows keep their one step
    monkeypatch.setattr(td, "PEEL_MIN_BLOCKS", 1)  # K 96 too
    rng = np.random.default_rng(int(ggml_type) + 80)
    n = 6
    for k, ln in ((96, True), (96, False), (1280, True), (5120, False), (1024, True)):
        block_n, nb, nb2 = td._plan(1, n, k, ggml_type, ln)[1:4]  # _tile's one row a program, then _whole_row
        assert block_n == 1
        assert nb + nb2 == k // 32 and (nb2 > 0) == (k != 1024)
        _assert_early_decode_same_bits(td, ggml_type, n, k, ln, "gelu" if ln else "residual", rng, monkeypatch)


@interp
@pytest.mark.parametrize("ggml_type", TYPES[1:], ids=lambda t: t.name)
def test_interp_gemv_second_peeled_step(ggml_type, monkeypatch):
    """A second step peeled before the wait, the loop after it (SECOND_PEEL_NB, candidates 8 and
    32, the first that fits): K 1280 in 16 + 8 blocks and then one step of 16 (LN folded), K 5120 in
    64 + 32 and then 64 (residual), against the golden."""
    td = _td()
    monkeypatch.setattr(td, "CROSS_Q_NB", 0)  # 16-block steps for the 5-bit rows of 6 x 1280 too
    name = ggml_type.name.lower()
    monkeypatch.setattr(td, "SECOND_PEEL_NB", {name: (8, 32)})
    rng = np.random.default_rng(int(ggml_type) + 100)
    n = 6
    bits = td._kernel_layout(ggml_type)[4]
    for k, ln, second in ((1280, True, 8), (5120, False, 32)):
        nb = td._tile(1, n, k, bits, ln, name)[2]
        assert td._second_peel(1, k, name, nb) == second and (k // 32 - nb - second) % nb == 0
        assert td._second_peel(2, k, name, nb) == 0 and td._second_peel(1, k, "x", nb) == 0
        _check_one_row_gemv(td, ggml_type, n, k, ln, rng, f"{ggml_type.name} K={k} + {second}")


@interp
@pytest.mark.parametrize("ggml_type", [GGMLType.Q5_0, GGMLType.Q5_1], ids=lambda t: t.name)
def test_interp_gemv_cross_q_two_folded_steps(ggml_type):
    """One-row LN GEMV at large-v3's K = 1280 with a 5-bit type: two folded steps of CROSS_Q_NB = 32
    blocks (32, then 8 of 32 live), against the LayerNorm then the product in float64."""
    td = _td()
    rng = np.random.default_rng(int(ggml_type) + 60)
    n, k = 6, 1280
    nb = td._tile(1, n, k, 5, True)[2]
    assert nb == td.CROSS_Q_NB == 32 and td.folds(ggml_type, k, nb)
    assert td._tile(5, n, k, 5, True)[2] == 16 and td._tile(1, n, k, 4, True)[2] == 16  # beams, 4-bit: as before
    _check_one_row_gemv(td, ggml_type, n, k, True, rng, f"{ggml_type.name} cross-q K={k}")


@interp
@pytest.mark.parametrize("ggml_type", [GGMLType.F16, GGMLType.Q5_0], ids=lambda t: t.name)
def test_interp_gemv_qkv_writes_cache_row(ggml_type):
    td = _td()
    rng = np.random.default_rng(5)
    m, c, n_ctx, pos = 3, 64, 16, 11
    raw, w = weights(ggml_type, 3 * c, c, rng)
    bias = np.concatenate([rng.standard_normal(c), np.zeros(c), rng.standard_normal(c)]).astype(np.float32)
    lnw, lnb = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(0, 0.3, c).astype(np.float32)
    x = torch.from_numpy(rng.standard_normal((m, c)).astype(np.float32))
    kc = torch.full((m + 1, n_ctx, c), 7.0, dtype=torch.float16)  # one spare row: must stay untouched
    vc = torch.full((m + 1, n_ctx, c), -7.0, dtype=torch.float16)
    q = torch.empty(m, c)
    td.gemv_qkv(x, raw, ggml_type, torch.from_numpy(bias), (torch.from_numpy(lnw), torch.from_numpy(lnb), 1e-5),
                q, kc, vc, torch.tensor([pos]))
    xn = F.layer_norm(x.double(), (c,), torch.from_numpy(lnw).double(), torch.from_numpy(lnb).double(), 1e-5).numpy()
    want = xn @ w.astype(np.float64).T + bias  # (m, 3c)
    scale = np.abs(xn) @ np.abs(w.T) + 1
    assert_close(q, want[:, :c], scale[:, :c], 1e-5, "q")
    # k, v: the float32 result rounded once to the cache's float16 (half an ulp, 2^-11 relative)
    for got, sl, name in ((kc[:m, pos], slice(c, 2 * c), "k"), (vc[:m, pos], slice(2 * c, 3 * c), "v")):
        bound = 1e-5 * scale[:, sl] + 2.0**-11 * np.abs(want[:, sl])
        assert_close(got.float(), want[:, sl], bound, 1.0, name)
    others = torch.ones(n_ctx, dtype=torch.bool)
    others[pos] = False
    assert (kc[:, others] == 7.0).all() and (vc[:, others] == -7.0).all() and (kc[m] == 7.0).all()


def _attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int, n_keys: int) -> np.ndarray:
    """float64 softmax attention: q (M, C), k/v (R, S, C), rows r*G.. share K/V row r; first n_keys keys."""
    m, c = q.shape
    r = k.shape[0]
    g, d = m // r, c // n_head
    out = np.zeros((m, c))
    for i in range(m):
        for h in range(n_head):
            sl = slice(h * d, (h + 1) * d)
            kk, vv = k[i // g, :n_keys, sl].astype(np.float64), v[i // g, :n_keys, sl].astype(np.float64)
            s = kk @ q[i, sl].astype(np.float64) / np.sqrt(d)
            p = np.exp(s - s.max())
            out[i, sl] = p @ vv / p.sum()
    return out


@interp
@pytest.mark.parametrize("case", ["self", "cross", "beams"])
def test_interp_attention(case):
    """Self-attention over cache rows 0..pos (1, 2 and 4 splits of 4 keys, then one split), cross
    attention over 37 keys (10 splits: the last program combines), and 3 beams per K/V row."""
    td = _td()
    rng = np.random.default_rng(["self", "cross", "beams"].index(case))
    c, n_head = 64, 2
    counters = torch.zeros(16, dtype=torch.int32)
    if case == "self":
        m, s = 2, 16
        k = torch.from_numpy(rng.standard_normal((m, s, c)).astype(np.float16))
        v = torch.from_numpy(rng.standard_normal((m, s, c)).astype(np.float16))
        cases = [(pos, split) for pos in (0, 5, 15) for split in (4, 16)]
    else:
        r, g, s = (2, 1, 37) if case == "cross" else (2, 3, 37)
        m = r * g
        k = torch.from_numpy(rng.standard_normal((r, s, c)).astype(np.float32) * 2)
        v = torch.from_numpy(rng.standard_normal((r, s, c)).astype(np.float32))
        cases = [(None, 4), (None, 64)]
    for pos, split in cases:
        q = torch.from_numpy(rng.standard_normal((m, c)).astype(np.float32))
        out = torch.full((m, c), float("nan"))
        td.attention(q, k, v, n_head, out, counters, None if pos is None else torch.tensor([pos]), split_s=split)
        want = _attention_ref(q.numpy(), k.numpy(), v.numpy(), n_head, s if pos is None else pos + 1)
        assert_close(out, want, 1.0, 1e-5, f"{case} pos={pos} split={split}")
        assert not counters.any(), "counters must be left zero"


@interp
def test_interp_attention_early_convert_same_bits(monkeypatch):
    """The one-row step's attention with its float16 keys and values widened before the PDL wait
    (CROSS_EARLY_CONVERT, SELF_EARLY_CONVERT) gives the same bits as widening them after it, and
    agrees with the float64 reference: cross-attention over 37 keys in splits of 16, self-attention
    over rows 0..pos of a cache in splits of 16 (preloaded)."""
    td = _td()
    rng = np.random.default_rng(7)
    c, n_head = 64, 2
    counters = torch.zeros(16, dtype=torch.int32)
    for pos in (None, 0, 21):
        s = 37 if pos is None else 32
        k = torch.from_numpy(rng.standard_normal((1, s, c)).astype(np.float16))
        v = torch.from_numpy(rng.standard_normal((1, s, c)).astype(np.float16))
        q = torch.from_numpy(rng.standard_normal((1, c)).astype(np.float32))
        position = None if pos is None else torch.tensor([pos])
        got = {}
        for early in (False, True):
            monkeypatch.setattr(td, "CROSS_EARLY_CONVERT", early)
            monkeypatch.setattr(td, "SELF_EARLY_CONVERT", early)
            got[early] = torch.full((1, c), float("nan"))
            td.attention(q, k, v, n_head, got[early], counters, position, split_s=16)
        assert torch.equal(got[True], got[False]), f"pos={pos}"
        want = _attention_ref(q.numpy(), k.float().numpy(), v.float().numpy(), n_head, s if pos is None else pos + 1)
        assert_close(got[True], want, 1.0, 1e-5, f"pos={pos}")
        assert not counters.any()


@interp
def test_interp_attention_writes_the_new_row():
    """Self-attention given this step's key and value (k_new, v_new): they are attended as key pos
    and written into row pos of the cache, whose old row pos (NaN here) is never read; the other
    rows are left as they were. pos at a split's first key, inside one, and alone in a split."""
    td = _td()
    rng = np.random.default_rng(7)
    m, s, c, n_head = 2, 16, 64, 2
    counters = torch.zeros(16, dtype=torch.int32)
    for pos, split in [(0, 4), (4, 4), (6, 4), (15, 16), (9, 16)]:
        k = torch.from_numpy(rng.standard_normal((m, s, c)).astype(np.float16))
        v = torch.from_numpy(rng.standard_normal((m, s, c)).astype(np.float16))
        k[:, pos:], v[:, pos:] = float("nan"), float("nan")
        k_old, v_old = k.clone(), v.clone()
        qkv = torch.from_numpy(rng.standard_normal((m, 3 * c)).astype(np.float32))  # one projection's output
        q, k_new, v_new = qkv.split(c, dim=1)
        out = torch.full((m, c), float("nan"))
        td.attention(q, k, v, n_head, out, counters, torch.tensor([pos]), split_s=split, k_new=k_new, v_new=v_new)
        assert torch.equal(k[:, pos], k_new.half()) and torch.equal(v[:, pos], v_new.half()), f"pos={pos}"
        rest = [i for i in range(s) if i != pos]
        assert torch.allclose(k[:, rest], k_old[:, rest], equal_nan=True, rtol=0, atol=0)
        assert torch.allclose(v[:, rest], v_old[:, rest], equal_nan=True, rtol=0, atol=0)
        want = _attention_ref(q.numpy(), k.numpy(), v.numpy(), n_head, pos + 1)  # the cache as written
        assert_close(out, want, 1.0, 1e-5, f"pos={pos} split={split}")
        assert not counters.any(), "counters must be left zero"
    with pytest.raises(ValueError, match="k_new and v_new"):
        td.attention(q, k, v, n_head, out, counters, None, k_new=k_new, v_new=v_new)


@interp
@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_interp_embed(ggml_type):
    td = _td()
    rng = np.random.default_rng(int(ggml_type) + 50)
    n_vocab, c, n_ctx = 20, 64, 8
    raw, w = weights(ggml_type, n_vocab, c, rng)
    pe = torch.from_numpy(rng.standard_normal((n_ctx, c)).astype(np.float16))
    tokens = torch.tensor([[1, 3, 2], [2, 19, 4], [5, 0, 6]])[:, 1]  # a strided view, as decoding passes
    out = torch.full((3, c), float("nan"))
    td.embed(tokens, raw, ggml_type, n_vocab, pe, torch.tensor([5]), out)
    want = w[tokens.numpy()] + pe[5].float().numpy()  # golden rows (float32) + pe, one float32 add
    np.testing.assert_array_equal(out.numpy(), want)


def random_decoder(ggml_type: GGMLType, seed: int, n_layer: int = 2, n_vocab: int = 96, n_ctx: int = 16,
                   n_state: int = 64, n_head: int = 2):
    """A TextDecoder (default n_vocab 96, n_ctx 16, n_state 64, 2 heads) of random weights in ggml_type, float32."""
    from qwhisper.model import QLinear, TextDecoder

    rng = np.random.default_rng(seed)
    dec = TextDecoder(n_vocab, n_ctx, n_state, n_head, n_layer)
    with torch.no_grad():
        for mod in dec.modules():
            if isinstance(mod, QLinear):
                raw, _ = weights(ggml_type, mod.out_features, mod.in_features, rng)
                mod.ggml_type = ggml_type
                mod.weight = raw.view(mod.out_features, row_nbytes(ggml_type, mod.in_features))
                if mod.bias is not None:
                    mod.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, mod.out_features).astype(np.float32)))
            elif isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, mod.weight.shape).astype(np.float32)))
                mod.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, mod.bias.shape).astype(np.float32)))
        dec.positional_embedding.copy_(torch.from_numpy(rng.normal(0, 0.3, (n_ctx, n_state)).astype(np.float32)))
    return dec


def fused_vs_unfused(dec, xa: torch.Tensor, positions: list[int], n_group: int = 1, cache_tol: float = 1e-4) -> float:
    """Worst relative error of fused one-token steps (td.decoder_step) against the unfused ones
    (forward_at with fused_step off) after the same 3-token prompt, rows = len(xa) * n_group; the
    K/V cache rows agree within cache_tol and the attention counters are left zero."""
    td = _td()
    rng = np.random.default_rng(11)
    dev = xa.device
    rows, n_vocab = xa.shape[0] * n_group, dec.token_embedding.out_features
    dec.fused_step = False
    worst = 0.0
    with torch.no_grad():
        caches = [dec.new_kv_cache(xa, n_group) for _ in range(2)]
        prompt = torch.from_numpy(rng.integers(0, n_vocab, (rows, 3))).to(dev)
        for cache in caches:
            dec.forward_at(prompt, torch.arange(3, device=dev), cache)
        assert td.unsupported(dec, rows) is None
        for pos in positions:
            tok = torch.from_numpy(rng.integers(0, n_vocab, (rows, 3))).to(dev)[:, 1:2]  # strided, as decoding slices
            where = torch.tensor([pos], device=dev)
            want = dec.forward_at(tok, where, caches[0])
            got = td.decoder_step(dec, tok, where, caches[1])
            assert got.shape == want.shape == (rows, 1, n_vocab) and got.dtype == torch.float32
            worst = max(worst, ((got - want).abs().max() / want.abs().max()).item())
        end = positions[-1] + 1
        for i in range(len(dec.blocks)):
            for a, b in ((caches[0].self_k[i], caches[1].self_k[i]), (caches[0].self_v[i], caches[1].self_v[i])):
                torch.testing.assert_close(b[:, :end], a[:, :end], rtol=cache_tol, atol=cache_tol)
    assert not dec._fused_state.counters.any()
    return worst


@interp
@pytest.mark.parametrize("ggml_type,rows,n_group", [(GGMLType.Q5_0, 1, 1), (GGMLType.F16, 4, 2)],
                         ids=["q5_0-greedy", "f16-2x2beams"])
def test_interp_decoder_step_matches_unfused(ggml_type, rows, n_group, monkeypatch):
    """A 3-token prompt by the unfused path, then 2 one-token steps fused vs unfused (float32,
    CPU): logits and the K/V cache rows agree to float32 rounding."""
    td = _td()
    monkeypatch.setattr(td, "MIN_BLOCK_N", 16)  # the interpreter runs programs one at a time
    dec = random_decoder(ggml_type, seed=rows)
    xa = torch.from_numpy(np.random.default_rng(9).standard_normal((rows // n_group, 20, 64)).astype(np.float32))
    err = fused_vs_unfused(dec, xa, [3, 4], n_group, cache_tol=1e-5)
    assert err < 1e-5, f"relative error {err:.3g}"


def test_triton_without_gdc_turns_pdl_off(monkeypatch):
    """A Triton without griddepcontrol (before 3.3) still imports the kernels (triton_ops, where
    the import is, and the fused step), with programmatic dependent launch off (the kernels' PDL
    branches are never compiled then)."""
    import importlib
    import sys
    import types

    from qwhisper.quants import triton_ops

    td = _td()
    try:
        monkeypatch.setitem(sys.modules, "triton.language.extra.cuda", types.ModuleType("triton.language.extra.cuda"))
        old_ops = importlib.reload(triton_ops)
        old = importlib.reload(td)
        assert old_ops.gdc_wait is None and old.gdc_wait is None
        assert old._pdl(torch.device("cuda", 0)) is False and old_ops._splitk_pdl(torch.device("cuda", 0)) == {"PDL": False}
    finally:
        monkeypatch.undo()
        importlib.reload(triton_ops)
        importlib.reload(td)
    assert td.gdc_wait is not None and triton_ops.gdc_wait is not None


@pytest.mark.parametrize("ggml_type", [GGMLType.Q5_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.F16], ids=lambda t: t.name)
def test_fold_ln_is_the_weight_times_the_layer_norm(ggml_type):
    """fold_ln: W @ weight and W @ bias of the dequantized W (float64 reference), over rows in
    more than one 4096-row chunk, rounded once to float32."""
    td = _td()
    rng = np.random.default_rng(int(ggml_type) + 90)
    n, k = 4100, 64
    w = rng.standard_normal((n, k)).astype(np.float32)
    raw = ref.quantize(w, ggml_type)
    wd = ref.dequantize(raw, ggml_type, (n, k)).astype(np.float64)
    g, b = rng.uniform(0.5, 1.5, k).astype(np.float32), rng.normal(0, 0.3, k).astype(np.float32)
    fg, fb = td.fold_ln(torch.from_numpy(raw.copy()).reshape(-1), ggml_type, n, k, torch.from_numpy(g),
                        torch.from_numpy(b))
    assert fg.dtype == fb.dtype == torch.float32 and fg.shape == fb.shape == (n,)
    for got, v in ((fg, g), (fb, b)):
        want = wd @ v.astype(np.float64)
        assert np.all(np.abs(got.numpy() - want) <= 2.0**-23 * (np.abs(wd) @ np.abs(v.astype(np.float64))))


def test_unsupported_reasons():
    """What makes the model fall back to the unfused step (no kernels run)."""
    td = _td()
    dec = random_decoder(GGMLType.Q8_0, seed=1, n_layer=1)
    assert td.unsupported(dec, 1) is None and td.unsupported(dec, 8) is None
    assert "rows" in td.unsupported(dec, 9)
    dec.blocks[0].mlp[0].ggml_type = GGMLType.F32
    assert "F32" in td.unsupported(dec, 1)
    dec = random_decoder(GGMLType.Q8_0, seed=1, n_layer=1)
    dec.blocks[0].attn.key.ggml_type = GGMLType.Q4_0
    assert "different types" in td.unsupported(dec, 1)


# ------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_fused_step_logits(monkeypatch):
    """Fused vs unfused one-token steps of the real tiny.en q5_1 (float16 model, greedy and 5
    beams, the fused kernels forced on for 5 rows): the fused logits are no further from the
    float32 CPU model's than the unfused ones (its residual stream is float32), and within 2e-2
    of its scale."""
    from conftest import SHARED_MODEL_Q5_1, need

    from qwhisper import model as model_mod
    from qwhisper.loader import load_model

    monkeypatch.setattr(model_mod, "FUSED_STEP_MAX_ROWS", 8)

    path = need(SHARED_MODEL_Q5_1)
    gpu, cpu = load_model(path, "cuda"), load_model(path, "cpu")
    rng = np.random.default_rng(3)
    mel = torch.from_numpy(rng.uniform(-0.8, 1.2, (1, 80, 3000)).astype(np.float32))
    xa = cpu.embed_audio(mel)
    prompt = [50257, 50362, 843, 523, 616]
    for beams in (1, 5):
        errs = {}
        tokens = torch.from_numpy(rng.integers(0, 50000, (beams, 3)))
        for fused in (False, True):
            gpu.decoder.fused_step = fused
            cache = gpu.new_kv_cache(xa, n_group=beams)
            gpu.logits(torch.tensor([prompt] * beams), cache)
            ref_cache = cpu.new_kv_cache(xa, n_group=beams)
            cpu.logits(torch.tensor([prompt] * beams), ref_cache)
            e = 0.0
            for j in range(3):
                a = gpu.logits(tokens[:, j:j + 1], cache).cpu()
                b = cpu.logits(tokens[:, j:j + 1], ref_cache)
                e = max(e, ((a - b).abs().max() / b.abs().max()).item())
            errs[fused] = e
        assert gpu.decoder._fused_error is None and gpu.decoder._fused_ran
        print(f"beams {beams}: relative error vs float32 CPU, unfused {errs[False]:.3g}, fused {errs[True]:.3g}")
        assert errs[True] <= max(1.5 * errs[False], 1e-3) and errs[True] < 2e-2, errs


@pytest.mark.cuda
def test_cuda_fused_step_large_rows_match_unfused():
    """large-v3's widths (n_state 1280, 20 heads, MLP 5120), 2 layers of random Q5_0 weights, float32
    on the GPU: the fused step with PDL, its loads before the wait and block loops of three steps
    (K 1280 with LN, 5120 without; the tiny model's rows fit one) and a cross-attention of two
    splits, against the unfused step."""
    dec = random_decoder(GGMLType.Q5_0, seed=7, n_vocab=512, n_ctx=32, n_state=1280, n_head=20).cuda()
    xa = torch.from_numpy(np.random.default_rng(8).standard_normal((1, 100, 1280)).astype(np.float32)).cuda()
    err = fused_vs_unfused(dec, xa, [3, 4, 5])
    print(f"fused vs unfused, large-v3 widths: relative {err:.3g}")
    assert err < 1e-4


@pytest.mark.cuda
def test_cuda_unfused_step_cached_attention_matches_sdpa(monkeypatch):
    """The unfused one-token step's self-attention through the split-key kernel (keys 0..pos of
    the static cache) against SDPA over the whole masked cache: real tiny.en q5_1, 1 and 5 rows,
    a 5-token prompt then 6 steps; logits within 4e-3 of their scale (float16 steps: the two
    paths round differently, 2.2e-3 seen on an H100; a wrong attention is off by ~1), and the
    switch really changes the path taken."""
    from conftest import SHARED_MODEL_Q5_1, need

    from qwhisper import model as model_mod
    from qwhisper.loader import load_model

    path = need(SHARED_MODEL_Q5_1)
    gpu = load_model(path, "cuda")
    gpu.decoder.fused_step = False
    rng = np.random.default_rng(5)
    mel = torch.from_numpy(rng.uniform(-0.8, 1.2, (1, 80, 3000)).astype(np.float32)).cuda()
    xa = gpu.embed_audio(mel)
    calls = []
    real = model_mod._cached_attention
    monkeypatch.setattr(model_mod, "_cached_attention", lambda *a: calls.append(1) or real(*a))
    for rows in (1, 5):
        tokens = torch.from_numpy(rng.integers(0, 50000, (rows, 6))).cuda()
        out = {}
        for triton_path in (False, True):
            monkeypatch.setattr(model_mod, "CACHED_ATTENTION_TRITON", triton_path)
            cache = gpu.new_kv_cache(xa, n_group=rows)
            gpu.logits(torch.tensor([[50257, 50362, 843, 523, 616]] * rows).cuda(), cache)
            n0 = len(calls)
            out[triton_path] = torch.stack([gpu.logits(tokens[:, j:j + 1], cache).float().cpu() for j in range(6)])
            assert len(calls) > n0  # the helper was asked (it declines when the switch is off)
        a, b = out[True], out[False]
        err = ((a - b).abs().max() / b.abs().max()).item()
        print(f"{rows} rows: cached-attention kernel vs SDPA, relative {err:.3g}")
        assert err < 4e-3 and model_mod.CACHED_ATTENTION_TRITON


@pytest.mark.cuda
def test_cuda_cross_attention_kernel_matches_sdpa_and_repeats():
    """One query a window over 1500 cross keys (a batched step of 25 windows, tiny's and
    large-v3's heads; 3 windows) through model._cross_attention's split-key kernel: within
    float16 rounding of SDPA in float32, and bit for bit the same over 20 repeats (cuDNN's SDPA
    at these shapes is not: batched transcripts differed run to run, performance.md 11.1). Beams
    (5 query rows a window) are left to SDPA."""
    from qwhisper import model as model_mod

    gen = torch.Generator(device="cuda").manual_seed(3)
    beams = torch.randn(10, 1, 384, device="cuda", generator=gen).half()
    kv = torch.randn(2, 1500, 384, device="cuda", generator=gen).half()
    assert model_mod._cross_attention(beams, kv, kv, 6) is None
    # ... SDPA of 5 queries a window (flash, model.FEW_QUERIES): float32 reference, repeats
    mha = model_mod.MultiHeadAttention(384, 6, "beams").cuda()
    got = mha.qkv_attention(beams, kv, kv, None)
    qf = beams.float().view(2, 5, 6, 64).transpose(1, 2)
    kf = kv.float().view(2, 1500, 6, 64).transpose(1, 2)
    want = torch.nn.functional.scaled_dot_product_attention(qf, kf, kf).transpose(1, 2).reshape(beams.shape)
    assert (got.float() - want).abs().max().item() < 2e-3
    assert all(torch.equal(mha.qkv_attention(beams, kv, kv, None), got) for _ in range(20))
    for windows, heads in ((25, 6), (3, 6), (25, 20)):
        c = heads * 64
        q = torch.randn(windows, 1, c, device="cuda", generator=gen).half()
        k = torch.randn(windows, 1500, c, device="cuda", generator=gen).half()
        v = torch.randn(windows, 1500, c, device="cuda", generator=gen).half()
        got = model_mod._cross_attention(q, k, v, heads)
        assert got is not None and got.shape == q.shape
        qf = q.float().view(windows, 1, heads, 64).transpose(1, 2)  # (R, H, 1, D)
        kf = k.float().view(windows, 1500, heads, 64).transpose(1, 2)
        vf = v.float().view(windows, 1500, heads, 64).transpose(1, 2)
        want = torch.nn.functional.scaled_dot_product_attention(qf, kf, vf).transpose(1, 2).reshape(q.shape)
        err = (got.float() - want).abs().max().item()
        print(f"{windows} windows, {heads} heads: max |kernel - SDPA float32| {err:.2e}")
        assert err < 2e-3
        for _ in range(20):
            assert torch.equal(model_mod._cross_attention(q, k, v, heads), got)


@pytest.mark.cuda
def test_cuda_fused_greedy_matches_golden():
    """jfk.wav with the real tiny.en q5_1 on the GPU, fused graphed steps: the greedy tokens
    are the numpy golden's (model_ref) from its own encoder output."""
    import wave

    from conftest import SHARED_MODEL_Q5_1, SPEECH_DIR, need

    from qwhisper import model_ref as R
    from qwhisper.audio import log_mel_spectrogram, pad_or_trim
    from qwhisper.ggml_file import read_ggml
    from qwhisper.loader import load_model

    f = read_ggml(need(SHARED_MODEL_Q5_1))
    with wave.open(str(need(SPEECH_DIR / "jfk.wav"))) as w:  # 16 kHz mono s16: no PyAV on the GPU machine
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    mel = log_mel_spectrogram(pad_or_trim(audio), f.mel_filters)
    model = load_model(f, "cuda")
    assert model.decoder.fused_step
    eot = 50256

    def greedy(step, n=64):
        out, logits = [], step([50257, 50362])
        while len(out) < n and (t := int(np.argmax(logits))) != eot:
            out.append(t)
            logits = step([t])
        return out

    cache = model.new_kv_cache(model.embed_audio(torch.from_numpy(mel)[None]))
    assert cache._graphed is not None
    got = greedy(lambda new: model.logits(torch.tensor([new]), cache)[0, -1].cpu().numpy())
    assert model.decoder._fused_ran and model.decoder._fused_error is None
    assert all(st.graph is not None for sets in model.decoder._graphed.values() for st in sets)
    w = R.Weights(f)
    xa = R.layer_norm(_golden_encoder(R, w, mel), w["encoder.ln_post.weight"], w["encoder.ln_post.bias"])
    cache_ref = R.DecoderCacheRef.new(w, xa)
    want = greedy(lambda new: R.decode(w, new, cache_ref)[-1])
    text = b"".join(f.vocab[t] for t in got).decode("utf-8")
    assert got == want, (text, b"".join(f.vocab[t] for t in want).decode("utf-8"))
    assert "ask not what your country can do for you" in text


def _golden_encoder(R, w, mel):
    h = R.encoder_stem(w, mel)
    for i in range(w.hparams.n_audio_layer):
        h = R.encoder_block(w, i, h)
    return h
