"""numpy GOLDEN for ggml's tensor formats: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

This is the clean reference every other implementation (torch_ops, triton_ops) is checked
against. It imports numpy only. It reproduces ggml-quants.c bit for bit:

* dequantize_<type> is `dequantize_row_<type>`; quantize_<type> is `quantize_row_<type>_ref`, which
  is what `ggml_quantize_chunk` (and so whisper.cpp's `quantize` tool) runs when no importance
  matrix is given.
* Every float operation is a float32 operation in the order C performs it (numpy ufuncs on
  float32 arrays round after each operation, as C does without FMA contraction).
* C's float->int casts of the reference code (`(int8_t)v`, `(uint8_t)v`, `roundf` then int8) are
  reproduced as x86-64 executes them: truncation toward zero through cvttss2si, which turns NaN
  and out-of-range values into INT32_MIN (low byte 0), then the low byte. With finite input this
  only matters for blocks whose scale is so small that `1.0f/d` overflows to inf (all |x| below
  about 2^-125): there ggml writes q = 0 and a zero scale, and so do we.
* float16 conversions are ggml's own (`ggml_compute_fp32_to_fp16` / `_fp16_to_fp32`, the
  portable versions from the FP16 library): round to nearest even, overflow to +-inf,
  subnormals kept, NaN -> 0x7E00 (with sign) one way and a quiet NaN the other way.

FMA: `x*id + 8.5f` (Q4_0, Q5_0) and `(x - min)*id + 0.5f` (Q4_1, Q5_1) are two roundings in the
C source; GCC contracts them into one fused multiply-add when it may use FMA instructions
(`-march=native`/x86-64-v3 with its default `-ffp-contract=fast`). We follow the source (no
contraction), as ggml's portable builds (e.g. the pywhispercpp wheel), clang's default and gguf-py
do; `quantize(..., fused_multiply_add=True)` emulates a contracted build exactly (see _fma_f32).
Only Q4_0/Q5_0 can differ (1-4 blocks in 10^4 of f16-valued weights): for Q4_1/Q5_1 the product
is >= 0 and adding 0.5 cannot cancel, so both give the same codes; Q8_0 has no add.
Dequantization does not depend on it either: d*q is exact in float32 (an 11-bit f16 mantissa
times a q of at most 8 bits), so `d*q + m` rounds once whether fused or not.

Input policy (the C reference checks nothing): quantize() raises ValueError, naming the row and
block, for NaN/Inf input and for blocks whose f16 scale (d, or the minimum m) overflows to inf;
ggml would write bytes that dequantize to NaN/Inf. For every other finite input it returns
exactly ggml's bytes. dequantize() accepts any bytes and never raises on their content:
NaN/Inf scales give NaN/Inf weights, as in C.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import BLOCK_SIZES, QK, GGMLType, tensor_nbytes, type_name

F32 = np.float32


# ------------------------------------------------------------------------------------------
# C arithmetic helpers
# ------------------------------------------------------------------------------------------


def _c_float_to_int8(v: np.ndarray) -> np.ndarray:
    """`(int8_t)v` / `(uint8_t)v` for float32 v as x86-64 executes them (shape kept, int8 out).

    cvttss2si truncates toward zero into an int32 (NaN and |v| >= 2^31 give INT32_MIN, whose
    low byte is 0); the store keeps the low byte.
    """
    in_range = np.abs(v) < F32(2**31)  # False for NaN
    if not in_range.all():
        v = np.where(in_range, v, F32(0))
    return v.astype(np.int32).astype(np.int8)  # int32 -> int8 wraps: the low byte


def _c_roundf(v: np.ndarray) -> np.ndarray:
    """C `roundf`: half away from zero (numpy's np.round rounds half to even)."""
    t = np.trunc(v)
    frac = v - t  # exact: |frac| < 1 and v, t share the exponent range
    with np.errstate(invalid="ignore"):  # inf - inf; the result then stays inf, as roundf(inf)
        t = t + np.where(frac >= F32(0.5), F32(1), np.where(frac <= F32(-0.5), F32(-1), F32(0)))
    return t


def _inverse(d: np.ndarray) -> np.ndarray:
    """`id = d ? 1.0f/d : 0.0f` in float32 (1/d overflows to inf for |d| < 2^-128, as in C)."""
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)


def _fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """fmaf(a, b, c): a*b + c rounded once to float32, as a contracted (FMA) C build computes it.

    a*b is exact in float64 (24 + 24 bits < 53). The float64 sum s = a*b + c is then made
    round-to-odd (if it was inexact and its last bit is even, step one ulp toward the exact sum),
    which makes the final rounding to float32 correct: 53 >= 24 + 2 bits.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN (1/d overflowed) pass through
        p = a.astype(np.float64) * b.astype(np.float64)
        c = np.asarray(c, np.float64)
        s = p + c
        # TwoSum: err = (p + c) - s exactly.
        bb = s - p
        err = (p - (s - bb)) + (c - bb)
        bits = s.view(np.int64)
        fix = (err != 0) & ((bits & 1) == 0) & np.isfinite(s)
        toward = np.where((err > 0) == (s > 0), 1, -1)  # +1 ulp in magnitude if err has s's sign
        bits = np.where(fix, bits + toward, bits)
        return bits.view(np.float64).astype(F32)


# ------------------------------------------------------------------------------------------
# float16 <-> float32, ggml's portable conversions (ggml-impl.h)
# ------------------------------------------------------------------------------------------


def fp32_to_fp16_bits(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_fp16: float32 (any shape) -> uint16 bit patterns, same shape.

    Round to nearest even, overflow to +-inf, f16 subnormals kept; every NaN becomes 0x7E00
    with its sign. (F16C's `_cvtss_sh`, used by native x86 builds, agrees except that it keeps
    NaN payload bits.) The algorithm lets float32 hardware do the rounding: multiplying by
    2^112 * 2^-110 and adding a power of two puts the f16 mantissa in the low float32 bits.
    """
    x = np.asarray(x, dtype=F32)
    w = x.view(np.uint32)
    with np.errstate(over="ignore", invalid="ignore"):  # huge |x| -> inf; NaN stays NaN
        base = (np.abs(x) * F32(2.0**112)) * F32(2.0**-110)
    shl1_w = w + w  # wraps: drops the sign
    sign = w & np.uint32(0x80000000)
    bias = np.maximum(shl1_w & np.uint32(0xFF000000), np.uint32(0x71000000))
    base = ((bias >> np.uint32(1)) + np.uint32(0x07800000)).view(F32) + base
    bits = base.view(np.uint32)
    exp_bits = (bits >> np.uint32(13)) & np.uint32(0x00007C00)
    mantissa_bits = bits & np.uint32(0x00000FFF)
    nonsign = np.where(shl1_w > np.uint32(0xFF000000), np.uint32(0x7E00), exp_bits + mantissa_bits)
    return ((sign >> np.uint32(16)) | nonsign).astype(np.uint16)


def _fp16_bits_to_fp32_exact(h: np.ndarray) -> np.ndarray:
    """ggml_compute_fp16_to_fp32 on uint16 bit patterns -> float32 (exact; NaN comes out quiet)."""
    w = h.astype(np.uint32) << np.uint32(16)
    sign = w & np.uint32(0x80000000)
    two_w = w + w
    exp_offset = np.uint32(0xE0 << 23)
    with np.errstate(invalid="ignore"):  # signalling NaN * 2^-112 -> quiet NaN, as on x86
        normalized = ((two_w >> np.uint32(4)) + exp_offset).view(F32) * F32(2.0**-112)
    denormalized = ((two_w >> np.uint32(17)) | np.uint32(126 << 23)).view(F32) - F32(0.5)
    is_denormal = two_w < np.uint32(1 << 27)
    bits = np.where(is_denormal, denormalized.view(np.uint32), normalized.view(np.uint32))
    return (sign | bits).view(F32)


# Every f16 bit pattern's float32 value: one 256 KiB table makes f16 -> f32 a single gather.
_FP16_TO_FP32 = _fp16_bits_to_fp32_exact(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16))
_FP16_TO_FP32.setflags(write=False)


def fp16_bits_to_fp32(h: np.ndarray) -> np.ndarray:
    """uint16 f16 bit patterns (any shape) -> float32, exact; NaNs come out quiet (as ggml's)."""
    return _FP16_TO_FP32[h]


def _u16(b: np.ndarray, at: int) -> np.ndarray:
    """Little-endian uint16 at byte `at` of each block row (n_blocks, type_size) -> (n_blocks,)."""
    return b[:, at].astype(np.uint16) | (b[:, at + 1].astype(np.uint16) << np.uint16(8))


def _f16_field(b: np.ndarray, at: int) -> np.ndarray:
    """An f16 block field (d or m) -> float32 column (n_blocks, 1)."""
    return fp16_bits_to_fp32(_u16(b, at))[:, None]


def _put_f16(out: np.ndarray, at: int, v: np.ndarray) -> None:
    """Write float32 v (n_blocks,) as little-endian f16 at byte `at` of each output block."""
    bits = fp32_to_fp16_bits(v)
    out[:, at] = (bits & np.uint16(0xFF)).astype(np.uint8)
    out[:, at + 1] = (bits >> np.uint16(8)).astype(np.uint8)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n_blocks, 16) bytes -> (n_blocks, 32) uint8: lo nibbles = weights 0..15, hi = 16..31."""
    q = np.empty((qs.shape[0], QK), dtype=np.uint8)
    np.bitwise_and(qs, np.uint8(0x0F), out=q[:, : QK // 2])
    np.right_shift(qs, np.uint8(4), out=q[:, QK // 2 :])
    return q


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) uint8 -> (n_blocks, 16): `qs[j] = (q[j] & 0xF) | (q[j+16] & 0xF) << 4`."""
    lo, hi = q[:, : QK // 2], q[:, QK // 2 :]
    return (lo & np.uint8(0x0F)) | ((hi & np.uint8(0x0F)) << np.uint8(4))


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """(n_blocks, 4) qh bytes (a little-endian u32) -> (n_blocks, 32) uint8 of 0x10 or 0: bit j = weight j."""
    return np.unpackbits(qh, axis=1, bitorder="little") << np.uint8(4)


def _pack_fifth_bits(q: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) uint8 -> qh (n_blocks, 4): bit j of the u32 = bit 4 of q[j]."""
    return np.packbits((q >> np.uint8(4)) & np.uint8(1), axis=1, bitorder="little")


def _abs_max_signed(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude in each block, with its sign (n_blocks,).

    C: `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` starting from max = 0.0f, so the
    first of equal magnitudes wins (as np.argmax does) and an all-zero block keeps +0.0 even if
    its zeros are -0.0 (then d = +0.0f / -8 = -0.0f).
    """
    i = np.argmax(np.abs(x), axis=1)
    vmax = np.take_along_axis(x, i[:, None], axis=1)[:, 0]
    return np.where(vmax == 0, F32(0), vmax)


def _first_extreme(x: np.ndarray, extreme: np.ndarray) -> np.ndarray:
    """C's `if (v < min) min = v;` keeps the first element equal to the extreme: that matters
    only for the sign of a zero extreme (-0.0 == +0.0), so fix up just those blocks."""
    zero = extreme == 0
    if zero.any():
        xz = x[zero]
        first = np.argmax(xz == 0, axis=1)
        extreme = extreme.copy()
        extreme[zero] = np.take_along_axis(xz, first[:, None], axis=1)[:, 0]
    return extreme


def _scaled_plus(x: np.ndarray, id: np.ndarray, c: float, fused: bool) -> np.ndarray:
    """`x*id + c` in float32, rounded twice (as written) or once (a contracted FMA build)."""
    if fused:
        return _fma_f32(x, np.broadcast_to(id, x.shape), F32(c))
    with np.errstate(invalid="ignore"):  # 0*inf when 1/d overflowed: NaN -> q = 0, as in C
        return x * id + F32(c)


# ------------------------------------------------------------------------------------------
# F32: 4 B / weight, IEEE binary32 little-endian
# ------------------------------------------------------------------------------------------


def dequantize_f32(raw: np.ndarray) -> np.ndarray:
    """(n_bytes,) uint8 -> (n_bytes // 4,) float32 (a copy: raw may be a read-only memmap)."""
    return raw.view("<f4").astype(F32)


def quantize_f32(x: np.ndarray) -> np.ndarray:
    """float32 (any shape) -> its little-endian bytes, 1-D uint8."""
    return np.ascontiguousarray(x, dtype="<f4").reshape(-1).view(np.uint8).copy()


# ------------------------------------------------------------------------------------------
# F16: 2 B / weight, IEEE binary16 little-endian; ggml_fp16_to_fp32_row / ggml_fp32_to_fp16_row
# ------------------------------------------------------------------------------------------


def dequantize_f16(raw: np.ndarray) -> np.ndarray:
    """(n_bytes,) uint8 -> (n_bytes // 2,) float32, exact (NaNs quiet, as ggml's conversion)."""
    return fp16_bits_to_fp32(raw.view("<u2"))


def quantize_f16(x: np.ndarray) -> np.ndarray:
    """float32 (any shape) -> f16 bytes, 1-D uint8, by ggml's round-to-nearest-even conversion."""
    return fp32_to_fp16_bits(np.ravel(x)).astype("<u2").view(np.uint8)


# ------------------------------------------------------------------------------------------
# block_q4_0: 18 B / 32 weights = d:f16 | qs:16 B (lo nibble = w[0:16], hi nibble = w[16:32]); w = d*(q-8)
# ------------------------------------------------------------------------------------------


def dequantize_q4_0(b: np.ndarray) -> np.ndarray:
    """(n_blocks, 18) uint8 -> (n_blocks, 32) float32: `y = (q - 8)*d`."""
    d = _f16_field(b, 0)
    q = _unpack_nibbles(b[:, 2:18]).view(np.int8) - np.int8(8)
    return q.astype(F32) * d


def quantize_q4_0(x: np.ndarray, fused_multiply_add: bool = False) -> np.ndarray:
    """(n_blocks, 32) finite float32 -> (n_blocks, 18) uint8, as quantize_row_q4_0_ref.

    d = max/-8 where max is the weight of largest magnitude (so it maps to q = 0);
    q = MIN(15, (int8_t)(x*id + 8.5f)) with id = 1/d: round half up onto 0..16, 16 clamped.
    """
    vmax = _abs_max_signed(x)
    d = vmax / F32(-8)
    id = _inverse(d)[:, None]
    q = np.minimum(_c_float_to_int8(_scaled_plus(x, id, 8.5, fused_multiply_add)), np.int8(15))
    out = np.empty((x.shape[0], 18), dtype=np.uint8)
    _put_f16(out, 0, d)
    out[:, 2:18] = _pack_nibbles(q.view(np.uint8))
    return out


# ------------------------------------------------------------------------------------------
# block_q4_1: 20 B / 32 weights = d:f16 | m:f16 | qs:16 B (lo nibble = w[0:16], hi = w[16:32]); w = d*q + m
# ------------------------------------------------------------------------------------------


def dequantize_q4_1(b: np.ndarray) -> np.ndarray:
    """(n_blocks, 20) uint8 -> (n_blocks, 32) float32: `y = q*d + m`, product then sum in float32
    (the product is exact, so a fused multiply-add would give the same bits)."""
    d, m = _f16_field(b, 0), _f16_field(b, 2)
    q = _unpack_nibbles(b[:, 4:20])
    return q.astype(F32) * d + m


def quantize_q4_1(x: np.ndarray, fused_multiply_add: bool = False) -> np.ndarray:
    """(n_blocks, 32) finite float32 -> (n_blocks, 20) uint8, as quantize_row_q4_1_ref.

    d = (max - min)/15, m = min (stored as f16, but q is computed from the float32 min);
    q = MIN(15, (int8_t)((x - min)*id + 0.5f)).
    """
    vmin = _first_extreme(x, x.min(axis=1))
    vmax = _first_extreme(x, x.max(axis=1))
    with np.errstate(over="ignore"):  # max - min may overflow; quantize() rejects d = inf
        d = (vmax - vmin) / F32(15)
        diff = x - vmin[:, None]
    id = _inverse(d)[:, None]
    with np.errstate(invalid="ignore"):  # inf*0 in the rejected overflow case
        q = np.minimum(_c_float_to_int8(_scaled_plus(diff, id, 0.5, fused_multiply_add)), np.int8(15))
    out = np.empty((x.shape[0], 20), dtype=np.uint8)
    _put_f16(out, 0, d)
    _put_f16(out, 2, vmin)
    out[:, 4:20] = _pack_nibbles(q.view(np.uint8))
    return out


# ------------------------------------------------------------------------------------------
# block_q5_0: 22 B / 32 weights = d:f16 | qh:u32 LE (bit j = bit 4 of q[j]) | qs:16 B (low 4 bits,
#             lo nibble = w[0:16], hi nibble = w[16:32]); w = d*(q-16)
# ------------------------------------------------------------------------------------------


def dequantize_q5_0(b: np.ndarray) -> np.ndarray:
    """(n_blocks, 22) uint8 -> (n_blocks, 32) float32: `y = (q - 16)*d`."""
    d = _f16_field(b, 0)
    q = _unpack_nibbles(b[:, 6:22]) | _fifth_bits(b[:, 2:6])
    return (q.view(np.int8) - np.int8(16)).astype(F32) * d


def quantize_q5_0(x: np.ndarray, fused_multiply_add: bool = False) -> np.ndarray:
    """(n_blocks, 32) finite float32 -> (n_blocks, 22) uint8, as quantize_row_q5_0_ref.

    d = max/-16; q = MIN(31, (int8_t)(x*id + 16.5f)).
    """
    vmax = _abs_max_signed(x)
    d = vmax / F32(-16)
    id = _inverse(d)[:, None]
    q = np.minimum(_c_float_to_int8(_scaled_plus(x, id, 16.5, fused_multiply_add)), np.int8(31))
    q = q.view(np.uint8)
    out = np.empty((x.shape[0], 22), dtype=np.uint8)
    _put_f16(out, 0, d)
    out[:, 2:6] = _pack_fifth_bits(q)
    out[:, 6:22] = _pack_nibbles(q)
    return out


# ------------------------------------------------------------------------------------------
# block_q5_1: 24 B / 32 weights = d:f16 | m:f16 | qh:u32 LE (bit j = bit 4 of q[j]) | qs:16 B
#             (low 4 bits, lo nibble = w[0:16], hi nibble = w[16:32]); w = d*q + m
# ------------------------------------------------------------------------------------------


def dequantize_q5_1(b: np.ndarray) -> np.ndarray:
    """(n_blocks, 24) uint8 -> (n_blocks, 32) float32: `y = q*d + m` (exact product, one rounding)."""
    d, m = _f16_field(b, 0), _f16_field(b, 2)
    q = _unpack_nibbles(b[:, 8:24]) | _fifth_bits(b[:, 4:8])
    return q.astype(F32) * d + m


def quantize_q5_1(x: np.ndarray, fused_multiply_add: bool = False) -> np.ndarray:
    """(n_blocks, 32) finite float32 -> (n_blocks, 24) uint8, as quantize_row_q5_1_ref.

    d = (max - min)/31, m = min; q = (uint8_t)((x - min)*id + 0.5f) (no clamp in C: at most 31).
    """
    vmin = _first_extreme(x, x.min(axis=1))
    vmax = _first_extreme(x, x.max(axis=1))
    with np.errstate(over="ignore"):
        d = (vmax - vmin) / F32(31)
        diff = x - vmin[:, None]
    id = _inverse(d)[:, None]
    with np.errstate(invalid="ignore"):
        q = _c_float_to_int8(_scaled_plus(diff, id, 0.5, fused_multiply_add)).view(np.uint8)
    out = np.empty((x.shape[0], 24), dtype=np.uint8)
    _put_f16(out, 0, d)
    _put_f16(out, 2, vmin)
    out[:, 4:8] = _pack_fifth_bits(q)
    out[:, 8:24] = _pack_nibbles(q)
    return out


# ------------------------------------------------------------------------------------------
# block_q8_0: 34 B / 32 weights = d:f16 | qs:32 x int8; w = d*q
# ------------------------------------------------------------------------------------------


def dequantize_q8_0(b: np.ndarray) -> np.ndarray:
    """(n_blocks, 34) uint8 -> (n_blocks, 32) float32: `y = q*d`."""
    d = _f16_field(b, 0)
    return b[:, 2:34].view(np.int8).astype(F32) * d


def quantize_q8_0(x: np.ndarray, fused_multiply_add: bool = False) -> np.ndarray:
    """(n_blocks, 32) finite float32 -> (n_blocks, 34) uint8, as quantize_row_q8_0_ref.

    d = amax/127; q = roundf(x*id) (half away from zero). No multiply-add, so
    fused_multiply_add changes nothing here (accepted for a uniform signature).
    """
    amax = np.abs(x).max(axis=1)
    d = amax / F32(127)
    id = _inverse(d)[:, None]
    with np.errstate(invalid="ignore"):  # 0*inf when 1/d overflowed: NaN -> q = 0, as in C
        q = _c_float_to_int8(_c_roundf(x * id))
    out = np.empty((x.shape[0], 34), dtype=np.uint8)
    _put_f16(out, 0, d)
    out[:, 2:34] = q.view(np.uint8)
    return out


# ------------------------------------------------------------------------------------------
# Dispatch: whole tensors
# ------------------------------------------------------------------------------------------

_DEQUANTIZE_BLOCKS = {
    GGMLType.Q4_0: dequantize_q4_0,
    GGMLType.Q4_1: dequantize_q4_1,
    GGMLType.Q5_0: dequantize_q5_0,
    GGMLType.Q5_1: dequantize_q5_1,
    GGMLType.Q8_0: dequantize_q8_0,
}
_QUANTIZE_BLOCKS = {
    GGMLType.Q4_0: quantize_q4_0,
    GGMLType.Q4_1: quantize_q4_1,
    GGMLType.Q5_0: quantize_q5_0,
    GGMLType.Q5_1: quantize_q5_1,
    GGMLType.Q8_0: quantize_q8_0,
}
# Byte offsets of the f16 scale fields in each block: (d,) or (d, m).
_SCALE_FIELDS = {
    GGMLType.Q4_0: ("d",),
    GGMLType.Q4_1: ("d", "m"),
    GGMLType.Q5_0: ("d",),
    GGMLType.Q5_1: ("d", "m"),
    GGMLType.Q8_0: ("d",),
}
# Blocks dequantized per chunk: bounds the uint8/float32 temporaries (~10 MB) for large tensors.
_CHUNK_BLOCKS = 1 << 16


def _as_type(ggml_type) -> GGMLType:
    try:
        return GGMLType(int(ggml_type))
    except ValueError:
        raise ValueError(f"tensor type {type_name(int(ggml_type))} (id {int(ggml_type)}) is not supported") from None


def _as_bytes(raw) -> np.ndarray:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return np.frombuffer(raw, dtype=np.uint8)
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise ValueError(f"raw tensor data must be uint8 bytes, got dtype {raw.dtype}")
    return raw.reshape(-1)


def dequantize(raw: np.ndarray, ggml_type: GGMLType, shape: Sequence[int]) -> np.ndarray:
    """Raw bytes of one tensor -> float32 array of `shape` (numpy order, last axis = ggml ne[0]).

    raw: uint8 array (any shape, e.g. a memmap slice) or bytes of exactly
    tensor_nbytes(ggml_type, shape) bytes. Never raises on the bytes' content.
    """
    ggml_type = _as_type(ggml_type)
    shape = tuple(int(n) for n in shape)
    if not shape or min(shape) < 0:
        raise ValueError(f"{ggml_type.name} tensor shape must have at least one axis and no negative size, got {shape}")
    raw = _as_bytes(raw)
    expected = tensor_nbytes(ggml_type, shape)
    if raw.size != expected:
        raise ValueError(f"{ggml_type.name} tensor of shape {shape} needs {expected} bytes, got {raw.size}")
    if ggml_type == GGMLType.F32:
        return dequantize_f32(raw).reshape(shape)
    if ggml_type == GGMLType.F16:
        return dequantize_f16(raw).reshape(shape)
    _, type_size = BLOCK_SIZES[ggml_type]
    blocks = raw.reshape(-1, type_size)
    fn = _DEQUANTIZE_BLOCKS[ggml_type]
    out = np.empty((blocks.shape[0], QK), dtype=F32)
    with np.errstate(invalid="ignore"):  # inf*0 in blocks with an inf scale: NaN, as in C
        for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
            stop = start + _CHUNK_BLOCKS
            out[start:stop] = fn(np.asarray(blocks[start:stop]))
    return out.reshape(shape)


def _describe_block(flat_block: int, shape: tuple[int, ...]) -> str:
    """'row (2, 7), block 3 (elements 96:128 of the row)' for a flat block index."""
    blocks_per_row = shape[-1] // QK
    row, block = divmod(flat_block, blocks_per_row)
    row_idx = np.unravel_index(row, shape[:-1]) if len(shape) > 1 else ()
    row_txt = f"row {tuple(int(i) for i in row_idx)}" if row_idx else "the row"
    return f"{row_txt}, block {block} (elements {block * QK}:{(block + 1) * QK} of the row)"


def quantize(x: np.ndarray, ggml_type: GGMLType, *, fused_multiply_add: bool = False) -> np.ndarray:
    """float array (last axis contiguous, a multiple of 32 for block types) -> raw bytes, 1-D uint8.

    The bytes are exactly what ggml's quantize_row_<type>_ref / ggml_quantize_chunk (without an
    importance matrix) writes for the same float32 values; float64 input is first rounded to
    float32. fused_multiply_add=True reproduces a build that contracts `x*id + c` into an FMA.
    Raises ValueError (naming row and block) for NaN/Inf input to a block type, and for blocks
    whose f16 scale would overflow to inf. F32/F16 keep NaN/Inf and, for F16, round |x| >= 65520
    to inf, as ggml does.
    """
    ggml_type = _as_type(ggml_type)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"quantize needs a float array, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=F32)
    if ggml_type == GGMLType.F32:
        return quantize_f32(x)
    if ggml_type == GGMLType.F16:
        return quantize_f16(x)
    if x.ndim == 0 or x.shape[-1] % QK:
        raise ValueError(f"{ggml_type.name} needs rows that are a multiple of {QK} weights, got shape {x.shape}")
    blocks = x.reshape(-1, QK)
    finite = np.isfinite(blocks).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"cannot quantize to {ggml_type.name}: non-finite value in {_describe_block(int(bad[0]), x.shape)}"
            f" ({bad.size} such block{'s' if bad.size > 1 else ''}); ggml would write a block that"
            " dequantizes to NaN"
        )
    out = _QUANTIZE_BLOCKS[ggml_type](blocks, fused_multiply_add=fused_multiply_add)
    for i, field in enumerate(_SCALE_FIELDS[ggml_type]):
        bits = _u16(out, 2 * i)
        overflow = (bits & np.uint16(0x7FFF)) == np.uint16(0x7C00)
        if overflow.any():
            bad = np.flatnonzero(overflow)
            raise ValueError(
                f"cannot quantize to {ggml_type.name}: the f16 scale {field} overflows to inf in"
                f" {_describe_block(int(bad[0]), x.shape)} (|x| up to {np.abs(blocks[bad[0]]).max():.6g};"
                f" {bad.size} such block{'s' if bad.size > 1 else ''})"
            )
    return out.reshape(-1)
