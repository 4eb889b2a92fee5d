"""Planes rows (quants/planes.py) and the kernels that read them.

CPU: the regrouping against the ggml bytes, and a numpy emulation of the Gluon GEMV's word decode
(quants/_gluon_gemv.py) against the golden dequantization, bit for bit. Interpreter
(TRITON_INTERPRET=1, in a child process): the Triton kernels on planes give the same bits as on
ggml blocks. CUDA: the Gluon GEMV against float64 products of the golden dequantization, and a
model whose vocabulary went to planes at load against the same model without.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import run_interpreter_suite

from qwhisper.quants import BLOCK_SIZES, QK, GGMLType, ref
from qwhisper.quants.planes import from_planes, plane_offsets, to_planes

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0]
interp = pytest.mark.skipif(not INTERPRETING, reason="runs in the interpreter child process (test_interpreter_suite)")
cuda = pytest.mark.cuda


def _raw(ggml_type: GGMLType, n: int, k: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """(ggml bytes, golden float32 (n, k)) of random weights quantized by the golden."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.01, 3, (n, 1)).astype(np.float32)
    raw = np.ascontiguousarray(ref.quantize(w, ggml_type)).reshape(-1)
    return torch.from_numpy(raw.copy()), ref.dequantize(raw, ggml_type, (n, k))


# ------------------------------------------------------------------------------------------
# CPU
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES, ids=lambda t: t.name)
def test_planes_regroup_the_same_bytes(ggml_type):
    """Each plane holds one field of every block, in block order; from_planes undoes to_planes."""
    n, k = 3, 256
    nb, ts = k // QK, BLOCK_SIZES[ggml_type][1]
    raw = torch.randint(0, 256, (n * nb * ts,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    p = to_planes(raw, ggml_type, n, k)
    assert p.shape == (n, nb * ts) and sorted(p.reshape(-1).tolist()) == sorted(raw.tolist())
    assert torch.equal(from_planes(p.reshape(-1), ggml_type, n, k).reshape(-1), raw)
    blocks = raw.view(n, nb, ts)
    offs = plane_offsets(ggml_type)
    qs_w = 32 if ggml_type == GGMLType.Q8_0 else 16
    field_at = {"d": 0, "m": 2, "qh": 4 if ggml_type == GGMLType.Q5_1 else 2, "qs": ts - qs_w}
    sizes = {"d": 2, "m": 2, "qh": 4, "qs": qs_w}
    for name, at in offs.items():  # block b's field sits at row + nb * offset + b * size
        for b in (0, nb - 1):
            got = p[:, nb * at + b * sizes[name]: nb * at + (b + 1) * sizes[name]]
            assert torch.equal(got, blocks[:, b, field_at[name]: field_at[name] + sizes[name]]), (name, b)
    with pytest.raises(ValueError, match="needs"):
        to_planes(raw[:-1], ggml_type, n, k)
    with pytest.raises(ValueError, match="block types"):
        to_planes(raw, GGMLType.F16, n, k)


@pytest.mark.parametrize("ggml_type", [GGMLType.Q5_0, GGMLType.Q4_0], ids=lambda t: t.name)
def test_gluon_word_decode_is_the_golden_dequantization(ggml_type):
    """The Gluon GEMV's decode, emulated in numpy on planes rows: qs words masked to nibbles, (Q5_0)
    the fifth bits spread into bit 4 of each byte by one multiply, each byte put into the mantissa
    of 2^23 (PRMT with 0x4B000000) and 2^23 + 16 (Q4_0: + 8) subtracted, times d: equal to the
    golden dequantization bit for bit (so the kernel's products differ from float64 by rounding
    only)."""
    n, k = 5, 1280
    nb = k // QK
    five = ggml_type == GGMLType.Q5_0
    raw, want = _raw(ggml_type, n, k, seed=3)
    p = to_planes(raw, ggml_type, n, k).numpy()
    qs = p[:, : 16 * nb].copy().view(np.uint32).reshape(n, nb, 4).astype(np.uint64)
    qh = p[:, 16 * nb: 20 * nb].copy().view(np.uint32).reshape(n, nb).astype(np.uint64) if five else None
    d = p[:, (20 if five else 16) * nb:].copy().view(np.float16).reshape(n, nb).astype(np.float32)
    u = np.uint64
    word = u(0xFFFFFFFF)

    def spread(b, shift):  # _spread of qh's bits shift..shift+3: bit 4 of bytes 0..3 (Q4_0: none)
        if not five:
            return u(0)
        v = (qh[:, b] >> u(shift)) & u(0xF)
        return (((v * u(0x00204081)) & word) & u(0x01010101)) << u(4)

    got = np.zeros((n, k), np.float32)
    for b in range(nb):
        for w in range(4):
            lo = ((qs[:, b, w] & u(0x0F0F0F0F)) | spread(b, 4 * w)) & word
            hi = (((qs[:, b, w] >> u(4)) & u(0x0F0F0F0F)) | spread(b, 16 + 4 * w)) & word
            for j in range(4):
                for v, base in ((lo, 0), (hi, 16)):
                    byte = ((v >> u(8 * j)) & u(0xFF)).astype(np.uint32)
                    q = (np.uint32(0x4B000000) | byte).view(np.float32) - np.float32(8388608 + (16 if five else 8))
                    got[:, 32 * b + base + 4 * w + j] = q * d[:, b]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_qlinear_with_planes_reads_as_ggml():
    """A QLinear holding planes (as to_planes leaves a CUDA weight) dequantizes, looks rows up and
    multiplies on the torch path exactly as the same QLinear on ggml blocks."""
    from qwhisper.model import QLinear

    n, k = 12, 512
    raw, w = _raw(GGMLType.Q5_0, n, k, seed=4)
    lin, pl = QLinear(k, n, False, GGMLType.Q5_0), QLinear(k, n, False, GGMLType.Q5_0)
    lin.weight = raw.view(n, -1).clone()
    pl.weight = to_planes(raw, GGMLType.Q5_0, n, k)
    pl.planes = True
    assert "planes" in repr(pl)
    assert torch.equal(pl.ggml_bytes(), lin.weight)
    assert np.array_equal(pl.dequantized().numpy(), w)
    idx = torch.tensor([[3, 0], [11, 3]])
    assert torch.equal(pl.rows(idx), lin.rows(idx))
    x = torch.randn(2, k)
    assert torch.equal(pl(x), lin(x))
    from qwhisper.quants.triton_decoder import fold_ln  # the fused step's LayerNorm fold, rows converted in chunks

    g, b = torch.randn(k), torch.randn(k)
    for got, want in zip(fold_ln(pl.weight, GGMLType.Q5_0, n, k, g, b, planes=True),
                         fold_ln(lin.weight, GGMLType.Q5_0, n, k, g, b)):
        assert torch.equal(got, want)
    assert pl.to_planes() is True  # already planes: stays
    assert lin.to_planes() is False and not lin.planes  # a CPU weight is never regrouped
    # state_dict holds the file's blocks whatever the layout; loading them regroups a planes weight
    assert torch.equal(pl.state_dict()["weight"], lin.weight) and pl.planes
    other, _ = _raw(GGMLType.Q5_0, n, k, seed=9)
    pl.load_state_dict({"weight": other.view(n, -1)}, strict=False)
    assert pl.planes and torch.equal(pl.weight, to_planes(other, GGMLType.Q5_0, n, k))
    with pytest.raises(RuntimeError, match="size mismatch"):  # not copied: the planes stay as they were
        pl.load_state_dict({"weight": other.view(n, -1)[:3]}, strict=False)
    assert torch.equal(pl.weight, to_planes(other, GGMLType.Q5_0, n, k))
    pl.from_planes()
    assert not pl.planes and torch.equal(pl.weight, other.view(n, -1))


def test_gluon_gemv_rejects_what_it_cannot_run():
    """Argument errors name the problem before any launch (CPU tensors suffice); a CPU device is
    never 'usable', so the loader leaves CPU weights in ggml blocks."""
    from qwhisper.quants import gluon_gemv

    n, k = 8, 512
    p = to_planes(_raw(GGMLType.Q5_0, n, k, seed=5)[0], GGMLType.Q5_0, n, k).reshape(-1)
    x = torch.zeros(k)
    assert gluon_gemv.supports(GGMLType.Q4_0, n, 1280) and not gluon_gemv.supports(GGMLType.Q5_0, n, 384)
    assert gluon_gemv.supports(GGMLType.Q5_0, n, 5120) and not gluon_gemv.supports(GGMLType.Q5_0, n, 5376)
    assert not gluon_gemv.supports(GGMLType.Q8_0, n, k)
    # K in 256-value chunks, <= 5 a warp: 1280 on one warp, 1536 on two, 5120 on four
    assert [gluon_gemv.min_warps(k) for k in (256, 1280, 1536, 2560, 2816, 5120)] == [1, 1, 2, 2, 4, 4]
    # the step's: one-warp programs for many rows, a warp a chunk (up to 8) for few
    assert [gluon_gemv.step_warps(n, k) for n, k in ((3840, 1280), (51866, 1280), (1280, 1280), (1280, 5120),
                                                     (512, 512), (768, 768))] == [1, 1, 8, 8, 2, 4]
    with pytest.raises(ValueError, match="warps must be"):
        gluon_gemv.gemv(x, p, GGMLType.Q5_0, n, k, warps=3)
    with pytest.raises(ValueError, match="warps must be"):
        gluon_gemv.gemv(torch.zeros(1536), to_planes(_raw(GGMLType.Q5_0, n, 1536, seed=5)[0], GGMLType.Q5_0, n, 1536),
                        GGMLType.Q5_0, n, 1536, warps=1)  # 6 chunks on one warp
    with pytest.raises(ValueError, match="K a multiple of 256"):
        gluon_gemv.gemv(torch.zeros(384), p, GGMLType.Q5_0, n, 384)
    with pytest.raises(ValueError, match="contiguous uint8"):
        gluon_gemv.gemv(x, p[:-2], GGMLType.Q5_0, n, k)
    with pytest.raises(ValueError, match="x needs 512 values"):
        gluon_gemv.gemv(torch.zeros(256), p, GGMLType.Q5_0, n, k)
    with pytest.raises(ValueError, match="epilogue must be one of"):
        gluon_gemv.gemv(x, p, GGMLType.Q5_0, n, k, epilogue="residual")
    with pytest.raises(ValueError, match="out must be 8"):
        gluon_gemv.gemv(x, p, GGMLType.Q5_0, n, k, out=torch.zeros(9))
    caches = (torch.zeros(448, 3), torch.zeros(448, 3), torch.zeros(1, dtype=torch.long))
    p9 = to_planes(_raw(GGMLType.Q5_0, 9, k, seed=6)[0], GGMLType.Q5_0, 9, k).reshape(-1)
    with pytest.raises(ValueError, match="epilogue must be one of"):  # q|k|v needs the caches
        gluon_gemv.gemv(x, p9, GGMLType.Q5_0, 9, k, out=torch.zeros(3), epilogue="qkv")
    with pytest.raises(ValueError, match="out must be 3"):  # and out holds q only
        gluon_gemv.gemv(x, p9, GGMLType.Q5_0, 9, k, out=torch.zeros(9), epilogue="qkv", qkv=caches)
    with pytest.raises(ValueError, match="caches must be"):
        gluon_gemv.gemv(x, p9, GGMLType.Q5_0, 9, k, out=torch.zeros(3), epilogue="qkv",
                        qkv=(torch.zeros(448, 4), torch.zeros(448, 4), caches[2]))
    assert gluon_gemv.usable(torch.device("cpu")) is False


def test_interpreter_suite():
    """Run the interpreter tests of this file in a child process with TRITON_INTERPRET=1."""
    if INTERPRETING:
        pytest.skip("already in the interpreter process")
    run_interpreter_suite(__file__)


# ------------------------------------------------------------------------------------------
# Interpreter: the Triton kernels on planes give the bits they give on ggml blocks
# ------------------------------------------------------------------------------------------


@interp
@pytest.mark.parametrize("ggml_type", BLOCK_TYPES, ids=lambda t: t.name)
def test_interp_triton_kernels_on_planes(ggml_type):
    from qwhisper.quants import triton_decoder as td
    from qwhisper.quants import triton_ops as ops

    n, k = 40, 256
    raw, w = _raw(ggml_type, n, k, seed=int(ggml_type))
    p = to_planes(raw, ggml_type, n, k).reshape(-1)
    got = ops.dequantize(p, ggml_type, (n, k), planes=True)
    assert np.array_equal(got.numpy().view(np.uint32), w.view(np.uint32))
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((20, k)).astype(np.float32)).half()
    bias = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    # linear's ways: 5 rows of a narrow weight take the GEMV, 20 rows split-K, 40 rows dequantize
    # + matmul; the GEMV also with float32 x, one row and a step that does not divide K/32
    assert [ops.pick(r, n, k, torch.float16) for r in (5, 20, 40)] == ["gemv", "splitk", "dequant+cublas"]
    for rows in (5, 20, 40):
        xr = x[:rows] if rows <= 20 else x.repeat(2, 1)
        want = ops.linear(xr, raw, ggml_type, (n, k), bias)
        assert torch.equal(ops.linear(xr, p, ggml_type, (n, k), bias, planes=True), want), rows
    for xr, cfg in ((x[:3].float(), None), (x[:1].float(), None), (x[:2], (2, 8, 4, 2))):
        assert torch.equal(ops.qmatmul(xr, p, ggml_type, (n, k), bias, config=cfg, planes=True),
                           ops.qmatmul(xr, raw, ggml_type, (n, k), bias, config=cfg)), (xr.shape, cfg)
    assert torch.equal(ops.qgemm_fused(x[:5], p, ggml_type, (n, k), bias, config=(16, 16, 2, 2, 4, 2), planes=True),
                       ops.qgemm_fused(x[:5], raw, ggml_type, (n, k), bias, config=(16, 16, 2, 2, 4, 2)))
    pe = torch.from_numpy(rng.standard_normal((8, k)).astype(np.float16))
    tokens = torch.tensor([3, 39, 0])
    a, b = torch.empty(3, k), torch.empty(3, k)
    td.embed(tokens, raw, ggml_type, n, pe, torch.tensor([5]), a)
    td.embed(tokens, p, ggml_type, n, pe, torch.tensor([5]), b, planes=True)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("ggml_type", [GGMLType.Q5_0, GGMLType.Q4_0], ids=lambda t: t.name)
@pytest.mark.parametrize("k", [256, 512, 768, 1024, 1280, 5120])
def test_cuda_gluon_gemv(k, ggml_type):
    """The Gluon GEMV against float64 products of the golden dequantization (plain, with a bias,
    with a folded LayerNorm against F.layer_norm in float64), for N not a multiple of 4 rows, at
    the warps step_warps gives (K 5120: 8 warps, 3 chunks each, 4 of them past K)."""
    import torch.nn.functional as F

    from qwhisper.quants import gluon_gemv, triton_decoder

    if not gluon_gemv.usable(torch.device("cuda"), ggml_type):
        pytest.skip("Gluon is not available with this Triton")
    for n in (1, 37, 5003):
        raw, w = _raw(ggml_type, n, k, seed=k + n)
        p = to_planes(raw, ggml_type, n, k).reshape(-1).cuda()
        w64 = torch.from_numpy(w).double()
        x = torch.randn(k, generator=torch.Generator().manual_seed(n))
        scale = w64.abs() @ x.double().abs()
        y = gluon_gemv.gemv(x.cuda(), p, ggml_type, n, k).cpu().double()
        assert ((y - w64 @ x.double()).abs() <= 2 * k * 2.0**-24 * scale + 1e-30).all()
        xh = x.half()  # float16 in and out (the unfused step's logits): float32 inside, one rounding
        y = gluon_gemv.gemv(xh.cuda(), p, ggml_type, n, k, out=torch.empty(n, dtype=torch.half, device="cuda"))
        want = w64 @ xh.double()
        assert ((y.cpu().double() - want).abs() <= 2 * k * 2.0**-24 * scale + 2.0**-11 * want.abs() + 1e-7).all()
        bias = torch.randn(n)
        y = gluon_gemv.gemv(x.cuda(), p, ggml_type, n, k, bias=bias.cuda()).cpu().double()
        assert ((y - w64 @ x.double() - bias.double()).abs() <= 2 * k * 2.0**-24 * scale + 1e-6).all()
        lw, lb = torch.rand(k) + 0.5, torch.randn(k)
        ww, wb = triton_decoder.fold_ln(raw.cuda(), ggml_type, n, k, lw.cuda(), lb.cuda())
        y = gluon_gemv.gemv(x.cuda() * 3 + 1, p, ggml_type, n, k, ln=(lw.cuda(), lb.cuda(), 1e-5, ww, wb),
                            pdl=True).cpu().double()
        hn = F.layer_norm((x * 3 + 1).double(), (k,), lw.double(), lb.double(), 1e-5)
        want = w64 @ hn
        assert ((y - want).abs() <= 1e-4 * (w64.abs() @ hn.abs()) + 1e-5).all()
        # the fused step's epilogues: GELU of W x + bias; the residual updated in place
        y = gluon_gemv.gemv(x.cuda(), p, ggml_type, n, k, bias=bias.cuda(), epilogue="gelu").cpu().double()
        z = w64 @ x.double() + bias.double()
        want = 0.5 * z * (1 + torch.erf(z / 2**0.5))
        assert ((y - want).abs() <= 2 * k * 2.0**-24 * scale + 1e-6 * z.abs() + 1e-6).all()
        res = torch.randn(n)
        out = res.cuda()
        gluon_gemv.gemv(x.cuda(), p, ggml_type, n, k, bias=bias.cuda(), out=out, epilogue="residual")
        want = res.double() + w64 @ x.double() + bias.double()
        assert ((out.cpu().double() - want).abs() <= 2 * k * 2.0**-24 * scale + 1e-6 * want.abs() + 1e-6).all()


@cuda
@pytest.mark.parametrize("ggml_type", [GGMLType.Q5_0, GGMLType.Q4_0], ids=lambda t: t.name)
def test_cuda_gluon_gemv_warps_and_qkv(ggml_type):
    """Programs of 1-16 warps splitting K (with chunks past K masked) give W x, the folded
    LayerNorm and the residual against float64; the q|k|v epilogue writes q, and k and v into
    row `pos` of float16 caches, and no other cache row."""
    import torch.nn.functional as F

    from qwhisper.quants import gluon_gemv, triton_decoder

    if not gluon_gemv.usable(torch.device("cuda"), ggml_type):
        pytest.skip("Gluon is not available with this Triton")
    for n, k, warps in ((1283, 1280, 8), (1280, 1280, 2), (640, 2560, 2), (1280, 5120, 4), (1280, 5120, 16),
                        (100, 768, 4), (3840, 1280, 1), (1536, 512, 4)):
        raw, w = _raw(ggml_type, n, k, seed=n + k + warps)
        p = to_planes(raw, ggml_type, n, k).reshape(-1).cuda()
        w64 = torch.from_numpy(w).double()
        gen = torch.Generator().manual_seed(warps)
        x, bias, res = torch.randn(k, generator=gen), torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        scale = w64.abs() @ x.double().abs()
        y = gluon_gemv.gemv(x.cuda(), p, ggml_type, n, k, warps=warps).cpu().double()
        assert ((y - w64 @ x.double()).abs() <= 2 * k * 2.0**-24 * scale + 1e-30).all(), (n, k, warps)
        out = res.cuda()
        gluon_gemv.gemv(x.cuda(), p, ggml_type, n, k, bias=bias.cuda(), out=out, pdl=True, epilogue="residual",
                        warps=warps)
        want = res.double() + w64 @ x.double() + bias.double()
        assert ((out.cpu().double() - want).abs() <= 2 * k * 2.0**-24 * scale + 1e-6 * want.abs() + 1e-6).all()
        lw, lb = torch.rand(k, generator=gen) + 0.5, torch.randn(k, generator=gen)
        ww, wb = triton_decoder.fold_ln(raw.cuda(), ggml_type, n, k, lw.cuda(), lb.cuda())
        ln = (lw.cuda(), lb.cuda(), 1e-5, ww, wb)
        hn = F.layer_norm((x * 3 + 1).double(), (k,), lw.double(), lb.double(), 1e-5)
        want = w64 @ hn + bias.double()
        tol = 1e-4 * (w64.abs() @ hn.abs()) + 1e-5
        y = gluon_gemv.gemv(x.cuda() * 3 + 1, p, ggml_type, n, k, bias.cuda(), ln, warps=warps).cpu().double()
        assert ((y - want).abs() <= tol).all(), (n, k, warps)
        if n % 3 == 0:  # q|k|v rows: q to out, k and v into the caches' row pos, as float16
            c, pos = n // 3, 37
            kc = torch.full((448, c), float("nan"), dtype=torch.float16, device="cuda")
            vc = kc.clone()
            q = torch.empty(c, device="cuda")
            gluon_gemv.gemv(x.cuda() * 3 + 1, p, ggml_type, n, k, bias.cuda(), ln, q, True, "qkv", warps,
                            (kc, vc, torch.tensor([pos], device="cuda")))
            assert ((q.cpu().double() - want[:c]).abs() <= tol[:c]).all()
            for cache, part in ((kc, want[c:2 * c]), (vc, want[2 * c:])):
                assert torch.equal(cache[pos].cpu(), part.half()) or \
                    ((cache[pos].cpu().double() - part).abs() <= 2.0**-11 * part.abs() + tol[c:2 * c] + 1e-7).all()
                assert torch.isnan(cache[:pos]).all() and torch.isnan(cache[pos + 1:]).all()


@cuda
@pytest.mark.parametrize("ftype", ["q5_0", "q4_0"])
def test_cuda_vocabulary_on_planes_matches_ggml(tmp_path, ftype):
    """A base-shaped model (random weights): loaded on CUDA its vocabulary and the decoder blocks'
    weights go to planes, and its logits (the fused one-row step, 5 beams through the tensor-core
    GEMM and the GEMV, a prompt, 25 rows through split-K) equal those of the same model loaded
    with VOCAB_PLANES and BLOCK_PLANES off, within the fused step's tolerance."""
    import sys

    from qwhisper import loader
    from qwhisper.quants import gluon_gemv

    if not gluon_gemv.usable(torch.device("cuda"), GGMLType[ftype.upper()]):
        pytest.skip("Gluon is not available with this Triton")
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "benchmarks"))
    from bench_model import fast_random_model

    path = fast_random_model(tmp_path, "base", ftype)
    planes = loader.load_model(path, "cuda")
    try:
        loader.VOCAB_PLANES, saved, loader.BLOCK_PLANES = False, loader.BLOCK_PLANES, ()
        ggml = loader.load_model(path, "cuda")
    finally:
        loader.VOCAB_PLANES, loader.BLOCK_PLANES = True, saved
    assert planes.decoder.token_embedding.planes and not ggml.decoder.token_embedding.planes
    for b in planes.decoder.blocks:
        assert all(b.get_submodule(name).planes for name in saved), saved
        assert b.attn.qkv_projection().planes
    assert not any(m.planes for m in ggml.modules() if hasattr(m, "planes"))
    xa = torch.randn(1, 1500, 512, device="cuda", generator=torch.Generator("cuda").manual_seed(0)).half()
    prompt = torch.tensor([[50258, 50259, 50359]], device="cuda")
    for rows in (1, 5, 25):
        got, want = [], []
        for model, out in ((planes, got), (ggml, want)):
            cache = model.new_kv_cache(xa.repeat(25, 1, 1), n_group=1) if rows == 25 else \
                model.new_kv_cache(xa, n_group=rows)
            out.append(model.logits(prompt.repeat(rows, 1), cache)[:, -1])
            for t in (440, 1049, 286):
                out.append(model.logits(torch.full((rows, 1), t, device="cuda"), cache)[:, -1])
        for g, w in zip(got, want):
            err = torch.linalg.vector_norm(g.float() - w.float()) / torch.linalg.vector_norm(w.float())
            assert err < 2e-3, (rows, err.item())
