"""quants/ref.py, the numpy golden for ggml's formats, against three independent references:

1. known-answer blocks whose bytes were derived by hand from ggml-quants.c's reference code
   (the derivation is in the comment beside each; a f16 value is written sign|exp-15|mantissa);
2. PyPI's `gguf` (gguf-py's own numpy port of the same C): equal bit for bit, except for the
   cases where gguf deviates from C, which are recognised one by one and must be the only ones;
3. the real file written by whisper.cpp (shared/models/ggml-tiny.en-q5_1.bin): every tensor
   dequantizes exactly as gguf does.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest

from qwhisper.quants import BLOCK_SIZES, QK, GGMLType, dequantize, quantize, ref

QTYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0]
ALL_TYPES = [GGMLType.F32, GGMLType.F16, *QTYPES]


def blk(*head: float, fill: float = 0.0) -> np.ndarray:
    """One 32-weight block: `head` first, then `fill`."""
    x = np.full(QK, fill, dtype=np.float32)
    x[: len(head)] = head
    return x


def hx(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


RAMP = np.arange(QK, dtype=np.float32)  # 0 .. 31
RAMP16 = RAMP - 16  # -16 .. 15

# (type, case, input block, expected bytes (hex), fused_multiply_add)
KNOWN_ANSWERS = [
    # --- Q4_0: d = max/-8 (max = the weight of largest |x|, first one wins), q = MIN(15, (int8)(x/d + 8.5))
    # all zero: amax stays 0, so max keeps its initial +0.0f and d = +0/-8 = -0.0 -> f16 0x8000;
    # id = 0, q = (int)8.5 = 8 -> every byte 0x88.
    (GGMLType.Q4_0, "zeros", blk(), "0080" + "88" * 16, False),
    # ramp -16..15: max = -16 (j=0) -> d = 2.0 = 0x4000, id = 0.5, q[j] = (int)(j/2 + 0.5) = (j+1)//2,
    # q[31] = 16 clamped to 15. qs[j] = q[j] | q[j+16] << 4: lo 0,1,1,2,2,..,8; hi 8,9,9,..,15,15.
    (GGMLType.Q4_0, "ramp", RAMP16, "0040 8091 91a2 a2b3 b3c4 c4d5 d5e6 e6f7 f7f8", False),
    # +1 then -1: max = +1 (first) -> d = -0.125 = 0xB000, id = -8; +1 -> 0.5 -> 0; -1 -> 16.5 -> 16 -> 15;
    # 0 -> 8. qs[0] = 0 | 8<<4, qs[1] = 15 | 8<<4. (-1 comes back as -0.875: the Q4_0 asymmetry.)
    (GGMLType.Q4_0, "+-max", blk(1, -1), "00b0 808f" + "88" * 14, False),
    # scale that rounds: max = f32(1/3) -> d = -0.041666668 -> f16 1.0101010101b * 2^-5 = 0xA955
    # (-0.041656494); id = f32(-24.0000007) = -24.0, (1/3)*-24 = -8.0000002 -> -8.0 -> 0.5 -> q = 0.
    (GGMLType.Q4_0, "scale rounds", blk(1 / 3), "55a9 80" + "88" * 15, False),
    # largest scale that fits: d = -524032/-8 = 65504 = 0x7BFF (f16 max); x/d = -8(1+-eps) -> q = 0.
    (GGMLType.Q4_0, "f16 max scale", blk(-524032), "ff7b 80" + "88" * 15, False),
    # f16-subnormal scale: max = 2^-20 -> d = -2^-23 = 2 * 2^-24 -> 0x8002; id = -2^23 exactly -> q = 0.
    (GGMLType.Q4_0, "subnormal scale", blk(2.0**-20), "0280 80" + "88" * 15, False),
    # tiny block: max = 2^-126 -> d = -2^-129 (an f32 subnormal), 1/d overflows to -inf; x*id is -inf or
    # NaN (0*inf), which the C (int8_t) cast (cvttss2si) turns into INT32_MIN, low byte 0 -> q = 0;
    # d rounds to f16 -0 -> 0x8000.
    (GGMLType.Q4_0, "subnormal input", blk(2.0**-126), "0080" + "00" * 16, False),
    # constant 0.5: max = 0.5 -> d = -0.0625 = 0xAC00, id = -16, 0.5*-16 + 8.5 = 0.5 -> q = 0 everywhere.
    (GGMLType.Q4_0, "constant", blk(fill=0.5), "00ac" + "00" * 16, False),
    # where FMA contraction matters: max = 3 -> d = -0.375 = 0xB600, id = f32(-8/3) = -2.6666667461
    # (relative error +2.98e-8). 2.8125*id = -7.5 - 2.2e-7 exactly; rounded to f32 that is -7.5
    # (half an ulp is 2.4e-7), + 8.5 = 1.0 -> q = 1. Fused, 8.5 - 7.5000002 = 0.99999976 -> q = 0.
    (GGMLType.Q4_0, "fma case, unfused", blk(3.0, 2.8125), "00b6 8081" + "88" * 14, False),
    (GGMLType.Q4_0, "fma case, fused", blk(3.0, 2.8125), "00b6 8080" + "88" * 14, True),
    # --- Q4_1: d = (max-min)/15, m = min, q = MIN(15, (int8)((x - min)/d + 0.5)); q from the f32 min
    (GGMLType.Q4_1, "zeros", blk(), "0000 0000" + "00" * 16, False),
    # ramp 0..31: d = f32(31/15) = 2.0666666 -> f16 1.0000100010b * 2 = 0x4022, m = 0;
    # q[j] = round(15j/31) (no ties: 15j/31 is never within 1/62 of k + 1/2):
    # 0,0,1,1,2,2,3,3,4,4,5,5,6,6,7,7 | 8,8,9,9,10,10,11,11,12,12,13,13,14,14,15,15
    (GGMLType.Q4_1, "ramp", RAMP, "2240 0000 8080 9191 a2a2 b3b3 c4c4 d5d5 e6e6 f7f7", False),
    # -1 then +1: d = f32(2/15) = 8947849 * 2^-26 -> f16 1.0001000100b * 2^-3 = 0x3044, m = -1 = 0xBC00.
    # id = f32(2^26/8947849 = 7.5 - 3.9e-7) = 7.5 - 2^-21. A zero weight: 1*id + 0.5 = 8 - 2^-21 -> q = 7
    # (not 8); +1: 2*id + 0.5 = 15.5 - 2^-20 -> 15; -1 -> 0. qs[0] = 0 | 7<<4, qs[1] = 15 | 7<<4.
    (GGMLType.Q4_1, "+-max", blk(-1, 1), "4430 00bc 707f" + "77" * 14, False),
    # constant 0.5: d = 0, m = 0.5 = 0x3800, q = 0.
    (GGMLType.Q4_1, "constant", blk(fill=0.5), "0000 0038" + "00" * 16, False),
    # m rounds: f16(0.1) = 1.1001100110b * 2^-4 = 0x2E66 (0.0999755859375).
    (GGMLType.Q4_1, "m rounds", blk(fill=0.1), "0000 662e" + "00" * 16, False),
    # zeros of both signs, -0.0 first: C's `if (v < min)` keeps the first zero, so m = -0.0 = 0x8000;
    # d = -0 - -0 = +0.
    (
        GGMLType.Q4_1,
        "signed zeros",
        np.where(RAMP % 2 == 0, -0.0, 0.0).astype(np.float32),
        "0000 0080" + "00" * 16,
        False,
    ),
    # --- Q5_0: d = max/-16, q = MIN(31, (int8)(x/d + 16.5)); bit 4 of q[j] -> bit j of the LE u32 qh
    # zeros: d = -0.0, q = 16 = 0x10 everywhere -> low nibbles 0, qh all ones.
    (GGMLType.Q5_0, "zeros", blk(), "0080 ffffffff" + "00" * 16, False),
    # ramp -16..15: d = 1.0 = 0x3C00, id = 1, q[j] = (int)(j + 0.5) = j; qh = bits 16..31 = 0xFFFF0000;
    # qs[j] = (j & 15) | ((j + 16) & 15) << 4 = 0x00, 0x11, .., 0xff.
    (GGMLType.Q5_0, "ramp", RAMP16, "003c 0000ffff 00112233445566778899aabbccddeeff", False),
    # +1 then -1: d = -0.0625 = 0xAC00, id = -16: +1 -> 0.5 -> 0; -1 -> 32.5 -> 32 -> 31; 0 -> 16.
    # qh: bit 0 clear (q=0), the rest set -> 0xFFFFFFFE; qs[0] = 0 | (16&15)<<4 = 0, qs[1] = 15.
    (GGMLType.Q5_0, "+-max", blk(1, -1), "00ac feffffff 000f" + "00" * 14, False),
    # constant 0.5: d = -0.03125 = 0xA800, id = -32, -16 + 16.5 = 0.5 -> q = 0 everywhere.
    (GGMLType.Q5_0, "constant", blk(fill=0.5), "00a8 00000000" + "00" * 16, False),
    # FMA: max = 3 -> d = -0.1875 = 0xB200, id = f32(-16/3) (+2.98e-8 relative); 2.90625*id =
    # -15.5 - 4.6e-7 exactly, rounds to -15.5 (half ulp 4.8e-7) -> 1.0 -> q = 1; fused 0.99999954 -> 0.
    # qh = 0xFFFFFFFC (q[0], q[1] < 16).
    (GGMLType.Q5_0, "fma case, unfused", blk(3.0, 2.90625), "00b2 fcffffff 0001" + "00" * 14, False),
    (GGMLType.Q5_0, "fma case, fused", blk(3.0, 2.90625), "00b2 fcffffff 0000" + "00" * 14, True),
    # --- Q5_1: d = (max-min)/31, m = min, q = (uint8)((x - min)/d + 0.5), no clamp
    (GGMLType.Q5_1, "zeros", blk(), "0000 0000 00000000" + "00" * 16, False),
    # ramp 0..31: d = 1.0, m = 0, q[j] = j.
    (GGMLType.Q5_1, "ramp", RAMP, "003c 0000 0000ffff 00112233445566778899aabbccddeeff", False),
    # -1 then +1: d = f32(2/31) = 8659208 * 2^-27 -> f16 1.0000100001b * 2^-4 = 0x2C21, m = 0xBC00;
    # id = f32(15.5 + 4.6e-7) = 15.5 (half ulp 4.8e-7). 0 -> 1*15.5 + 0.5 = 16; +1 -> 31.5 -> 31; -1 -> 0.
    (GGMLType.Q5_1, "+-max", blk(-1, 1), "212c 00bc feffffff 000f" + "00" * 14, False),
    (GGMLType.Q5_1, "m rounds", blk(fill=0.1), "0000 662e 00000000" + "00" * 16, False),
    # --- Q8_0: d = amax/127, q = roundf(x/d) (half away from zero)
    (GGMLType.Q8_0, "zeros", blk(), "0000" + "00" * 32, False),
    # ramp -16..15: d = f32(16/127) = 8454660 * 2^-26 -> f16 1.0000001000b * 2^-3 = 0x3008;
    # id = f32(2^26/8454660 = 7.9375 + 3e-8) = 7.9375 = 127/16 exactly, so q = roundf(127k/16), k = j-16:
    # -127 -119 -111 -103 -95 -87 -79 -71 -64 (-63.5) -56 -48 -40 -32 -24 -16 -8 | 0 8 16 24 32 40 48 56
    # 64 (63.5) 71 79 87 95 103 111 119.
    (GGMLType.Q8_0, "ramp", RAMP16, "0830 81899199a1a9b1b9 c0c8d0d8e0e8f0f8 0008101820283038 40474f575f676f77", False),
    # roundf, not round-half-even: d = 1 (0x3C00), 2.5 -> 3, -2.5 -> -3 (0xfd), 0.5 -> 1, -0.5 -> -1,
    # 1.5 -> 2, 3.5 -> 4 (numpy's np.round would give 2, -2, 0, -0, 2, 4).
    (GGMLType.Q8_0, "roundf", blk(127, 2.5, -2.5, 0.5, -0.5, 1.5, 3.5), "003c 7f03fd01ff0204" + "00" * 25, False),
    # largest scale that fits: 8319008 = 65504*127 -> d = 65504 = 0x7BFF, q = +-127 (0x7f, 0x81).
    (GGMLType.Q8_0, "+-max", blk(8319008, -8319008), "ff7b 7f81" + "00" * 30, False),
    # f16-subnormal scale: amax = 127 * 2^-24 -> d = 2^-24 = 0x0001, id = 2^24, q = 127.
    (GGMLType.Q8_0, "subnormal scale", blk(127 * 2.0**-24), "0100 7f" + "00" * 31, False),
    # scale underflows f16: d = 1e-10/127 -> f16 +0, but q comes from the f32 id: q = 127.
    (GGMLType.Q8_0, "scale underflows", blk(1e-10), "0000 7f" + "00" * 31, False),
]


@pytest.mark.parametrize(
    "qtype, case, x, expected, fused", KNOWN_ANSWERS, ids=[f"{t.name}-{c}" for t, c, *_ in KNOWN_ANSWERS]
)
def test_known_answer_blocks(qtype, case, x, expected, fused):
    got = quantize(x, qtype) if not fused else ref.quantize(x, qtype, fused_multiply_add=True)
    assert got.tobytes().hex() == hx(expected).hex()
    assert got.dtype == np.uint8 and got.shape == (BLOCK_SIZES[qtype][1],)


# Dequantized known answers: (type, bytes, index, expected float) -- products of f16 d and small ints.
KNOWN_DEQUANT = [
    # the ramp's codes q[j] = (j+1)//2, 16 clamped to 15: 2*(q - 8) = -16, -14, -14, -12, .., 14, 14, 14
    (
        GGMLType.Q4_0,
        "0040 8091 91a2 a2b3 b3c4 c4d5 d5e6 e6f7 f7f8",
        slice(None),
        2.0 * (np.minimum((RAMP + 1) // 2, 15) - 8),
    ),
    (GGMLType.Q4_0, "55a9 80" + "88" * 15, 0, 1365 / 32768 * 8),  # 0.333251953125: the scale's rounding
    (GGMLType.Q4_0, "00b0 808f" + "88" * 14, 1, -0.875),
    (GGMLType.Q4_0, "0280 80" + "88" * 15, 0, 2.0**-20),
    (GGMLType.Q4_1, "4430 00bc 707f" + "77" * 14, 2, 7 * 1092 / 8192 - 1),  # zero -> -0.06689453125
    (GGMLType.Q4_1, "0000 662e" + "00" * 16, slice(None), 1638 / 16384),  # 0.0999755859375
    (GGMLType.Q5_0, "003c 0000ffff 00112233445566778899aabbccddeeff", slice(None), RAMP16),
    (GGMLType.Q5_1, "212c 00bc feffffff 000f" + "00" * 14, 5, 33 / 1024),  # 16*d + m for a zero
    (GGMLType.Q5_1, "003c 0000 0000ffff 00112233445566778899aabbccddeeff", slice(None), RAMP),
    (GGMLType.Q8_0, "0100 7f" + "00" * 31, 0, 127 * 2.0**-24),
    (GGMLType.Q8_0, "ff7b 7f81" + "00" * 30, slice(0, 2), [8319008, -8319008]),
]


@pytest.mark.parametrize("qtype, raw, index, expected", KNOWN_DEQUANT)
def test_known_answer_dequantize(qtype, raw, index, expected):
    y = dequantize(np.frombuffer(hx(raw), np.uint8), qtype, (QK,))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[index], np.float32(expected))


F16_KNOWN = [  # (float32 value, ggml's f16 bits)
    (1.0, 0x3C00),
    (-2.0, 0xC000),
    (65504.0, 0x7BFF),
    (65519.996, 0x7BFF),  # just below the midpoint to 65536 (inf)
    (65520.0, 0x7C00),  # midpoint: ties to even, and the even neighbour is inf
    (2.0**-24, 0x0001),  # smallest subnormal
    (2.0**-25, 0x0000),  # half of it: tie -> even (0)
    (3 * 2.0**-26, 0x0001),  # 0.75 * 2^-24 -> up
    (0.1, 0x2E66),
    (-0.0, 0x8000),
    (np.inf, 0x7C00),
    (-np.inf, 0xFC00),
    (1 + 2.0**-11, 0x3C00),  # tie between 0x3C00 and 0x3C01 -> even
    (1 + 3 * 2.0**-11, 0x3C02),  # tie between 0x3C01 and 0x3C02 -> even
    (np.nan, 0x7E00),
    (-np.nan, 0xFE00),  # ggml's portable conversion: one canonical NaN, sign kept
]


def test_f16_known_answers():
    x = np.array([v for v, _ in F16_KNOWN], dtype=np.float32)
    x[-1] = -np.float32(np.nan)  # make sure the sign bit is set
    got = quantize(x, GGMLType.F16).view("<u2")
    assert [hex(h) for h in got] == [hex(h) for _, h in F16_KNOWN]
    # f16 -> f32 is exact; a signalling NaN comes out quiet (x86 and ggml's conversion set bit 22)
    h = np.array([0x0001, 0x7BFF, 0x7C00, 0x7C01, 0xFE00, 0x8000], dtype="<u2")
    y = dequantize(h.view(np.uint8), GGMLType.F16, (6,)).view(np.uint32)
    assert [hex(v) for v in y] == ["0x33800000", "0x477fe000", "0x7f800000", "0x7fc02000", "0xffc00000", "0x80000000"]
    assert quantize(np.float32(1.0), GGMLType.F32).tobytes() == hx("0000803f")


def test_f16_conversion_matches_numpy_on_every_tie():
    """numpy's float32 -> float16 cast is an independent round-to-nearest-even: compare on every
    f16 value, every midpoint between neighbours (the ties) and one f32 ulp either side of it."""
    h = np.arange(0x7C00, dtype=np.uint32)  # every finite non-negative f16
    v = h.astype(np.uint16).view(np.float16).astype(np.float64)
    mid = ((v[:-1] + v[1:]) / 2).astype(np.float32)  # exact: a midpoint needs 12 bits
    top = np.float32(65520.0)  # midpoint between the f16 max and 2^16 (inf)
    pts = np.concatenate([v.astype(np.float32), mid, [top]])
    pts = np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(0))])
    pts = np.concatenate([pts, -pts])
    with np.errstate(over="ignore"):
        expected = pts.astype(np.float16).view(np.uint16)
    assert np.array_equal(ref.fp32_to_fp16_bits(pts), expected)
    # and back: every non-NaN code converts exactly as numpy's widening cast does
    codes = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ok = (codes & 0x7C00) != 0x7C00 | ((codes & 0x03FF) == 0)
    ours = ref.fp16_bits_to_fp32(codes).view(np.uint32)
    assert np.array_equal(ours[ok], codes[ok].view(np.float16).astype(np.float32).view(np.uint32))


def _exact_fmaf(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """fmaf by rational arithmetic: a*b + c exactly, rounded to the nearest float32 (ties to even)."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = np.float32(float(exact))
    cands = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    best = min(cands, key=lambda f: (abs(Fraction(float(f)) - exact), int(np.array(f).view(np.uint32)) & 1))
    return np.float32(best)


def test_fma_emulation_is_correctly_rounded():
    rng = np.random.default_rng(11)
    a = rng.standard_normal(400).astype(np.float32)
    b = rng.standard_normal(400).astype(np.float32)
    c = (rng.standard_normal(400) * 10.0 ** rng.integers(-9, 9, 400)).astype(np.float32)
    # hard cases: products that sit just off a float32 midpoint, as in the known answers above
    a[:3] = [2.8125, 2.90625, 3.0]
    b[:3] = [np.float32(-1 / 0.375), np.float32(-1 / 0.1875), np.float32(-1 / 0.375)]
    c[:3] = [8.5, 16.5, 8.5]
    got = ref._fma_f32(a, b, c)
    want = np.array([_exact_fmaf(*t) for t in zip(a, b, c)], dtype=np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_fused_multiply_add_changes_only_the_symmetric_formats():
    """Contraction can change q only where `+ c` cancels part of a negative product (Q4_0, Q5_0).
    For Q4_1/Q5_1 the product is >= 0 and `+ 0.5` never crosses a binade downwards, so the f32
    threshold for reaching an integer is the same with one rounding or two; Q8_0 has no add."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((512, 1024)).astype(np.float16).astype(np.float32)  # f16 weights, as whisper's
    for qtype in QTYPES:
        size = BLOCK_SIZES[qtype][1]
        plain = ref.quantize(x, qtype).reshape(-1, size)
        fused = ref.quantize(x, qtype, fused_multiply_add=True).reshape(-1, size)
        n_diff = int((plain != fused).any(axis=1).sum())
        if qtype in (GGMLType.Q4_0, GGMLType.Q5_0):
            assert 0 < n_diff < plain.shape[0] // 1000, (qtype.name, n_diff)
            assert np.array_equal(plain[:, :2], fused[:, :2])  # d never changes, only q
        else:
            assert n_diff == 0, (qtype.name, n_diff)


# ------------------------------------------------------------------------------------------
# Input policy
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", QTYPES)
def test_quantize_rejects_non_finite_input_naming_row_and_block(qtype):
    x = np.ones((3, 4, 96), dtype=np.float32)
    x[2, 1, 40] = np.nan
    x[0, 0, 3] = -np.inf
    with pytest.raises(ValueError, match=r"non-finite value in row \(0, 0\), block 0 .*2 such blocks"):
        quantize(x, qtype)
    x[0, 0, 3] = 1
    with pytest.raises(ValueError, match=r"row \(2, 1\), block 1 \(elements 32:64 of the row\)"):
        quantize(x, qtype)


@pytest.mark.parametrize(
    "qtype, x, field",
    [
        (GGMLType.Q4_0, blk(524288), "d"),  # d = 65536 -> inf (the Q4_0 +-max known answer is 524032)
        (GGMLType.Q5_0, blk(-1048576), "d"),
        (GGMLType.Q8_0, blk(65520 * 127), "d"),  # d = 65520: the f16 tie rounds to even, i.e. inf
        (GGMLType.Q4_1, blk(-3e38, 3e38), "d"),  # max - min overflows float32
        (GGMLType.Q4_1, blk(fill=-70000), "m"),  # d = 0 fits, m does not
        (GGMLType.Q5_1, blk(70000, fill=65536), "m"),
    ],
)
def test_quantize_rejects_blocks_whose_f16_scale_overflows(qtype, x, field):
    rows = np.stack([blk(fill=1.0), x])
    with pytest.raises(ValueError, match=rf"scale {field} overflows to inf in row \(1,\), block 0"):
        quantize(rows, qtype)


def test_f32_f16_keep_non_finite_values():
    x = np.array([np.inf, -np.inf, 1e6, -1e6], dtype=np.float32)
    assert quantize(x, GGMLType.F16).view("<u2").tolist() == [0x7C00, 0xFC00, 0x7C00, 0xFC00]
    assert np.array_equal(dequantize(quantize(x, GGMLType.F32), GGMLType.F32, (4,)), x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(np.zeros((2, 48), np.float32), GGMLType.Q8_0)
    with pytest.raises(ValueError, match="float array"):
        quantize(np.zeros(32, np.int32), GGMLType.Q8_0)
    with pytest.raises(ValueError, match=r"needs 68 bytes, got 67"):
        dequantize(np.zeros(67, np.uint8), GGMLType.Q8_0, (2, 32))
    with pytest.raises(ValueError, match="Q4_K .id 12. is not supported"):
        dequantize(np.zeros(144, np.uint8), 12, (256,))
    with pytest.raises(ValueError, match="uint8"):
        dequantize(np.zeros(8, np.float32), GGMLType.Q8_0, (32,))


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_dequantize_any_bytes_without_error_or_warning(qtype):
    """Random bytes include NaN/Inf scales and f16 NaN payloads: no exception, no numpy warning,
    and every weight of a block with a finite scale is finite."""
    rng = np.random.default_rng(13)
    block, size = BLOCK_SIZES[qtype]
    raw = rng.integers(0, 256, 4096 * size, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = dequantize(raw, qtype, (4096 * block,))
    if qtype in QTYPES:
        scales = raw.reshape(-1, size)[:, : 4 if qtype in (GGMLType.Q4_1, GGMLType.Q5_1) else 2]
        finite = (scales.copy().view("<u2") & 0x7C00 != 0x7C00).all(axis=1)
        assert np.isfinite(y.reshape(-1, QK)[finite]).all() and not np.isfinite(y).all()
    assert bytes(raw[:8]) == bytes(np.random.default_rng(13).integers(0, 256, 8, dtype=np.uint8))  # untouched


# ------------------------------------------------------------------------------------------
# Against gguf (gguf-py's numpy port of ggml-quants.c)
# ------------------------------------------------------------------------------------------


def _report(ours: np.ndarray, theirs: np.ndarray, row_bytes: int, what: str, bad: np.ndarray | None = None) -> str:
    """gguf-py's compare_tensors summary: bad blocks, worst block, differing bits."""
    a = np.ascontiguousarray(ours).view(np.uint8).reshape(-1, row_bytes)
    b = np.ascontiguousarray(theirs).view(np.uint8).reshape(-1, row_bytes)
    diff_bits = np.unpackbits(a ^ b, axis=1).sum(axis=1)
    bad = np.flatnonzero(diff_bits) if bad is None else bad
    if bad.size == 0:
        return f"{what}: all {a.shape[0]} blocks equal"
    worst = bad[np.argmax(diff_bits[bad])]
    return (
        f"{what}: {bad.size} bad blocks ({100 * bad.size / a.shape[0]:.4f}%), "
        f"{int(diff_bits[bad].sum())} bits differ; worst block {worst} ({diff_bits[worst]} bits):\n"
        f"  ours: {a[worst].tobytes().hex()}\n  gguf: {b[worst].tobytes().hex()}"
    )


def _gguf_signed_zero_deviation(qtype: GGMLType, x: np.ndarray) -> np.ndarray:
    """Blocks (n, 32) where gguf's bytes may differ from C's because of the sign of a zero:
    Q4_0/Q5_0: an all-zero block whose first weight is -0.0 (gguf takes max = x[argmax|x|] = -0.0,
    so d = +0.0; C keeps its initial max = +0.0f, so d = -0.0); Q4_1/Q5_1: a block whose min or
    max is zero with zeros of both signs (np.min/np.max may return either zero; C keeps the first)."""
    zero = x == 0
    neg0 = zero & np.signbit(x)
    if qtype in (GGMLType.Q4_0, GGMLType.Q5_0):
        return zero.all(axis=1) & neg0[:, 0]
    if qtype in (GGMLType.Q4_1, GGMLType.Q5_1):
        both = neg0.any(axis=1) & (zero & ~np.signbit(x)).any(axis=1)
        return both & ((x.min(axis=1) == 0) | (x.max(axis=1) == 0))
    return np.zeros(x.shape[0], dtype=bool)


def _test_tensors() -> list[tuple[str, np.ndarray]]:
    """Seeded data of irregular shapes, plus blocks planted to hit every edge of the C code."""
    rng = np.random.default_rng(2024)
    t = [
        ("randn (7, 96)", rng.standard_normal((7, 96))),
        ("f16 randn (3, 5, 1536)", rng.standard_normal((3, 5, 1536)).astype(np.float16)),
        ("student-t (33, 384)", rng.standard_t(2, (33, 384))),
        ("uniform offset (13, 224)", rng.uniform(99, 101, (13, 224))),
        ("small ints (9, 160)", rng.integers(-20, 21, (9, 160))),
        ("whisper-like (384, 1280)", rng.standard_normal((384, 1280)) * 0.02),
        ("one row (1, 51872)", rng.standard_normal((1, 51872)) * 10.0 ** rng.integers(-6, 3, (1, 51872))),
    ]
    edge = rng.standard_normal((40, QK))
    edge[0] = 0  # all zero
    edge[1] = -0.0  # all -0.0
    edge[2, ::2], edge[2, 1::2] = -0.0, 0.0  # alternating zeros, -0 first
    edge[3, ::2], edge[3, 1::2] = 0.0, -0.0
    edge[4] = 0.5  # constant
    edge[5] = -3.25
    edge[6, 5:] = 0.0  # a few values, then zeros (min or max 0)
    edge[6, 9] = -0.0
    edge[7] = rng.standard_normal(QK) * 2.0**-130  # subnormal: 1/d overflows
    edge[8] = rng.standard_normal(QK) * 1e-9  # f16 scale underflows to 0
    edge[9] = rng.standard_normal(QK) * 1e-6  # f16-subnormal scales
    edge[10] = 65504 * np.sign(rng.standard_normal(QK))  # the f16 max, both signs
    edge[11, :] = 1.0
    edge[11, 7] = -1.0  # ties of |max| with opposite signs: the first one wins
    edge[12, :] = -1.0
    edge[12, 3] = 1.0
    edge[13] = np.arange(QK) - 16  # ramps
    edge[14] = np.arange(QK)
    edge[15] = 1000 + rng.standard_normal(QK) * 1e-3  # large offset, tiny range
    edge[16, 0], edge[16, 1] = 3.0, 2.8125  # the FMA case (no difference without contraction)
    edge[17] = np.linspace(-8, 7, QK)  # many exact half-integers after scaling
    edge[18] = rng.integers(-8, 8, QK) * 0.5
    t.append(("edge blocks (40, 32)", edge))
    return [(name, np.asarray(a, dtype=np.float32)) for name, a in t]


TEST_TENSORS = _test_tensors()


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_quantize_matches_gguf(qtype):
    gguf = pytest.importorskip("gguf")
    size = BLOCK_SIZES[qtype][1]
    explained_total = 0
    for name, x in TEST_TENSORS:
        ours = quantize(x, qtype)
        with np.errstate(all="ignore"):  # gguf's own 1/d overflow and NaN casts in the tiny blocks
            theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(qtype)))
        theirs = np.ascontiguousarray(theirs).view(np.uint8).reshape(-1)
        if qtype in QTYPES:
            a, b = ours.reshape(-1, size), theirs.reshape(-1, size)
            bad = (a != b).any(axis=1)
            explained = bad & _gguf_signed_zero_deviation(qtype, x.reshape(-1, QK))
            unexplained = np.flatnonzero(bad & ~explained)
            explained_total += int(explained.sum())
            # an explained deviation is the sign bit of d and/or m and nothing else
            xor = a[explained] ^ b[explained]
            assert not xor[:, 4:].any() and not (xor[:, :4] & 0x7F).any(), name
            assert unexplained.size == 0, _report(ours, theirs, size, f"{qtype.name} quantize, {name}", unexplained)
        else:
            assert np.array_equal(ours, theirs), _report(ours, theirs, 2 * QK, f"{qtype.name} quantize, {name}")
    if qtype in (GGMLType.Q4_0, GGMLType.Q5_0):
        assert explained_total == 2  # edge blocks 1 (all -0.0) and 2 (alternating zeros, -0.0 first)
    # (Q4_1/Q5_1: whether np.min picks -0 or +0 is numpy's business; 0..3 blocks are expected)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_dequantize_matches_gguf(qtype):
    """Bit for bit on the quantized test tensors and on random bytes (NaN/Inf scales included).
    The one deviation is F16 signalling NaNs (0x7C01-0x7DFF and negatives): numpy's cast keeps
    them signalling, ggml (and x86's cvtph2ps) quiet them; those 1022 codes are checked apart."""
    gguf = pytest.importorskip("gguf")
    gtype = gguf.GGMLQuantizationType(int(qtype))
    block, size = BLOCK_SIZES[qtype]
    rng = np.random.default_rng(14)
    inputs = [(name, quantize(x, qtype), x.shape) for name, x in TEST_TENSORS]
    inputs.append(("random bytes", rng.integers(0, 256, (37, 48 * size), dtype=np.uint8).reshape(-1), (37, 48 * block)))
    for name, raw, shape in inputs:
        ours = dequantize(raw, qtype, shape)
        with np.errstate(all="ignore"):  # inf*0 in random bytes' inf scales
            theirs = gguf.quants.dequantize(raw.reshape(*shape[:-1], -1), gtype).reshape(shape)
        keep = np.ones(ours.size, dtype=bool)
        if qtype == GGMLType.F16:
            h = raw.view("<u2")
            snan = ((h & 0x7C00) == 0x7C00) & ((h & 0x03FF) != 0) & ((h & 0x0200) == 0)
            o, t = ours.reshape(-1).view(np.uint32), theirs.reshape(-1).view(np.uint32)
            assert np.array_equal(o[snan], t[snan] | 0x00400000), name  # same payload, quiet bit set
            keep = ~snan
        o, t = ours.reshape(-1)[keep], theirs.reshape(-1)[keep]
        assert np.array_equal(o.view(np.uint32), t.view(np.uint32)), _report(
            ours, theirs, 4 * QK if ours.size % QK == 0 else 4, f"{qtype.name} dequantize, {name}"
        )


def test_real_whisper_cpp_file_dequantizes_like_gguf(shared_q5_1):
    """Every tensor of whisper.cpp's own Q5_1 file (Q5_1, F16 and F32 tensors), bit for bit."""
    gguf = pytest.importorskip("gguf")
    from qwhisper.ggml_file import read_ggml

    f = read_ggml(shared_q5_1)
    seen = {}
    for name, t in f.tensors.items():
        ours = dequantize(t.data, t.ggml_type, t.shape)
        assert ours.shape == t.shape and ours.dtype == np.float32
        theirs = gguf.quants.dequantize(
            np.asarray(t.data).reshape(*t.shape[:-1], -1), gguf.GGMLQuantizationType(int(t.ggml_type))
        ).reshape(t.shape)
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), _report(
            ours, theirs, 4, f"{name} ({t.ggml_type.name})"
        )
        assert np.isfinite(ours).all(), name
        seen[t.ggml_type] = seen.get(t.ggml_type, 0) + 1
    assert seen.get(GGMLType.Q5_1, 0) >= 60 and GGMLType.F32 in seen and GGMLType.F16 in seen, seen


# ------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_requantizing_dequantized_blocks_gives_the_same_bytes(qtype):
    """quantize(dequantize(b)) == b when every block's f16 scale d is nonzero.

    Q4_0/Q5_0/Q8_0, by construction: the weight of largest magnitude has q = 0 (resp. +-127), so it
    dequantizes to exactly -8d (16d, 127|d|) and requantizing recovers d exactly; every other
    weight is (q - 8)*d, which x/d maps back to q - 8 within a few ulps, far from the rounding
    thresholds. Q4_1/Q5_1: min is recovered exactly (q = 0 -> m); max' = fl(15d + m) is rounded in
    float32, so d' = (max' - m)/15 can differ from d by ulp32(max')/30, under half an f16 ulp of d
    except where |m| >> d. Measured, not proven, for those two: no failure on this data.
    Where d rounds to 0 in f16 (|x| below ~1e-8 x 8 .. 127) the round trip fails by design:
    the weights dequantize to 0 (or m), see the Q8_0 "scale underflows" known answer."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((64, 512)) * 10.0 ** rng.integers(-5, 4, (64, 1))
    x[:8] += 10.0 ** rng.integers(-2, 4, (8, 1))  # offsets for the _1 formats
    x = x.astype(np.float32)
    raw = quantize(x, qtype)
    if qtype in QTYPES:
        d = ref.fp16_bits_to_fp32(raw.reshape(-1, BLOCK_SIZES[qtype][1])[:, :2].copy().view("<u2")[:, 0])
        assert (d != 0).all()  # the precondition holds on this data
    again = quantize(dequantize(raw, qtype, x.shape), qtype)
    assert np.array_equal(again, raw), _report(again, raw, BLOCK_SIZES[qtype][1] if qtype in QTYPES else 2, qtype.name)


def test_requantizing_a_block_whose_scale_underflowed_loses_it():
    """The limit of the round trip above, as a known answer: Q8_0 of 1e-10 stores d = 0, q = 127."""
    raw = quantize(blk(1e-10), GGMLType.Q8_0)
    assert not dequantize(raw, GGMLType.Q8_0, (QK,)).any()
    assert quantize(dequantize(raw, GGMLType.Q8_0, (QK,)), GGMLType.Q8_0).tobytes() == bytes(34)


def test_f16_round_trip_every_code():
    codes = np.arange(1 << 16, dtype=np.uint32).astype("<u2")
    nan = ((codes & 0x7C00) == 0x7C00) & ((codes & 0x03FF) != 0)
    back = quantize(dequantize(codes.view(np.uint8), GGMLType.F16, (1 << 16,)), GGMLType.F16).view("<u2")
    assert np.array_equal(back[~nan], codes[~nan])
    assert set((back[nan] & 0x7FFF).tolist()) == {0x7E00}  # ggml's canonical NaN, sign kept
