"""The one-row GEMV on planes (quants/planes.py) in Gluon: y = W x for a Q5_0 or Q4_0 weight with
K a multiple of 256, optionally with the LayerNorm before it folded in, a bias, the residual or
GELU epilogue, q|k|v written into the caches, and under programmatic dependent launch: the fused
decoder step's vocabulary projection and the decoder blocks' weights the loader puts in planes
(loader.BLOCK_PLANES).

Why Gluon: the ggml blocks' 2-byte-aligned fields cap a GEMV at ~55 % of copy bandwidth (session
19's eight designs); on planes, with x in shared memory and one-warp programs at 16 an SM, the
large-v3 vocabulary (51866 x 1280 Q5_0) takes 21.0-21.2 us on an H100, 72-73 % of copy bandwidth,
against 37.5 us for the Triton GEMV on ggml blocks (docs/reports/performance.md 21.1). Gluon
(Triton's explicit-layout dialect) places every lane's loads and keeps x where Triton's layouts
would shuffle it. The kernel source is generated (scripts/gen_gluon_gemv.py, _gluon_gemv.py).

Gluon runs on the GPU only (no interpreter), so CI checks the planes layout, the Triton kernels
on planes and the decode arithmetic (tests/test_planes.py emulates it in numpy); the CUDA
tests check this kernel against float64 products of the golden dequantization. `usable` decides
at load whether a weight goes to planes at all (loader: QLinear.to_planes).
"""

from __future__ import annotations

import functools
import warnings

import torch

from . import BLOCK_SIZES, QK, GGMLType

MAX_CHUNKS = 5  # 256-value chunks of K a warp takes (the generated kernel's NBW <= 5)
MAX_K = 5120  # Whisper's largest (fc2 of large-v3: 20 chunks, 4+ warps a program)
PROGRAMS_PER_SM = 16  # one-warp programs (96 registers) at the H100 sweep's best (2112 = 16 x 132)
TYPES = (GGMLType.Q5_0, GGMLType.Q4_0)


def min_warps(k: int) -> int:
    """The fewest warps a program (1, 2, 4, ...) that take K in chunks of <= MAX_CHUNKS a warp."""
    w = 1
    while -(-k // (8 * QK * w)) > MAX_CHUNKS:
        w *= 2
    return w


WARPS: dict[tuple[int, int], int] = {}  # (n, k) -> warps, before step_warps' rule (benchmarks' A/B)
PROGRAMS: dict[tuple[int, int], int] = {}  # (n, k) -> one-warp programs an SM, instead of PROGRAMS_PER_SM (A/B)


def step_warps(n: int, k: int) -> int:
    """Warps a program for an (n, k) weight: one where rows are many (n >= 2 K: q|k|v, fc1, the
    vocabulary: ~1000+ one-warp programs already), else a warp a chunk of K, up to 8 (out,
    cross-q, cross-out, fc2: 1280 rows are only 320 passes). H100, large-v3: performance.md 22.1."""
    if (n, k) in WARPS:
        return WARPS[(n, k)]
    nbl = -(-k // (8 * QK))
    return min_warps(k) if n >= 2 * k else max(min_warps(k), min(8, 1 << (nbl - 1).bit_length()))


def supports(ggml_type: GGMLType, n: int, k: int) -> bool:
    """Whether the kernel takes this weight (type, K a multiple of 256 up to MAX_K)."""
    return GGMLType(ggml_type) in TYPES and k % (8 * QK) == 0 and 0 < k <= MAX_K and n > 0


def _kernel():
    """The generated kernel, imported on first use (it needs Gluon: Triton >= 3.5)."""
    from . import _gluon_gemv

    return _gluon_gemv.gemv_planes_kernel


@functools.cache
def _sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


_EPILOGUES = {"store": 0, "residual": 1, "gelu": 2, "qkv": 3}


def gemv(x: torch.Tensor, planes: torch.Tensor, ggml_type: GGMLType, n: int, k: int,
         bias: torch.Tensor | None = None, ln: tuple | None = None, out: torch.Tensor | None = None,
         pdl: bool = False, epilogue: str = "store", warps: int | None = None, qkv: tuple | None = None) -> torch.Tensor:
    """y (n,) = W @ x (+ bias), or with ln = (weight, bias, eps, W@weight, W@bias) the LayerNorm of
    x folded in: W @ LN(x). x (k,) float32/float16/bfloat16 on the GPU, read as float32; planes:
    the weight's planes rows; out: (n,) of any float dtype (default float32), float32 inside.
    pdl: launched with programmatic dependent launch (sm_90+): the first pass's weights load
    before the wait for the kernel that wrote x. epilogue (the fused step's): "store", "residual"
    (out += W x + bias: out holds the residual), "gelu" (exact GELU of W x + bias) or "qkv"
    (qkv = (k_cache, v_cache, position): rows [0, n/3) of W x + bias go to out (n/3,), the next
    n/3 to k_cache[position] and the last n/3 to v_cache[position]; caches (n_ctx, n/3)).
    warps: a program's warps (1, 2, 4, 8, 16), which split each row's K between them (default:
    step_warps(n, k))."""
    if not supports(ggml_type, n, k):
        raise ValueError(f"the Gluon GEMV takes {[t.name for t in TYPES]} with K a multiple of 256 up to "
                         f"{MAX_K}, got {GGMLType(ggml_type).name} ({n}, {k})")
    warps = warps or step_warps(n, k)
    if warps not in (1, 2, 4, 8, 16) or -(-k // (8 * QK * warps)) > MAX_CHUNKS:
        raise ValueError(f"warps must be 1, 2, 4, 8 or 16 with K / (256 warps) <= {MAX_CHUNKS}, got {warps} (K {k})")
    nbytes = n * k // QK * BLOCK_SIZES[GGMLType(ggml_type)][1]
    if planes.dtype != torch.uint8 or planes.numel() != nbytes or not planes.is_contiguous():
        raise ValueError(f"planes of a {GGMLType(ggml_type).name} ({n}, {k}) weight are {nbytes} contiguous uint8 "
                         f"bytes, got {planes.numel()} of {planes.dtype}")
    if planes.data_ptr() % 16:
        raise ValueError("planes must be 16-byte aligned")
    x = x.reshape(-1)
    if x.numel() != k:
        raise ValueError(f"x needs {k} values, got {x.numel()}")
    x = x.contiguous()
    if epilogue not in _EPILOGUES or (epilogue in ("residual", "qkv") and out is None) or \
            ((epilogue == "qkv") != (qkv is not None)):
        raise ValueError(f"epilogue must be one of {list(_EPILOGUES)} (residual, qkv: with out; qkv with the caches), "
                         f"got {epilogue!r}")
    rows = n // 3 if epilogue == "qkv" else n
    if out is None:
        out = torch.empty(n, dtype=torch.float32, device=x.device)
    elif out.numel() != rows or not out.is_contiguous():
        raise ValueError(f"out must be {rows} contiguous values, got {tuple(out.shape)}")
    kc = vc = pos = out
    stride_cs = 0
    if qkv is not None:
        kc, vc, pos = qkv
        if n % 3 or kc.shape[-1] != rows or vc.shape != kc.shape or kc.stride(-1) != 1 or vc.stride() != kc.stride():
            raise ValueError(f"qkv: the caches must be (n_ctx, {rows}) alike with contiguous rows, got "
                             f"{tuple(kc.shape)} and {tuple(vc.shape)}")
        stride_cs = kc.stride(-2)
    passes = -(-n // 4)
    # one-warp programs: 16 an SM, each taking passes pid, pid + g, ...; wider ones: a pass each
    g = min(PROGRAMS.get((n, k), PROGRAMS_PER_SM) * _sms(x.device), passes) if warps == 1 else passes
    w32 = planes.view(torch.int32).view(torch.uint32)
    w16 = planes.view(torch.int16).view(torch.uint16)
    lnw = lnb = ww = wb = x
    eps = 0.0
    if ln is not None:
        lnw, lnb, eps, ww, wb = ln[0], ln[1], float(ln[2]), ln[3], ln[4]
    kw = {"launch_pdl": True} if pdl else {}
    from .triton_decoder import _trace_kw  # benchmarks/trace_step.py's records, when on

    kw.update(_trace_kw(g, "gluon", f"{n}x{k}", "LN" if ln is not None else "", epilogue, f"{warps}w")
              or {"trace_ptr": x, "trace_slot": 0, "TRACE": False})
    nbl = k // (8 * QK)
    bits = 5 if GGMLType(ggml_type) == GGMLType.Q5_0 else 4
    _kernel()[(g,)](w32, w16, x, out, bias if bias is not None else x, lnw, lnb, ww, wb, eps,
                    kc, vc, pos, rows, stride_cs, n, passes, g, BITS=bits, NBL=nbl, NBW=-(-nbl // warps), WK=warps,
                    HAS_BIAS=bias is not None, LN=ln is not None, PDL=pdl, EPI=_EPILOGUES[epilogue],
                    num_warps=warps, **kw)
    return out


@functools.cache
def usable(device: torch.device, ggml_type: GGMLType = GGMLType.Q5_0) -> bool:
    """Whether the Gluon GEMV of this type compiles and runs correctly here (checked once per
    device and type on a small weight against the Triton dequantization): Gluon ships with Triton
    >= 3.5 and is experimental, so any failure keeps weights in ggml blocks, with a warning."""
    if device.type != "cuda" or GGMLType(ggml_type) not in TYPES:
        return False
    try:
        from . import planes as planes_mod
        from . import triton_ops

        t = GGMLType(ggml_type)
        ts = BLOCK_SIZES[t][1]
        gen = torch.Generator(device=device).manual_seed(0)
        n, k = 37, 512
        raw = torch.randint(0, 256, (n * k // QK * ts,), dtype=torch.uint8, device=device, generator=gen)
        blocks = raw.view(n * k // QK, ts)
        blocks[:, 0], blocks[:, 1] = 0, 0x2C  # d = 1/16 (f16 0x2C00): finite scales
        x = torch.randn(k, device=device, generator=gen)
        w = triton_ops.dequantize(raw, t, (n, k)).double()
        y = gemv(x, planes_mod.to_planes(raw, t, n, k).reshape(-1), t, n, k)
        err = ((y.double() - w @ x.double()).abs() / (w.abs() @ x.double().abs())).max().item()
        if not err < 1e-6:
            raise RuntimeError(f"wrong result (relative error {err:.1e})")
        return True
    except Exception as e:  # noqa: BLE001 -- ImportError (no Gluon), compile errors of any kind, launch failures
        warnings.warn(f"Gluon GEMV for {GGMLType(ggml_type).name} unavailable ({type(e).__name__}: {str(e)[:300]}); "
                      "weights stay in ggml blocks")
        return False


__all__ = ["MAX_K", "TYPES", "gemv", "min_warps", "step_warps", "supports", "usable"]
