"""Triton kernels on raw ggml blocks: bit-exact dequantize, fused dequant-GEMV, and `linear`.

Callers import this module lazily (only for CUDA tensors, or under TRITON_INTERPRET=1 in the
tests): it imports triton at the top.

Raw weights are the bytes of the GGML file, uint8: row n of an (N, K) tensor is K/32 consecutive
blocks of 18, 20, 22, 24 or 34 bytes, so blocks are not 4-byte aligned. Every block size and
every f16/u32 field offset is even, though: the kernels read d, m and qh through an int16 view
of the same buffer and qs byte by byte (the compiler pairs neighbouring bytes into 16-bit loads).

4/5-bit blocks are decoded as two tiles of 16: byte j of qs holds weight j (low nibble) and
weight j+16 (high nibble), so a tile of qs bytes lines up with two contiguous runs of x,
x[32b + j] and x[32b + 16 + j], and no shuffle is needed between weights and activations.

Exactness (dequantize must equal quants.ref bit for bit):
* q becomes a float without the int->float instruction (a quarter of the FMA rate): OR-ing an
  integer v < 2^23 into the mantissa of 2^23 (bits 0x4B000000) gives the float 2^23 + v, and
  subtracting 2^23 + zero_point is exact. The high nibble is not shifted down: (byte & 0xF0)
  gives 16*q, and the 16 is folded into d or x as the exact factor 1/16.
* d and m are f16 -> f32 conversions (exact); d*q is exact in float32 (11-bit mantissa times at
  most 8 bits), so `d*q + m` rounds once whether the compiler contracts it into an FMA or not:
  no inline PTX is needed to stop the contraction (tests/test_triton.py checks the premise for
  every finite f16 d and every q).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from . import BLOCK_SIZES, QK, GGMLType, tensor_nbytes, torch_ops

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # Triton before 3.3 (e.g. the one torch 2.4 ships): no programmatic dependent launch
    gdc_launch_dependents = gdc_wait = None


def _patch_interpreter_scalars() -> None:
    """Let triton 3.6's CPU interpreter (TRITON_INTERPRET=1) run loops with run-time bounds.

    The interpreter holds scalar kernel arguments as 1-element arrays and converts them to
    Python ints with int(array), which numpy >= 2.4 refuses for arrays of ndim > 0
    ("only 0-dimensional arrays can be converted to Python scalars"), so any
    `for b in range(0, n, STEP)` with a run-time n fails. Wrap the interpreter's tensor
    patching so __index__ reads the single element instead. Interpreter only; no effect on GPU.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_qwhisper_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._qwhisper_fixed = True
    interpreter._patch_lang_tensor = patched


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRETED:
    _patch_interpreter_scalars()

# Ask L2 for a program's whole weight slice when the program starts (prefetch.global.L2 per
# 128-byte line, fire and forget), instead of only the NB blocks the loop's next step loads:
# the loads then meet lines already on their way. The interpreter runs no inline PTX. Module
# switch so that benchmarks can measure without it.
PREFETCH_L2 = not INTERPRETED
_LINE = 128

# Byte layout of each block type, read by the kernels:
#   TS: bytes per block; M_B: byte offset of the f16 minimum m (-1: none); QH_B: byte offset of the
#   u32 fifth bits (-1: none); QS_B: byte offset of qs; BITS: 4, 5 or 8; ZERO: the zero point.
#                 TS  M_B  QH_B QS_B BITS ZERO
_LAYOUT = {
    GGMLType.Q4_0: (18, -1, -1, 2, 4, 8),  # d | qs[16]                 w = d*(q-8)
    GGMLType.Q4_1: (20, 2, -1, 4, 4, 0),  # d | m | qs[16]              w = d*q + m
    GGMLType.Q5_0: (22, -1, 2, 6, 5, 16),  # d | qh:u32 | qs[16]        w = d*(q-16)
    GGMLType.Q5_1: (24, 2, 4, 8, 5, 0),  # d | m | qh:u32 | qs[16]      w = d*q + m
    GGMLType.Q8_0: (34, -1, -1, 2, 8, 0),  # d | qs: 32 x int8          w = d*q
}
for _t, (_ts, *_rest) in _LAYOUT.items():
    assert _ts == BLOCK_SIZES[_t][1], _t  # the table agrees with ggml's block sizes

_QK = tl.constexpr(QK)  # weights per block, as a compile-time constant for the kernels
# float32 2^23; passed to the kernels as a run-time argument so that it sits in a register and
# `(byte & 0xF) | magic` compiles to one LOP3 (an instruction takes a single 32-bit immediate).
_MAGIC_BITS = 0x4B000000


# ------------------------------------------------------------------------------------------
# Block decoding, shared by every kernel (so the bit-exact dequantize test covers the GEMV's)
# ------------------------------------------------------------------------------------------


@triton.jit
def _ld(p, ok, EVEN: tl.constexpr):
    """Load; masked (other=0) unless the caller proved every element in bounds (EVEN)."""
    if EVEN:
        return tl.load(p)
    else:
        return tl.load(p, mask=ok, other=0)


@triton.jit
def _f16_at(w16, byte_off, ok, EVEN: tl.constexpr):
    """f16 field at an even byte offset (int16 view of the buffer) -> float32, exact."""
    return _ld(w16 + byte_off // 2, ok, EVEN).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _qh_at(w16, byte_off, ok, EVEN: tl.constexpr):
    """u32 fifth-bits field at an even byte offset -> int32 (bit j = bit 4 of weight j)."""
    lo = _ld(w16 + byte_off // 2, ok, EVEN).to(tl.int32) & 0xFFFF
    hi = _ld(w16 + byte_off // 2 + 1, ok, EVEN).to(tl.int32)
    return lo | (hi << 16)


@triton.jit
def _decode_nibbles(qs, qh, jj, magic, BITS: tl.constexpr, ZERO: tl.constexpr):
    """4/5-bit qs bytes (int32 0..255, byte j at position jj) -> (q_lo, q_hi16), float32, exact.

    q_lo = q[j] - ZERO; q_hi16 = 16*(q[j+16] - ZERO) (the high nibble left in place, see above).
    qh (same shape as qs or broadcastable, ignored unless BITS == 5): bit j -> bit 4 of q[j].
    Both are integers below 2^9, so their lowest mantissa bit is 0 (gdc_wait_after relies on it).
    """
    lo = (qs & 0xF) | magic
    hi = (qs & 0xF0) | magic
    if BITS == 5:
        # bit j of qh -> bit 4 of the low nibble; bit j+16 -> bit 8 (bit 4 of q scaled by 16).
        # (qh >> 8) is an arithmetic shift: its sign fill lands at bits >= 24 - j > 8, never read.
        lo = lo | (((qh << 4) >> jj) & 0x10)
        hi = hi | (((qh >> 8) >> jj) & 0x100)
    q_lo = lo.to(tl.float32, bitcast=True) - (8388608.0 + ZERO)
    q_hi16 = hi.to(tl.float32, bitcast=True) - (8388608.0 + 16 * ZERO)
    return q_lo, q_hi16


@triton.jit
def _decode_int8(qs, magic):
    """Q8_0 qs bytes (int32 0..255, two's complement int8) -> float32 q, exact.

    byte ^ 0x80 = q + 128 in 0..255; OR-ed into 2^23 and then 2^23 + 128 subtracted.
    """
    return (qs ^ (magic | 0x80)).to(tl.float32, bitcast=True) - (8388608.0 + 128)


@triton.jit
def _prefetch_at(ptrs):
    """prefetch.global.L2 of the 128-byte line of every pointer in the tensor ptrs."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [ptrs.to(tl.int64, bitcast=True)],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _prefetch_l2(ptr8, nbytes, LINES: tl.constexpr):
    """Prefetch the bytes [ptr8, ptr8 + nbytes) into L2, one 128-byte line per element
    (LINES >= nbytes / 128, a power of 2; the extra elements repeat the last line)."""
    _prefetch_at(ptr8 + tl.minimum(tl.arange(0, LINES).to(tl.int64) * 128, nbytes - 1))


def prefetch_lines(nbytes: int) -> int:
    """LINES for _prefetch_l2 of a slice of nbytes, or 0 (no prefetch) when PREFETCH_L2 is off."""
    return _next_pow2(-(-nbytes // _LINE)) if PREFETCH_L2 and nbytes > 0 else 0


@triton.jit
def _field_offsets(w_row, blk, TS: tl.constexpr, M_B: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr,
                   BITS: tl.constexpr, PNB: tl.constexpr):
    """Byte offsets (d, m, qh, qs) of block blk of the row that starts at byte w_row: ggml blocks
    (PNB == 0), or a planes row of PNB blocks (quants/planes.py: qs | qh | d | m). Offsets of
    fields the type lacks are returned but meaningless."""
    if PNB == 0:
        d_off = w_row + blk * TS
        m_off = d_off + M_B
        qh_off = d_off + QH_B
        qs_off = d_off + QS_B
    else:
        QSW: tl.constexpr = 32 if BITS == 8 else 16
        QHW: tl.constexpr = 4 if BITS == 5 else 0
        qs_off = w_row + blk * QSW
        qh_off = w_row + PNB * QSW + blk * 4
        d_off = w_row + PNB * (QSW + QHW) + blk * 2
        m_off = d_off + PNB * 2
    return d_off, m_off, qh_off, qs_off


@triton.jit
def _dequant_nibbles(w8, w16, m_off, qh_off, qs_off, ok, jj, d, magic, M_B: tl.constexpr, BITS: tl.constexpr,
                     ZERO: tl.constexpr):
    """4/5-bit blocks with fields at byte offsets m_off, qh_off, qs_off (_field_offsets; loads
    masked by ok, other=0), scale d given -> exact float32 (w_lo, w_hi): weights j and j + 16 of
    each block, jj = arange(16). M_B >= 0: the type has a minimum m."""
    qs = _ld(w8 + qs_off + jj, ok, False).to(tl.int32)
    qh = qs  # unused unless BITS == 5
    if BITS == 5:
        qh = _qh_at(w16, qh_off, ok, False)
    q_lo, q_hi16 = _decode_nibbles(qs, qh, jj, magic, BITS, ZERO)
    w_lo = q_lo * d  # exact
    w_hi = q_hi16 * (d * 0.0625)  # 16q * d/16: both factors exact powers-of-2 rescalings
    if M_B >= 0:
        m = _f16_at(w16, m_off, ok, False)
        w_lo = w_lo + m  # one rounding (the product is exact)
        w_hi = w_hi + m
    return w_lo, w_hi


@triton.jit
def _load_blocks(w8, w16, base, live, jj, QH_B: tl.constexpr, QS_B: tl.constexpr, BITS: tl.constexpr,
                 EVEN_K: tl.constexpr, blk=None, PNB: tl.constexpr = 0):
    """The GEMVs' d, qs and qh of the blocks at byte offsets `base` (PNB > 0: `base` is the row's
    offset and blk the blocks, in planes rows of PNB blocks): d float32, zeroed where not `live`
    (a clamped, repeated block) unless EVEN_K; qs int32 bytes at jj; qh int32 for the 5-bit types
    (else qs stands in, unused)."""
    if PNB == 0:
        d_off, qh_off, qs_off = base, base + QH_B, base + QS_B
    else:
        d_off, _, qh_off, qs_off = _field_offsets(base, blk, 0, 0, QH_B, QS_B, BITS, PNB)
    d = tl.load(w16 + d_off // 2).to(tl.float16, bitcast=True).to(tl.float32)
    if not EVEN_K:
        d = tl.where(live, d, 0.0)
    qs = tl.load(w8 + qs_off + jj).to(tl.int32)
    qh = qs
    if BITS == 5:
        qh = _qh_at(w16, qh_off, None, True)
    return d, qs, qh


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _or_bits(t):
    return tl.reduce(t.to(tl.int32, bitcast=True), None, _bit_or)


@triton.jit
def gdc_wait_after(a, b, c=None, d=None):
    """gdc_wait(), but only once every value of a and b (and c, d if given) has been computed:
    32-bit tensors whose lowest bit is 0 in every value (_decode_nibbles' floats, float16 widened
    to float32). ptxas schedules plain arithmetic across griddepcontrol.wait as it likes, and moved
    such a decode issued before the wait to after it, so the wait is made conditional on all of
    them: on the lowest bit of the OR of their bits, which is always 0, so it always waits."""
    bits = _or_bits(a) | _or_bits(b)
    if c is not None:
        bits = bits | _or_bits(c) | _or_bits(d)
    if (bits & 1) == 0:
        gdc_wait()


@triton.jit
def _block_fma(acc, d, qs, qh, x_lo, x_hi, w16, base, live, jj, magic, M_B: tl.constexpr, BITS: tl.constexpr,
               ZERO: tl.constexpr, EVEN_K: tl.constexpr, ONE_ROW: tl.constexpr, DECODED: tl.constexpr = False,
               blk=None, PNB: tl.constexpr = 0):
    """acc + the blocks' products with x, the GEMVs' inner step (the minimum m of Q4_1/Q5_1 is
    read here). x_lo = x[32b + j] (Q8_0: all 32), x_hi = x[32b + 16 + j] (4/5-bit). One x row: d
    is applied once per block and byte (d*(q.x), q_hi*x_hi = q_hi16*(x_hi/16), an exact
    rescaling); several rows: each weight is dequantized once (q*d) and then used by every row
    (one FMA per weight and row). DECODED: qs, qh are _decode_nibbles' values (same results)."""
    if BITS == 8:
        q = _decode_int8(qs, magic)
        if ONE_ROW:
            acc += d * (q * x_lo)
        else:
            acc += (q * d) * x_lo
    else:
        if DECODED:
            q_lo, q_hi16 = qs, qh
        else:
            q_lo, q_hi16 = _decode_nibbles(qs, qh, jj, magic, BITS, ZERO)
        m = d  # unused unless M_B >= 0
        if M_B >= 0:
            if PNB == 0:
                m = _f16_at(w16, base + M_B, None, True)
            else:  # planes (as _load_blocks): base is the row's offset
                m = _f16_at(w16, _field_offsets(base, blk, 0, M_B, 0, 0, BITS, PNB)[1], None, True)
            if not EVEN_K:
                m = tl.where(live, m, 0.0)
        if ONE_ROW:
            acc += d * (q_lo * x_lo + q_hi16 * (x_hi * 0.0625))
            if M_B >= 0:
                acc += m * (x_lo + x_hi)
        else:
            w_lo = q_lo * d
            w_hi = q_hi16 * (d * 0.0625)
            if M_B >= 0:
                w_lo += m
                w_hi += m
            acc += w_lo * x_lo  # two statements: two FMAs into acc, not FMUL+FFMA+FADD
            acc += w_hi * x_hi
    return acc


# ------------------------------------------------------------------------------------------
# Dequantize: raw blocks -> float tensor
# ------------------------------------------------------------------------------------------


@triton.jit
def _dequantize_kernel(
    w8, w16,  # the raw bytes, as uint8 and as an int16 view of the same memory
    y_ptr,  # output, n_blocks*32 elements (float32/float16/bfloat16)
    n_blocks, magic,
    TS: tl.constexpr, M_B: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr,
    BITS: tl.constexpr, ZERO: tl.constexpr,
    NBLK: tl.constexpr,  # blocks per program (power of 2)
    PNB: tl.constexpr = 0,  # > 0: planes rows of PNB blocks (quants/planes.py) instead of ggml blocks
):
    blk = (tl.program_id(0).to(tl.int64) * NBLK + tl.arange(0, NBLK))[:, None]  # [NBLK, 1]
    ok = blk < n_blocks
    if PNB == 0:
        d_off, m_off, qh_off, qs_off = _field_offsets(0, blk, TS, M_B, QH_B, QS_B, BITS, PNB)
    else:
        d_off, m_off, qh_off, qs_off = _field_offsets(blk // PNB * (PNB * TS), blk % PNB, TS, M_B, QH_B, QS_B,
                                                      BITS, PNB)
    d = _f16_at(w16, d_off, ok, False)
    dt = y_ptr.dtype.element_ty
    out = y_ptr + blk * _QK
    if BITS == 8:
        jj = tl.arange(0, 32)[None, :]
        q = _decode_int8(_ld(w8 + qs_off + jj, ok, False).to(tl.int32), magic)
        tl.store(out + jj, (q * d).to(dt), mask=ok)
    else:
        jj = tl.arange(0, 16)[None, :]
        w_lo, w_hi = _dequant_nibbles(w8, w16, m_off, qh_off, qs_off, ok, jj, d, magic, M_B, BITS, ZERO)
        tl.store(out + jj, w_lo.to(dt), mask=ok)
        tl.store(out + 16 + jj, w_hi.to(dt), mask=ok)


@triton.jit
def _f16_to_kernel(w_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """F16 bytes (int16 view) -> float32/float16/bfloat16: one exact widening, then one rounding."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    v = tl.load(w_ptr + offs, mask=ok).to(tl.float16, bitcast=True).to(tl.float32)
    tl.store(y_ptr + offs, v.to(y_ptr.dtype.element_ty), mask=ok)


_DEQUANT_NBLK = 64  # blocks per program: 2048 outputs, 16 per thread at 4 warps
_F16_BLOCK = 4096


def _as_type(ggml_type) -> GGMLType:
    return GGMLType(int(ggml_type))


def _checked_bytes(raw: torch.Tensor, ggml_type: GGMLType, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Check raw (uint8, exactly the tensor's bytes) -> (uint8 view, int16 view) of it, 1-D."""
    if raw.dtype != torch.uint8:
        raise ValueError(f"raw {ggml_type.name} weights must be a uint8 tensor, got {raw.dtype}")
    expected = tensor_nbytes(ggml_type, tuple(shape))
    if raw.numel() != expected:
        raise ValueError(f"{ggml_type.name} tensor of shape {tuple(shape)} needs {expected} bytes, got {raw.numel()}")
    raw = raw.reshape(-1)
    if not raw.is_contiguous() or raw.storage_offset() % 2:
        raw = raw.clone()  # an odd byte offset into a larger buffer: copy to an aligned one
    return raw, raw.view(torch.int16)


def dequantize_into(raw: torch.Tensor, ggml_type: GGMLType, shape: Sequence[int], out: torch.Tensor,
                    planes: bool = False) -> torch.Tensor:
    """Dequantize raw bytes into `out` (contiguous, >= prod(shape) elements; its dtype is kept).

    Returns out's first prod(shape) elements viewed as `shape`. Bit-exact with quants.ref in
    float32; float16/bfloat16 outputs are those float32 values rounded once to nearest even.
    planes: raw holds planes rows of shape[-1] weights (quants/planes.py), not ggml blocks.
    """
    ggml_type = _as_type(ggml_type)
    shape = tuple(int(s) for s in shape)
    n = 1
    for s in shape:
        n *= s
    if not out.is_contiguous() or out.numel() < n:
        raise ValueError(f"out must be contiguous with at least {n} elements, got {tuple(out.shape)}")
    y = out.reshape(-1)[:n]
    w8, w16 = _checked_bytes(raw, ggml_type, shape)
    if n == 0:
        return y.view(shape)
    if ggml_type == GGMLType.F32:
        src = w8 if w8.storage_offset() % 4 == 0 else w8.clone()
        y.copy_(src.view(torch.float32))
    elif ggml_type == GGMLType.F16:
        _f16_to_kernel[(triton.cdiv(n, _F16_BLOCK),)](w16, y, n, BLOCK=_F16_BLOCK)
    else:
        n_blocks = n // QK
        ts, m_b, qh_b, qs_b, bits, zero = _LAYOUT[ggml_type]
        _dequantize_kernel[(triton.cdiv(n_blocks, _DEQUANT_NBLK),)](
            w8, w16, y, n_blocks, _MAGIC_BITS,
            TS=ts, M_B=m_b, QH_B=qh_b, QS_B=qs_b, BITS=bits, ZERO=zero, NBLK=_DEQUANT_NBLK,
            PNB=_planes_blocks(planes, ggml_type, shape))
    return y.view(shape)


def dequantize(raw: torch.Tensor, ggml_type: GGMLType, shape: Sequence[int], dtype: torch.dtype = torch.float32,
               planes: bool = False) -> torch.Tensor:
    """Raw bytes (uint8, on the GPU) of one tensor -> a new tensor of `shape` and `dtype`.

    float32 output equals quants.ref.dequantize bit for bit (NaN bit patterns aside: a NaN scale
    gives a NaN weight in both, payloads may differ). planes: as dequantize_into.
    """
    out = torch.empty(tuple(int(s) for s in shape), dtype=dtype, device=raw.device)
    return dequantize_into(raw, ggml_type, shape, out, planes)


def _planes_blocks(planes: bool, ggml_type: GGMLType, shape: Sequence[int]) -> int:
    """The kernels' PNB: 0 for ggml blocks, else the blocks of a planes row (K / 32)."""
    if not planes:
        return 0
    if ggml_type not in _LAYOUT or int(shape[-1]) % QK:
        raise ValueError(f"planes hold block types with K a multiple of {QK}, got {ggml_type.name} {tuple(shape)}")
    return int(shape[-1]) // QK


# ------------------------------------------------------------------------------------------
# Fused dequant-GEMV for few rows: y = x @ W.T (+ bias), W read as raw blocks
# ------------------------------------------------------------------------------------------


@triton.jit
def _qgemv_kernel(
    x_ptr,  # (M, K) activations, last axis contiguous, fp32/fp16/bf16
    w8, w16,  # raw (N, K) blocks as uint8 and as an int16 view of the same memory
    bias_ptr,  # (N,), or any pointer when HAS_BIAS is False
    y_ptr,  # (M, N) output, contiguous, dtype of x
    M, N, K, stride_xm, magic,
    TS: tl.constexpr, M_B: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr,
    BITS: tl.constexpr, ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr,  # >= M, power of 2: all rows of x in one pass over W
    BLOCK_N: tl.constexpr,  # rows of W per program; each x value loaded is used BLOCK_N times
    NB: tl.constexpr,  # 32-weight blocks per row per loop step
    EVEN_K: tl.constexpr,  # (K/32) % NB == 0: every step is full
    HAS_BIAS: tl.constexpr,
    PF_LINES: tl.constexpr,  # > 0: prefetch the program's BLOCK_N rows of W into L2 first
    PNB: tl.constexpr = 0,  # > 0: W is planes rows of PNB blocks (quants/planes.py)
):
    # Tiles are 4-D [NB, BLOCK_M, BLOCK_N, QB] (QB = bytes of qs read per block: 16, or 32 for
    # Q8_0): the compiler spreads lanes over (qs byte, block) and keeps rows in registers, and W
    # tiles [NB, 1, BN, QB] and x tiles [NB, BM, 1, QB] then share one layout (no shuffles).
    QB: tl.constexpr = 32 if BITS == 8 else 16
    n_blk = K // _QK
    pid = tl.program_id(0)
    if PF_LINES > 0:
        n0 = pid * BLOCK_N
        _prefetch_l2(w8 + n0.to(tl.int64) * (n_blk * TS), (tl.minimum(N - n0, BLOCK_N) * (n_blk * TS)).to(tl.int64),
                     PF_LINES)
    bb = tl.arange(0, NB)[:, None, None, None]
    mm = tl.arange(0, BLOCK_M)[None, :, None, None]
    nn = pid * BLOCK_N + tl.arange(0, BLOCK_N)[None, None, :, None]
    jj = tl.arange(0, QB)[None, None, None, :]
    # Rows past N, x rows past M and blocks past K/32 are clamped rather than masked, so no load
    # is predicated: the store drops the extra rows and a zeroed d drops the repeated blocks.
    w_row = tl.minimum(nn, N - 1).to(tl.int64) * (n_blk * TS)  # [1, 1, BN, 1] byte offsets
    x_row = x_ptr + tl.minimum(mm, M - 1).to(tl.int64) * stride_xm + jj  # [1, BM, 1, QB]
    acc = tl.zeros([NB, BLOCK_M, BLOCK_N, QB], dtype=tl.float32)
    for b0 in range(0, n_blk, NB):
        blk = b0 + bb  # [NB, 1, 1, 1]
        if not EVEN_K:
            blk = tl.minimum(blk, n_blk - 1)
        base = w_row + blk * TS if PNB == 0 else w_row  # [NB, 1, BN, 1] byte offsets of the blocks (planes: rows)
        live = b0 + bb < n_blk
        d, qs, qh = _load_blocks(w8, w16, base, live, jj, QH_B, QS_B, BITS, EVEN_K, blk, PNB)
        xp = x_row + blk * _QK  # [NB, BM, 1, QB]
        x_lo = tl.load(xp).to(tl.float32)  # x[32b + j] (Q8_0: all 32)
        x_hi = x_lo
        if BITS != 8:
            x_hi = tl.load(xp + 16).to(tl.float32)  # x[32b + 16 + j]
        acc = _block_fma(acc, d, qs, qh, x_lo, x_hi, w16, base, live, jj, magic, M_B, BITS, ZERO, EVEN_K, BLOCK_M == 1,
                         False, blk, PNB)
    y = tl.sum(tl.sum(acc, axis=3), axis=0)  # [BM, BN]
    n1 = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    m1 = tl.arange(0, BLOCK_M)
    if HAS_BIAS:
        y += tl.load(bias_ptr + n1, mask=n1 < N, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + (m1.to(tl.int64) * N)[:, None] + n1[None, :]
    tl.store(out, y.to(y_ptr.dtype.element_ty), mask=(m1 < M)[:, None] & (n1 < N)[None, :])


QMATMUL_MAX_M = 16  # rows of x the fused GEMV takes in one pass (decoder steps, beams)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _gemv_config(m: int, n: int, k: int, ggml_type: GGMLType) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, NB, num_warps) for the fused GEMV, from the H100 tile sweep
    (benchmarks/README.md, docs/kernels.md); within ~10% of the best swept tile at every shape.

    BLOCK_M = M rounded up to a power of 2 (one pass over W serves every row of x).
    NB, num_warps: 16 blocks per step on 4 warps; 8 on 2 warps for the vocabulary-sized N
      (>= 16384), where many small programs did better. Lanes spread over (qs byte, block), so
      NB also caps the warps. K/32 need not be a multiple of NB (the last step is clamped).
    BLOCK_N: the largest of 16, 8, ..., 1 that still gives >= 640 programs (about 5 per SM of a
      132-SM H100/H200) and keeps the accumulators (NB*BLOCK_M*BLOCK_N*QB fp32) <= 64 a thread.
    """
    qb = 32 if ggml_type == GGMLType.Q8_0 else 16
    block_m = _next_pow2(m)
    nb, num_warps = (8, 2) if n >= 16384 else (16, 4)
    while nb > 4 and block_m * nb * qb > 64 * 32 * num_warps:  # many x rows: shorter steps
        nb //= 2
    block_n = 16
    while block_n > 1 and (triton.cdiv(n, block_n) < 640 or nb * block_m * block_n * qb > 64 * 32 * num_warps):
        block_n //= 2
    return block_m, block_n, nb, num_warps


def qmatmul(x: torch.Tensor, raw: torch.Tensor, ggml_type: GGMLType, shape: Sequence[int],
            bias: torch.Tensor | None = None, config: tuple | None = None, planes: bool = False) -> torch.Tensor:
    """Fused dequant-GEMV: x (M, K) @ W.T (+ bias) -> (M, N) in x's dtype, for 1 <= M <= 16.

    raw: the (N, K) weight's ggml blocks (uint8, on x's device; planes: planes rows), read once;
    fp32 accumulation. config: (BLOCK_M, BLOCK_N, NB, num_warps[, L2 prefetch]) overriding
    _gemv_config (benchmarks, tests).
    """
    ggml_type = _as_type(ggml_type)
    if ggml_type not in _LAYOUT:
        raise ValueError(f"qmatmul reads block types {[t.name for t in _LAYOUT]}, got {ggml_type.name}; use linear()")
    n, k = (int(s) for s in shape)
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be (M, {k}) for a weight of shape ({n}, {k}), got {tuple(x.shape)}")
    m = x.shape[0]
    if not 1 <= m <= QMATMUL_MAX_M:
        raise ValueError(f"qmatmul takes 1..{QMATMUL_MAX_M} rows, got {m}; use linear()")
    if x.stride(1) != 1:
        x = x.contiguous()
    w8, w16 = _checked_bytes(raw, ggml_type, (n, k))
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must be ({n},), got {tuple(bias.shape)}")
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m, block_n, nb, num_warps, *pf = config or _gemv_config(m, n, k, ggml_type)
    ts, m_b, qh_b, qs_b, bits, zero = _LAYOUT[ggml_type]
    pf_lines = prefetch_lines(block_n * (k // QK) * ts) if (pf[0] if pf else True) else 0
    _qgemv_kernel[(triton.cdiv(n, block_n),)](
        x, w8, w16, bias if bias is not None else y, y, m, n, k, x.stride(0), _MAGIC_BITS,
        TS=ts, M_B=m_b, QH_B=qh_b, QS_B=qs_b, BITS=bits, ZERO=zero,
        BLOCK_M=block_m, BLOCK_N=block_n, NB=nb, EVEN_K=(k // QK) % nb == 0,
        HAS_BIAS=bias is not None, PF_LINES=pf_lines, PNB=_planes_blocks(planes, ggml_type, shape), num_warps=num_warps)
    return y


# ------------------------------------------------------------------------------------------
# Few rows of a wide weight: dequant-GEMM on tensor cores
#
# Written as candidate (a) for many rows (encoder, 1500 rows) against (b) dequantize + cuBLAS
# below; (b) won at every shape (2-4x, docs/kernels.md), so the 128x128-tile configuration is
# gone. What stays is its few-row use: with BLOCK_M = 16 it reads W once for up to 16 rows and
# beats both the GEMV and (b) for 2..16 rows of the vocabulary projection.
# ------------------------------------------------------------------------------------------


@triton.jit
def _dequant_tile(w8, w16, w_row, blk, ok, magic, dt: tl.constexpr, TS: tl.constexpr, M_B: tl.constexpr,
                  QH_B: tl.constexpr, QS_B: tl.constexpr, BITS: tl.constexpr, ZERO: tl.constexpr,
                  BLOCK_N: tl.constexpr, NB: tl.constexpr, EVEN: tl.constexpr, PNB: tl.constexpr):
    """Blocks blk [1, NB, 1] of the rows at byte offsets w_row [BLOCK_N, 1, 1] (ggml blocks, or
    planes rows of PNB blocks) dequantized to dt as dequantize would round them: a tensor-core K
    step's A operand [BLOCK_N, 32*NB], weights in K order. Loads masked by ok (other=0) unless
    EVEN (the caller proved them in bounds; the nibbles' loads are masked anyway)."""
    d_off, m_off, qh_off, qs_off = _field_offsets(w_row, blk, TS, M_B, QH_B, QS_B, BITS, PNB)
    d = _f16_at(w16, d_off, ok, EVEN)
    if BITS == 8:
        jj = tl.arange(0, 32)[None, None, :]
        q = _decode_int8(_ld(w8 + qs_off + jj, ok, EVEN).to(tl.int32), magic)
        return tl.reshape((q * d).to(dt), (BLOCK_N, NB * _QK))
    else:
        jj = tl.arange(0, 16)[None, None, :]
        w_lo, w_hi = _dequant_nibbles(w8, w16, m_off, qh_off, qs_off, ok, jj, d, magic, M_B, BITS, ZERO)
        # [BN, NB, 16, 2(half)] -> [BN, NB, 2, 16] -> [BN, 32*NB]: weights in K order
        return tl.reshape(tl.permute(tl.join(w_lo.to(dt), w_hi.to(dt)), (0, 1, 3, 2)), (BLOCK_N, NB * _QK))


@triton.jit
def _qgemm_kernel(
    x_ptr, w8, w16, bias_ptr, y_ptr, M, N, K, stride_xm, magic,
    TS: tl.constexpr, M_B: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr,
    BITS: tl.constexpr, ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows of x per program (the MMA's N side: W is the A operand)
    BLOCK_N: tl.constexpr,  # rows of W per program (the MMA's M side)
    NB: tl.constexpr,  # 32-weight blocks per K step: BLOCK_K = 32*NB
    GROUP_N: tl.constexpr,  # programs along N that run together and share x tiles in L2
    HAS_BIAS: tl.constexpr,
    PNB: tl.constexpr = 0,  # > 0: W is planes rows of PNB blocks (quants/planes.py)
):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_N * grid_m
    first_n = (pid // width) * GROUP_N
    size_n = min(grid_n - first_n, GROUP_N)
    pid_n = first_n + (pid % width) % size_n
    pid_m = (pid % width) // size_n
    n_blk = K // _QK
    nn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    w_row = (tl.minimum(nn, N - 1).to(tl.int64) * (n_blk * TS))[:, None, None]  # [BN, 1, 1]
    xm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    x_col = x_ptr + (tl.minimum(xm, M - 1).to(tl.int64) * stride_xm)[None, :]  # [1, BM]
    bb = tl.arange(0, NB)[None, :, None]
    kk = tl.arange(0, NB * _QK)[:, None]
    dt = x_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for b0 in range(0, n_blk, NB):
        blk = b0 + bb
        ok = blk < n_blk
        a = _dequant_tile(w8, w16, w_row, blk, ok, magic, dt, TS, M_B, QH_B, QS_B, BITS, ZERO, BLOCK_N, NB, False, PNB)
        k_idx = kk + b0 * _QK
        xt = tl.load(x_col + k_idx, mask=k_idx < K, other=0.0)  # [BK, BM]
        acc = tl.dot(a, xt, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + nn, mask=nn < N, other=0.0).to(tl.float32)[:, None]
    out = y_ptr + (xm.to(tl.int64) * N)[None, :] + nn[:, None]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(nn < N)[:, None] & (xm < M)[None, :])


TC_CONFIG = (16, 64, 2, 8, 4, 4)  # BLOCK_M 16 (wgmma n16), BLOCK_N 64 (one warpgroup's m64), BLOCK_K 64, 4 stages
# On planes (K a multiple of 256) steps of 8 blocks: a row's qs, qh and d of a step are then whole
# 32-byte sectors. Vocabulary at 5 rows, H100 (performance.md 21.2): 83.1 us at NB 2, 72.7 at 4,
# 63.6 at 8, against 61.8-62.7 on ggml blocks at NB 2.
TC_CONFIG_PLANES = (16, 64, 8, 8, 4, 4)


def qgemm_fused(x: torch.Tensor, raw: torch.Tensor, ggml_type: GGMLType, shape: Sequence[int],
                bias: torch.Tensor | None = None, config: tuple[int, int, int, int, int, int] | None = None,
                planes: bool = False) -> torch.Tensor:
    """Fused dequant-GEMM on tensor cores: x (M, K) fp16/bf16 @ W.T (+ bias) -> (M, N).

    W is dequantized tile by tile in registers (to x's dtype, as dequantize would round it) and
    fed to tl.dot as the A operand; fp32 accumulation. Meant for M <= 16 (TC_CONFIG).
    config: (BLOCK_M, BLOCK_N, NB, GROUP_N, num_warps, num_stages). planes: raw is planes rows.
    """
    ggml_type = _as_type(ggml_type)
    n, k = (int(s) for s in shape)
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the tensor-core GEMM takes float16/bfloat16 x, got {x.dtype}")
    if x.stride(1) != 1:
        x = x.contiguous()
    m = x.shape[0]
    w8, w16 = _checked_bytes(raw, ggml_type, (n, k))
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m, block_n, nb, group_n, num_warps, num_stages = config or (TC_CONFIG_PLANES if planes else TC_CONFIG)
    ts, m_b, qh_b, qs_b, bits, zero = _LAYOUT[ggml_type]
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _qgemm_kernel[grid](
        x, w8, w16, bias if bias is not None else y, y, m, n, k, x.stride(0), _MAGIC_BITS,
        TS=ts, M_B=m_b, QH_B=qh_b, QS_B=qs_b, BITS=bits, ZERO=zero,
        BLOCK_M=block_m, BLOCK_N=block_n, NB=nb, GROUP_N=group_n, HAS_BIAS=bias is not None,
        PNB=_planes_blocks(planes, ggml_type, shape), num_warps=num_warps, num_stages=num_stages)
    return y


# ------------------------------------------------------------------------------------------
# 9..32 rows (a batched step of windows): split-K GEMM on tensor cores, float32 partial sums
#
# At 25 rows a layer's weights are read once per step and nothing else is: the GEMM is a
# latency-bound weight stream. Dequantize + cuBLAS puts a kernel and a float16 copy of W in its
# way; cuBLAS alone (float16 weights) gets ~40 % of copy bandwidth on these narrow shapes because
# N / tile leaves most SMs idle. Here the K axis is split too (SPLITK_PROGRAMS programs), each
# program dequantizes its slice in registers and writes a float32 partial tile, and whoever
# consumes the product sums the SPLIT partials in a fixed order (Partials: the residual add +
# LayerNorm, the GELU, or partials_sum) -- no combine kernel, no atomics, deterministic.
# With programmatic dependent launch the first step's weights are loaded before the wait for x.
# Measured (performance.md section 9): alone, 25 rows, large-v3 shapes, 32 layers of cold weights
# in a CUDA graph, H100, us a GEMM: Q5_0 qkv 6.9 / out 4.1 / fc1 8.1 / fc2 9.7 against dequantize
# + cuBLAS 10.1 / 7.4 / 11.8 / 15.0. In the batched large-v3 q5_0 run (batch 32) on an H100:
# RTFx 822-832 -> 945-947 (same device call); without PDL ~860. Float16 weights (cuBLAS 7.0 / 5.4
# / 8.1 / 10.8 alone, the split-K kernel 6.1 / 3.9 / 7.2 / 7.2) lost in the run: 944-953 -> 903-930
# with cache_decoder_weights, so they stay with cuBLAS.
# ------------------------------------------------------------------------------------------

SPLITK_MAX_M = 32
# At most this many programs (tiles x splits) and partial sums for the consumer to add. Swept in
# the batched run on an H200, batch 32 RTFx: splits <= 10: 1078-1084; <= 20: 1019-1032; <= 5:
# 959-961; <= 20 with 400 programs: 1032-1036; <= 40 with 1600: 985-1000.
SPLITK_PROGRAMS = 800
SPLITK_MAX_SPLIT = 10
SPLITK_STAGES = 3  # Triton's software pipelining of the K loop (a module switch for experiments)
SPLITK_BLOCK_N, SPLITK_WARPS = 64, 4  # rows of W a program and its warps (H100 sweep, session 8)


@triton.jit
def _splitk_tile(w8, w16, nc, b0, K, magic, dt: tl.constexpr,
                 TS: tl.constexpr, M_B: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr, BITS: tl.constexpr,
                 ZERO: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr, PNB: tl.constexpr):
    """Rows nc of W, blocks b0 .. b0 + NB (in bounds: rows clamped, splits of whole steps): one
    K step's A operand [BLOCK_N, 32*NB] (_dequant_tile)."""
    w_row = (nc * (K // _QK * TS))[:, None, None]  # [BN, 1, 1]
    blk = (b0 + tl.arange(0, NB))[None, :, None]  # [1, NB, 1]
    return _dequant_tile(w8, w16, w_row, blk, blk >= 0, magic, dt, TS, M_B, QH_B, QS_B, BITS, ZERO, BLOCK_N, NB,
                         True, PNB)


@triton.jit
def _splitk_kernel(
    x_ptr, w8, w16, part_ptr, M, N, K, stride_xm, magic,
    TS: tl.constexpr, M_B: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr,
    BITS: tl.constexpr, ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    NB: tl.constexpr,  # 32-weight blocks per K step
    NBS: tl.constexpr,  # blocks per split (a multiple of NB)
    PDL: tl.constexpr,
    PNB: tl.constexpr = 0,  # > 0: W is planes rows of PNB blocks (quants/planes.py)
):
    """part[split, m, n] = sum over this split's K slice of x[m, k] * W[n, k], float32 (rows of x
    past M repeat row M - 1; the caller reads rows < M). W is dequantized to x's dtype, as
    dequantize would round it, and fed to tl.dot as the A operand. PDL (programmatic dependent
    launch, sm_90+): the first step's weights, written by nobody, are loaded before waiting for
    the kernel that wrote x, so their round trip overlaps it."""
    pid_n = tl.program_id(0)
    ks = tl.program_id(1)
    if PDL:
        gdc_launch_dependents()
    nn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nc = tl.minimum(nn, N - 1).to(tl.int64)  # clamped rows: loads in bounds, stores masked
    xm = tl.arange(0, BLOCK_M)
    x_col = x_ptr + (tl.minimum(xm, M - 1).to(tl.int64) * stride_xm)[None, :]  # [1, BM]
    kk = tl.arange(0, NB * _QK)
    dt = x_ptr.dtype.element_ty
    first = ks * NBS
    a = _splitk_tile(w8, w16, nc, first, K, magic, dt, TS, M_B, QH_B, QS_B, BITS, ZERO, BLOCK_N, NB, PNB)
    if PDL:
        gdc_wait()  # x is the previous kernel's
    acc = tl.dot(a, tl.load(x_col + kk[:, None] + first * _QK), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32))
    for b0 in tl.range(first + NB, first + NBS, NB):  # the other steps (none where NBS == NB)
        a = _splitk_tile(w8, w16, nc, b0, K, magic, dt, TS, M_B, QH_B, QS_B, BITS, ZERO, BLOCK_N, NB, PNB)
        acc = tl.dot(a, tl.load(x_col + kk[:, None] + b0 * _QK), acc)  # x tile [BK, BM]
    out = part_ptr + (ks * BLOCK_M + xm[None, :]).to(tl.int64) * N + nn[:, None]
    tl.store(out, acc, mask=(nn < N)[:, None])


# Programmatic dependent launch for the batched step's kernels (split-K GEMM, partial sums, add
# + LayerNorm): None = on where the device supports it (sm_90+); a module switch for benchmarks.
SPLITK_PDL: bool | None = None
_pdl_capable: dict = {}


def pdl_supported(device: torch.device) -> bool:
    """Programmatic dependent launch possible here: a CUDA device of compute capability >= 9, a
    Triton with gdc_wait, not the interpreter."""
    if INTERPRETED or device.type != "cuda" or gdc_wait is None:
        return False
    on = _pdl_capable.get(device.index)
    if on is None:
        on = _pdl_capable[device.index] = torch.cuda.get_device_capability(device)[0] >= 9
    return on


def _splitk_pdl(device: torch.device) -> dict:
    """launch_pdl for the batched step's kernels, and the PDL constexpr they take."""
    on = SPLITK_PDL is not False and pdl_supported(device)
    return {"PDL": on, "launch_pdl": True} if on else {"PDL": False}


def _splitk_config(n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, NB, SPLIT, num_warps): the most K splits (a divisor of K/32 leaving an even number
    of blocks a split, at most SPLITK_MAX_SPLIT) that keep tiles x splits <= SPLITK_PROGRAMS;
    SPLITK_BLOCK_N rows of W a program on SPLITK_WARPS warps."""
    block_n, warps = SPLITK_BLOCK_N, SPLITK_WARPS
    n_blk, tiles = k // QK, triton.cdiv(n, block_n)
    split = 1
    for s in range(2, SPLITK_MAX_SPLIT + 1):
        if n_blk % s == 0 and (n_blk // s) % 2 == 0 and tiles * s <= SPLITK_PROGRAMS:
            split = s
    per = n_blk // split
    nb = 4 if per % 4 == 0 else 2 if per % 2 == 0 else 1
    return block_n, nb, split, warps


class Partials:
    """x @ W.T as SPLIT float32 partial sums (split, BLOCK_M, N) of which rows < rows are real,
    plus the bias still to add, for a consumer that sums them in split order (the residual add +
    LayerNorm, the GELU) or `tensor()`: round(sum + bias) to `dtype`, the GEMM's own output."""

    __slots__ = ("bias", "dtype", "parts", "shape")

    def __init__(self, parts: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, shape: tuple[int, ...]):
        self.parts, self.bias, self.dtype, self.shape = parts, bias, dtype, shape

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1])

    def tensor(self) -> torch.Tensor:
        return self._summed(gelu=False)

    def gelu(self) -> torch.Tensor:
        """GELU(round(sum + bias)) (exact erf form, float32 inside), rounded to dtype: the MLP's."""
        return self._summed(gelu=True)

    def _summed(self, gelu: bool) -> torch.Tensor:
        n = self.shape[-1]
        y = torch.empty((self.rows, n), dtype=self.dtype, device=self.parts.device)
        _partials_kernel[(self.rows, triton.cdiv(n, _PART_BLOCK))](
            self.parts, y if self.bias is None else self.bias, y, n, SPLIT=self.parts.shape[0],
            BLOCK_M=self.parts.shape[1], HAS_BIAS=self.bias is not None, GELU=gelu, BLOCK=_PART_BLOCK,
            **_splitk_pdl(y.device))
        return y.view(self.shape)


_PART_BLOCK = 1024


@triton.jit
def _partials_at(part_ptr, bias_ptr, m, kk, ok, N, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr,
                 HAS_BIAS: tl.constexpr, dt: tl.constexpr):
    """Row m of a Partials at columns kk: the split sums in split order, + bias, rounded to dt
    (as the GEMM's output would be), returned as float32."""
    y = tl.load(part_ptr + m.to(tl.int64) * N + kk, mask=ok, other=0.0)
    for s in tl.static_range(1, SPLIT):
        y += tl.load(part_ptr + (s * BLOCK_M + m).to(tl.int64) * N + kk, mask=ok, other=0.0)
    if HAS_BIAS:
        y += tl.load(bias_ptr + kk, mask=ok, other=0.0).to(tl.float32)
    return y.to(dt).to(tl.float32)


@triton.jit
def _partials_kernel(part_ptr, bias_ptr, y_ptr, N, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr,
                     HAS_BIAS: tl.constexpr, GELU: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        gdc_launch_dependents()
        gdc_wait()  # the partials are the GEMM's
    m = tl.program_id(0)
    kk = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = kk < N
    dt = y_ptr.dtype.element_ty
    y = _partials_at(part_ptr, bias_ptr, m, kk, ok, N, SPLIT, BLOCK_M, HAS_BIAS, dt)
    if GELU:  # torch's exact GELU: x/2 * (1 + erf(x/sqrt(2))) in float32
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    tl.store(y_ptr + m.to(tl.int64) * N + kk, y.to(dt), mask=ok)


def splitk_linear(x: torch.Tensor, raw: torch.Tensor, ggml_type: GGMLType, shape: Sequence[int],
                  bias: torch.Tensor | None = None, planes: bool = False) -> Partials:
    """x (..., K) float16/bfloat16 with 1..SPLITK_MAX_M rows @ W.T (+ bias) as Partials, for the
    raw ggml blocks of a block type (planes: planes rows). (Float16 weights, an F16 file's or
    cache_decoder_weights' copies, stay with cuBLAS: this kernel on them measured slower in the
    batched run.)"""
    ggml_type = _as_type(ggml_type)
    n, k = (int(s) for s in shape)
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the split-K GEMM takes float16/bfloat16 x, got {x.dtype}")
    lead = tuple(x.shape[:-1])
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if not 1 <= m <= SPLITK_MAX_M or k % QK:
        raise ValueError(f"the split-K GEMM takes 1..{SPLITK_MAX_M} rows and K a multiple of {QK}, got {m} x {k}")
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    if ggml_type not in _LAYOUT:
        raise ValueError(f"splitk_linear reads block types {[t.name for t in _LAYOUT]}, got {ggml_type.name}")
    w8, w16 = _checked_bytes(raw, ggml_type, (n, k))
    ts, m_b, qh_b, qs_b, bits, zero = _LAYOUT[ggml_type]
    block_m = max(16, _next_pow2(m))
    block_n, nb, split, warps = _splitk_config(n, k)
    parts = torch.empty((split, block_m, n), dtype=torch.float32, device=x.device)
    _splitk_kernel[(triton.cdiv(n, block_n), split)](
        x2, w8, w16, parts, m, n, k, x2.stride(0), _MAGIC_BITS,
        TS=ts, M_B=m_b, QH_B=qh_b, QS_B=qs_b, BITS=bits, ZERO=zero,
        BLOCK_M=block_m, BLOCK_N=block_n, NB=nb, NBS=k // QK // split, num_warps=warps, num_stages=SPLITK_STAGES,
        PNB=_planes_blocks(planes, ggml_type, shape), **_splitk_pdl(x.device))
    return Partials(parts, bias, x.dtype, lead + (n,))


# ------------------------------------------------------------------------------------------
# Many rows: dequantize into a reusable buffer + cuBLAS (candidate (b))
# ------------------------------------------------------------------------------------------

_scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _scratch_buffer(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer of >= n elements, one per (device, dtype), grown on demand and reused by every layer.

    Safe while all work runs on one stream (each matmul reads it before the next dequantize
    overwrites it, in stream order).
    """
    key = (device, dtype)
    buf = _scratch.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=dtype, device=device)
        _scratch[key] = buf
    return buf


def scratch_buffers() -> list[torch.Tensor]:
    """The scratch buffers as they are now. A CUDA graph that dequantizes into them holds their
    addresses: it keeps this list so that a later growth (a new, larger buffer) leaves them alive."""
    return list(_scratch.values())


def dequant_matmul(x: torch.Tensor, raw: torch.Tensor, ggml_type: GGMLType, shape: Sequence[int],
                   bias: torch.Tensor | None = None, planes: bool = False) -> torch.Tensor:
    """x (M, K) @ W.T (+ bias): dequantize W into the scratch buffer in x's dtype, then F.linear.

    An N that is not a multiple of 8 (the multilingual vocabulary, 51865) is padded in the
    buffer (the extra rows' outputs are dropped): the result is then a column slice of a wider
    matrix, a view with row stride N_pad.
    """
    n, k = (int(s) for s in shape)
    n_pad = -(-n // torch_ops.CUBLAS_N_ALIGN) * torch_ops.CUBLAS_N_ALIGN
    buf = _scratch_buffer(n_pad * k, x.dtype, x.device)
    dequantize_into(raw, ggml_type, (n, k), buf, planes)
    b = None if bias is None else bias.to(x.dtype)
    if n_pad == n:
        return torch.nn.functional.linear(x, buf[: n * k].view(n, k), b)
    y = torch.nn.functional.linear(x, buf[: n_pad * k].view(n_pad, k))[:, :n]
    return y if b is None else y + b


# ------------------------------------------------------------------------------------------
# Dispatcher
# ------------------------------------------------------------------------------------------


def _dense_view(raw: torch.Tensor, ggml_type: GGMLType, shape: tuple[int, int]) -> torch.Tensor:
    """F16/F32 raw bytes -> a zero-copy (N, K) tensor view (copied only if misaligned)."""
    dtype, size = (torch.float16, 2) if ggml_type == GGMLType.F16 else (torch.float32, 4)
    nbytes = shape[0] * shape[1] * size
    if raw.dtype != torch.uint8 or raw.numel() != nbytes:
        raise ValueError(f"{ggml_type.name} tensor of shape {shape} needs {nbytes} uint8 bytes, got {raw.numel()} {raw.dtype}")
    raw = raw.reshape(-1)
    if raw.storage_offset() % size:
        raw = raw.clone()
    return raw.view(dtype).view(shape)


# Crossovers measured on an H100 (docs/kernels.md, benchmarks/README.md):
TC_MIN_N = 16384  # 2..16 rows and N >= this (the vocabulary): the tensor-core kernel wins
GEMV_MAX_WEIGHTS_9_16 = 1 << 20  # 9..16 rows: the GEMV up to this many weights, cuBLAS above


def pick(rows: int, n: int, k: int, x_dtype: torch.dtype) -> str:
    """Which way linear() takes for a block-quantized weight: 'gemv', 'tc', 'splitk' or
    'dequant+cublas'."""
    half = x_dtype in (torch.float16, torch.bfloat16)
    if 1 <= rows <= QMATMUL_MAX_M:
        if rows >= 2 and n >= TC_MIN_N and half:
            return "tc"
        if rows <= 8 or n * k <= GEMV_MAX_WEIGHTS_9_16:
            return "gemv"
    if 1 <= rows <= SPLITK_MAX_M and half:
        return "splitk"
    return "dequant+cublas"


def linear(x: torch.Tensor, raw: torch.Tensor, ggml_type: GGMLType, shape: Sequence[int],
           bias: torch.Tensor | None = None, planes: bool = False) -> torch.Tensor:
    """y = x @ W.T + bias for a raw ggml weight W of `shape` (N, K); x (..., K) on the GPU.

    Few rows (decoder steps, beams) read the raw blocks once: the fused GEMV, or for 2..16 rows
    of a wide weight (the vocabulary projection) the few-row tensor-core kernel; up to
    SPLITK_MAX_M rows (a batched step) the split-K tensor-core GEMM (splitk_linear). More rows
    (encoder, prompts, batches) dequantize W into a reusable buffer and use cuBLAS. F16/F32
    weights are used in place through cuBLAS (torch_ops.dense_linear: an N that is not a
    multiple of 8 is split, where dequant_matmul pads). pick() holds the measured crossovers.
    planes (quants/planes.py, a QLinear's to_planes): one row goes to the Gluon GEMV on planes
    (quants/gluon_gemv.py), the other ways read planes themselves.
    """
    ggml_type = _as_type(ggml_type)
    n, k = (int(s) for s in shape)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if ggml_type in (GGMLType.F16, GGMLType.F32):
        w = _dense_view(raw, ggml_type, (n, k))
        y = torch_ops.dense_linear(x2, w.to(x.dtype), None if bias is None else bias.to(x.dtype))
        return y.reshape(*lead, n)
    way = pick(x2.shape[0], n, k, x2.dtype)
    if way == "gemv" and planes and x2.shape[0] == 1:
        from . import gluon_gemv

        y = gluon_gemv.gemv(x2[0], raw, ggml_type, n, k, bias, out=torch.empty((1, n), dtype=x2.dtype,
                                                                                device=x2.device))
    elif way == "gemv":
        y = qmatmul(x2, raw, ggml_type, (n, k), bias, planes=planes)
    elif way == "tc":
        y = qgemm_fused(x2, raw, ggml_type, (n, k), bias, planes=planes)
    elif way == "splitk":
        y = splitk_linear(x2, raw, ggml_type, (n, k), bias, planes).tensor()
    else:
        y = dequant_matmul(x2, raw, ggml_type, (n, k), bias, planes)
    return y.reshape(*lead, n)


# ------------------------------------------------------------------------------------------
# Residual add + LayerNorm (the unfused step and the encoder: one kernel instead of two)
# ------------------------------------------------------------------------------------------


@triton.jit
def _add_layer_norm_kernel(x_ptr, y_ptr, yb_ptr, w_ptr, b_ptr, s_ptr, h_ptr, K, eps, BLOCK_K: tl.constexpr,
                           SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr):
    """s = x + y (rounded to s's dtype, as torch's add rounds it); h = LN(s), float32 statistics
    (two passes over the row in registers), rounded once to h's dtype. One program a row.
    SPLIT > 0: y is a Partials (y_ptr its float32 parts, yb_ptr its bias), summed here."""
    m = tl.program_id(0)
    row = m.to(tl.int64) * K
    kk = tl.arange(0, BLOCK_K)
    ok = kk < K
    w = tl.load(w_ptr + kk, mask=ok, other=0.0).to(tl.float32)  # constants: before the wait
    b = tl.load(b_ptr + kk, mask=ok, other=0.0).to(tl.float32)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()  # x and y are earlier kernels'
    x = tl.load(x_ptr + row + kk, mask=ok, other=0.0).to(tl.float32)
    if SPLIT > 0:
        y = _partials_at(y_ptr, yb_ptr, m, kk, ok, K, SPLIT, BLOCK_M, HAS_BIAS, s_ptr.dtype.element_ty)
    else:
        y = tl.load(y_ptr + row + kk, mask=ok, other=0.0).to(tl.float32)
    s = (x + y).to(s_ptr.dtype.element_ty)
    tl.store(s_ptr + row + kk, s, mask=ok)
    sf = s.to(tl.float32)
    mean = tl.sum(sf, axis=0) / K
    d = tl.where(ok, sf - mean, 0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(d * d, axis=0) / K + eps)
    tl.store(h_ptr + row + kk, (d * rstd * w + b).to(h_ptr.dtype.element_ty), mask=ok)


def add_layer_norm(x: torch.Tensor, y: torch.Tensor | Partials, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + y, LayerNorm(x + y)) for x, y (..., K) of one float dtype, LayerNorm over the last axis
    with weight and bias (K,): both new tensors of x's dtype and shape. y may be a Partials of
    x's shape and dtype (summed and rounded here, as its tensor() would)."""
    if x.shape != tuple(y.shape) or x.dtype != y.dtype:
        raise ValueError(f"x and y must match, got {tuple(x.shape)} {x.dtype} and {tuple(y.shape)} {y.dtype}")
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    s, h = torch.empty_like(x2), torch.empty_like(x2)
    if isinstance(y, Partials):
        y2, yb, split, block_m, has_bias = y.parts, y.bias, y.parts.shape[0], y.parts.shape[1], y.bias is not None
    else:
        y2, yb, split, block_m, has_bias = y.reshape(-1, k).contiguous(), None, 0, 1, False
    if x2.shape[0]:
        _add_layer_norm_kernel[(x2.shape[0],)](x2, y2, y2 if yb is None else yb, weight, bias, s, h, k, float(eps),
                                               BLOCK_K=_next_pow2(k), SPLIT=split, BLOCK_M=block_m, HAS_BIAS=has_bias,
                                               num_warps=4 if k <= 2048 else 8, **_splitk_pdl(x2.device))
    return s.view(x.shape), h.view(x.shape)


__all__ = [
    "QMATMUL_MAX_M",
    "SPLITK_MAX_M",
    "Partials",
    "add_layer_norm",
    "dequant_matmul",
    "dequantize",
    "dequantize_into",
    "linear",
    "pick",
    "qgemm_fused",
    "qmatmul",
    "scratch_buffers",
    "splitk_linear",
]
