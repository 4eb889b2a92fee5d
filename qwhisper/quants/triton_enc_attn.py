"""Cross-attention of a batched step read from the encoder output instead of the cross K/V.

A prototype (performance.md 18.7-18.8), not yet run on a GPU: the model takes it behind
`model.CROSS_FROM_ENCODER` (off); `benchmarks/bench_enc_attn.py` sets it beside today's
cross-attention (`triton_decoder.attention` over K and V) at the batched step's shapes, and
tests/test_enc_attn.py checks its arithmetic under the interpreter and on the GPU.

Why: a window's cross keys and values are both projections of its encoder output E (S x C),
K = E W_k^T + b_k and V = E W_v^T + b_v, and with D-wide heads (rows hD .. hD+D-1 of W_k, W_v):

    q_h . K_h^T = (W_k,h^T q_h) . E^T + q_h . b_k,h    the last term is the same for every key,
                                                        so the softmax drops it
    P_h . V_h   = W_v,h (P_h . E) + b_v,h              P_h (a softmax row) sums to 1

So one pass over E per layer and row (S x C float16) does what K and V (2 x S x C) do now, at the
price of two small grouped products on weights the step reads anyway (Q' = W_k,h^T q_h before,
W_v,h U_h after) and [heads, C] accumulators a row instead of [heads, D]. At a batched large-v3
step of 25 windows that is 96 MB a layer instead of 192 (the cross-attention is ~40 % of the
batched run, at ~90 % of copy bandwidth), and 25 x 3.8 MB of E in VRAM instead of 6.1 GB of K/V.
The one-row step keeps K and V: it would pay two more dependent kernels a layer to save bytes
that its cross-attention already loads before its PDL wait.

The kernel: programs (row, group of HG heads) x key split. Each holds its heads' Q'^T [C, HG] and
U^T [C, HG] (float32) cut into NCH column chunks on a batch axis (a warp each), and for every BS
keys loads E's rows once for both products on tensor cores: each chunk's share of the scores^T
E_t,chunk . Q'^T_chunk, summed over the chunks, online softmax in log2 units (Q' comes scaled by
log2(e)/sqrt(D)), U^T_chunk = U^T_chunk * alpha + E_t,chunk^T . P^T (P rounded to float16, as
flash attention does). C = C1 + C2 with both powers of 2 (384 = 256 + 128, 1280 = 1024 + 256, ...):
no masked columns. The splits' (U, max, sum) are
combined in split order by `_enc_attn_combine_kernel`, so the result is the same bits every time.
The two products read the weights' blocks (`query_product_blocks`, which also sums the query
product's split-K partials, and `value_product_blocks`); `query_product` / `value_product` do
the same through cuBLAS on float16 copies (the model's way for float16 weights, and the tests').
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from qwhisper.quants import triton_ops  # (also: the interpreter's fix for run-time loop bounds)
from qwhisper.quants.triton_ops import _dequant_tile, _partials_at

# Heads a program (the tensor-core N side; Whisper's 6..20 heads padded). The first form (heads on
# M, keys on N, 16 keys a step) measured 100-130 us a layer at 25 rows on an H100 (call s18a):
# its [16, C] Q' operand was read from shared memory by all 8 warps every step. Now C is cut into
# NCH chunks on a 3-d dot's batch axis, a warp each. Offline sm_90 compiles of large-v3's tile
# (C 1024 + 256, 8 chunks, 8 warps): 16 heads x 32 keys 252 registers, no spills, 120 KB of
# shared memory; 32 heads x 16 keys spills 184 bytes; 16 warps spill in every form tried.
HEAD_GROUP = 16
KEYS_STEP = 32  # keys a loop step (E rows loaded once for the scores and for P . E)
# Programs to aim at (keys_split=None): 252 registers a thread on 8 warps, so one program an SM:
# two waves of an H100's 132 SMs. 25 rows x 2 head groups -> 5 splits of 320 keys, 250 programs.
TARGET_PROGRAMS = 264
WARPS = 8  # and up to 8 chunks of C (chunks_for)


def split_width(c: int) -> tuple[int, int]:
    """C = C1 + C2, C1 the largest power of 2 <= C and C2 a power of 2 or 0; ValueError otherwise."""
    c1 = 1 << (c.bit_length() - 1)
    c2 = c - c1
    if c2 & (c2 - 1) or c < 16 or (c2 and c2 < 16):
        raise ValueError(f"the encoder-output attention needs C = two powers of 2 >= 16, got {c}")
    return c1, c2


@triton.jit
def _enc_attn_kernel(
    qp_ptr, stride_qr, stride_qh,  # (R, H, C) float16 Q' (any row and head strides), last axis contiguous
    e_ptr, stride_ew, stride_es,  # (W, S, C) float16 encoder outputs, last axis contiguous
    win_ptr,  # (R,) int32: the window of each row
    part_u, part_ml,  # (R * NG * SPLITS, HG, C) float32 U; (R * NG * SPLITS, HG, 2) max, sum
    S, H, KEYS,  # keys; heads; keys a split (a multiple of BS)
    C1: tl.constexpr, C2: tl.constexpr, HG: tl.constexpr, BS: tl.constexpr, NCH: tl.constexpr,
):
    pid = tl.program_id(0)  # row * NG + head group
    split = tl.program_id(1)
    n_split = tl.num_programs(1)
    ng = tl.cdiv(H, HG)
    r = pid // ng
    hh = (pid % ng) * HG + tl.arange(0, HG)
    hok = (hh < H)[None, None, :]
    C: tl.constexpr = C1 + C2
    W1: tl.constexpr = C1 // NCH
    W2: tl.constexpr = C2 // NCH
    # C in NCH chunks on a batch axis (a warp each): no operand is read by more than one warp
    q_cols = qp_ptr + r.to(tl.int64) * stride_qr + hh.to(tl.int64)[None, None, :] * stride_qh  # [1, 1, HG]
    e_rows = e_ptr + tl.load(win_ptr + r).to(tl.int64) * stride_ew
    ch = tl.arange(0, NCH)[:, None, None]
    c1 = ch * W1 + tl.arange(0, W1)[None, :, None]  # [NCH, W1, 1]
    e1c = ch * W1 + tl.arange(0, W1)[None, None, :]  # [NCH, 1, W1]
    q1 = tl.load(q_cols + c1, mask=hok, other=0.0)  # [NCH, W1, HG] Q'^T; padded heads 0: finite, not stored
    u1 = tl.zeros([NCH, W1, HG], dtype=tl.float32)  # U^T
    if C2 > 0:
        c2 = C1 + ch * W2 + tl.arange(0, W2)[None, :, None]
        e2c = C1 + ch * W2 + tl.arange(0, W2)[None, None, :]
        q2 = tl.load(q_cols + c2, mask=hok, other=0.0)
        u2 = tl.zeros([NCH, W2, HG], dtype=tl.float32)
    m_i = tl.full([HG], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([HG], dtype=tl.float32)
    t_first = split * KEYS
    for t0 in range(t_first, tl.minimum(t_first + KEYS, S), BS):
        tt = t0 + tl.arange(0, BS)
        tok = tt < S
        at = e_rows + tt.to(tl.int64)[None, :, None] * stride_es  # [1, BS, 1]
        # (no evict-first hint, unlike the K/V kernel: the row's other head groups read these lines too)
        e1 = tl.load(at + e1c, mask=tok[None, :, None], other=0.0)  # [NCH, BS, W1]
        sc = tl.dot(e1, q1)  # [NCH, BS, HG] float32: each chunk's share of the scores, log2 units
        if C2 > 0:
            e2 = tl.load(at + e2c, mask=tok[None, :, None], other=0.0)
            sc = tl.dot(e2, q2, sc)
        st = tl.where(tok[:, None], tl.sum(sc, axis=0), float("-inf"))  # [BS, HG] scores^T
        m_new = tl.maximum(m_i, tl.max(st, axis=0))  # finite: every step has a key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(st - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p, axis=0)
        pf = tl.broadcast_to(p.to(e1.dtype)[None, :, :], (NCH, BS, HG))
        u1 = tl.dot(tl.trans(e1, (0, 2, 1)), pf, u1 * alpha[None, None, :])  # [NCH, W1, HG]
        if C2 > 0:
            u2 = tl.dot(tl.trans(e2, (0, 2, 1)), pf, u2 * alpha[None, None, :])
        m_i = m_new
    part = (pid * n_split + split).to(tl.int64)
    hg = tl.arange(0, HG)[None, None, :]
    tl.store(part_u + (part * HG + hg) * C + c1, u1, mask=hok)  # the real heads only
    if C2 > 0:
        tl.store(part_u + (part * HG + hg) * C + c2, u2, mask=hok)
    tl.store(part_ml + (part * HG + tl.arange(0, HG)) * 2, m_i)
    tl.store(part_ml + (part * HG + tl.arange(0, HG)) * 2 + 1, l_i)


def chunks_for(c1: int, c2: int) -> int:
    """C chunks a program (the kernel's batch axis): the most, up to WARPS, that leave every chunk
    of C1 and of C2 (if any) >= 16 columns (the tensor cores' K and M)."""
    n = WARPS
    while n > 1 and (c1 // n < 16 or (c2 and c2 // n < 16)):
        n //= 2
    return n


@triton.jit
def _enc_attn_combine_kernel(part_u, part_ml, out_ptr, stride_or, stride_oh, H, C,
                             HG: tl.constexpr, SPLITS: tl.constexpr, SP2: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[r, h, cols] = sum_s 2^(m_s - m) u_s / sum_s 2^(m_s - m) l_s over the splits, in split order."""
    rh = tl.program_id(0)  # row * H + head
    r = rh // H
    h = rh % H
    ng = tl.cdiv(H, HG)
    sp = tl.arange(0, SP2)
    sok = sp < SPLITS
    part = ((r * ng + h // HG) * SPLITS + sp).to(tl.int64) * HG + h % HG  # [SP2] (part, head) slots
    mp = tl.load(part_ml + part * 2, mask=sok, other=float("-inf"))
    lp = tl.load(part_ml + part * 2 + 1, mask=sok, other=0.0)
    wgt = tl.exp2(mp - tl.max(mp, axis=0))  # 0 for missing splits
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = cc < C
    up = tl.load(part_u + part[:, None] * C + cc[None, :], mask=sok[:, None] & ok[None, :], other=0.0)
    u = tl.sum(up * wgt[:, None], axis=0) / tl.sum(lp * wgt, axis=0)
    tl.store(out_ptr + r.to(tl.int64) * stride_or + h.to(tl.int64) * stride_oh + cc, u.to(out_ptr.dtype.element_ty),
             mask=ok)


def keys_split_for(rows: int, n_head: int, s: int) -> int:
    """Keys a program: the splits that bring rows x head groups x splits nearest TARGET_PROGRAMS
    (at least one), as a multiple of KEYS_STEP."""
    splits = max(1, round(TARGET_PROGRAMS / (rows * triton.cdiv(n_head, HEAD_GROUP))))
    return triton.cdiv(triton.cdiv(s, splits), KEYS_STEP) * KEYS_STEP


def enc_attention(qp: torch.Tensor, enc: torch.Tensor, windows: torch.Tensor, out: torch.Tensor | None = None,
                  keys_split: int | None = None) -> torch.Tensor:
    """U[r, h] = softmax_t(ln 2 * Q'[r, h] . E[w_r, t]) . E[w_r] for every row r and head h.

    qp (R, H, C) float16: W_k,h^T q_h of each row, scaled by log2(e)/sqrt(D) (`query_product`);
    any row and head strides (a (H, R, C) tensor's transpose, say), the last axis contiguous.
    enc (W, S, C) float16: the encoder output of each window; windows (R,) int32: row r's window.
    Returns (R, H, C) float32, or writes `out` (R, H, C) of any float dtype and strides with a
    contiguous last axis. keys_split: keys a program, a multiple of KEYS_STEP (None: keys_split_for)."""
    r, h, c = qp.shape
    _, s, ce = enc.shape
    if keys_split is None:
        keys_split = keys_split_for(r, h, s)
    if ce != c or qp.dtype != enc.dtype or enc.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"Q' (R, H, C) and E (W, S, C) must share C and a 16-bit dtype, got {tuple(qp.shape)} "
                         f"{qp.dtype}, {tuple(enc.shape)} {enc.dtype}")
    if windows.shape != (r,) or windows.dtype != torch.int32:
        raise ValueError(f"windows must be ({r},) int32, got {tuple(windows.shape)} {windows.dtype}")
    if qp.stride(2) != 1 or enc.stride(2) != 1 or (out is not None and (out.shape != qp.shape or out.stride(2) != 1)):
        raise ValueError("Q', E and out need a contiguous last axis, and out Q''s shape")
    if keys_split % KEYS_STEP or keys_split <= 0:
        raise ValueError(f"keys_split must be a multiple of {KEYS_STEP}, got {keys_split}")
    c1, c2 = split_width(c)
    hg = HEAD_GROUP
    ng, splits = triton.cdiv(h, hg), triton.cdiv(s, keys_split)
    part_u = torch.empty((r * ng * splits, hg, c), dtype=torch.float32, device=qp.device)
    part_ml = torch.empty((r * ng * splits, hg, 2), dtype=torch.float32, device=qp.device)
    _enc_attn_kernel[(r * ng, splits)](qp, qp.stride(0), qp.stride(1), enc, enc.stride(0), enc.stride(1), windows,
                                       part_u, part_ml, s, h, keys_split, C1=c1, C2=c2, HG=hg, BS=KEYS_STEP,
                                       NCH=chunks_for(c1, c2), num_warps=WARPS)
    if out is None:
        out = torch.empty((r, h, c), dtype=torch.float32, device=qp.device)
    block_c = min(1024, triton.next_power_of_2(c))
    _enc_attn_combine_kernel[(r * h, triton.cdiv(c, block_c))](part_u, part_ml, out, out.stride(0), out.stride(1), h, c,
                                                                 HG=hg, SPLITS=splits, SP2=triton.next_power_of_2(splits),
                                                                 BLOCK_C=block_c)
    return out


def attend(qp: torch.Tensor, enc: torch.Tensor, windows: torch.Tensor, keys_split: int | None = None) -> torch.Tensor:
    """U (H, R, C) of Q''s dtype from Q' (H, R, C), heads first as query_product(_blocks) give it
    and value_product(_blocks) take it: enc_attention on the transposed views."""
    u = torch.empty_like(qp)
    enc_attention(qp.transpose(0, 1), enc, windows, out=u.transpose(0, 1), keys_split=keys_split)
    return u


def key_scale(d: int) -> float:
    """What Q' is multiplied by: the softmax's 1/sqrt(D), in log2 units (the kernel uses exp2)."""
    return math.log2(math.e) / math.sqrt(d)


def head_weights(w: torch.Tensor, n_head: int, scale: float = 1.0) -> torch.Tensor:
    """(C, C) projection weight -> (H, D, C) float16, rows hD .. hD+D-1 of head h, times `scale`
    (the key's log2(e)/sqrt(D), so that Q' comes scaled). Float32 multiply, one rounding."""
    c = w.shape[0]
    return (w.float() * scale).to(torch.float16).reshape(n_head, c // n_head, w.shape[1]).contiguous()


def query_product(q: torch.Tensor, w_k: torch.Tensor) -> torch.Tensor:
    """Q' (H, R, C) float16 = W_k,h^T q_h for every head: q (R, C) float16, w_k (H, D, C) from
    head_weights (scaled). One batched GEMM over the heads (the model's way for float16 weights;
    block weights: query_product_blocks)."""
    h, d, _ = w_k.shape
    return torch.bmm(q.reshape(q.shape[0], h, d).transpose(0, 1), w_k)


def value_product(u: torch.Tensor, w_v: torch.Tensor, b_v: torch.Tensor | None) -> torch.Tensor:
    """o (R, C) = W_v,h U_h (+ b_v) for every head: u (H, R, C) float16 (enc_attention's out,
    transposed), w_v (H, D, C) from head_weights. One batched GEMM and one copy."""
    h, r, c = u.shape
    bias = None if b_v is None else b_v.to(u.dtype).reshape(h, 1, c // h)
    o = torch.bmm(u, w_v.transpose(1, 2)) if bias is None else torch.baddbmm(bias, u, w_v.transpose(1, 2))
    return o.transpose(0, 1).reshape(r, c)  # (H, R, D) -> (R, H * D)


# ------------------------------------------------------------------------------------------
# The two grouped products on the weights' blocks (instead of float16 copies and cuBLAS)
# ------------------------------------------------------------------------------------------

PRODUCT_COLS = 256  # Q' columns a program (8 blocks of each of the head's D rows of W_k)
PRODUCT_STEP = 256  # C a step of the W_v product


@triton.jit
def _q_rows(q_ptr, stride_qm, q_bias, rows, h, M, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr,
            HAS_BIAS: tl.constexpr, D: tl.constexpr, C: tl.constexpr, dt: tl.constexpr):
    """q[r, hD .. hD+D-1] for rows `rows` [RB, 1] (past M: row M-1) as [RB, D] of dt: SPLIT > 0, the
    query product's split-K partials (split, BLOCK_M, C) summed in split order + bias and rounded as
    Partials.tensor() rounds them; SPLIT 0, a (M, C) tensor's rows."""
    dd = h * D + tl.arange(0, D)[None, :]
    rr = tl.minimum(rows, M - 1).to(tl.int64)
    if SPLIT > 0:
        return _partials_at(q_ptr, q_bias, rr, dd, dd >= 0, C, SPLIT, BLOCK_M, HAS_BIAS, dt).to(dt)
    else:
        return tl.load(q_ptr + rr * stride_qm + dd).to(dt)


@triton.jit
def _query_product_kernel(
    q_ptr, stride_qm, q_bias,  # (M, C) q, or (SPLIT > 0) its split-K partials (SPLIT, BLOCK_M, C) + bias
    w8, w16, qp_ptr,  # W_k's raw (C, C) blocks; Q' out (H, M, C) float16
    M, scale, magic,
    TS: tl.constexpr, M_B: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr, BITS: tl.constexpr,
    ZERO: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, HAS_BIAS: tl.constexpr,
    D: tl.constexpr, C: tl.constexpr, RB: tl.constexpr, NB: tl.constexpr,
):
    """Q'[h, r, cols] = scale * q_h[r] . W_k[hD .. hD+D-1, cols]: program (head, NB*32 columns)."""
    h = tl.program_id(0)
    cb = tl.program_id(1)
    rows = tl.arange(0, RB)[:, None]
    dt = qp_ptr.dtype.element_ty
    q = _q_rows(q_ptr, stride_qm, q_bias, rows, h, M, SPLIT, BLOCK_M, HAS_BIAS, D, C, dt)  # [RB, D]
    wr = (h * D + tl.arange(0, D)).to(tl.int64)[:, None, None] * (C // 32 * TS)  # [D, 1, 1] row bytes
    base = wr + (cb * NB + tl.arange(0, NB))[None, :, None] * TS  # [D, NB, 1]
    w = _dequant_tile(w8, w16, base, base >= 0, magic, dt, M_B, QH_B, QS_B, BITS, ZERO, D, NB, True)  # [D, NB*32]
    y = tl.dot(q, w) * scale  # [RB, NB*32] float32
    cols = cb * NB * 32 + tl.arange(0, NB * 32)[None, :]
    tl.store(qp_ptr + (h * M + rows).to(tl.int64) * C + cols, y.to(dt), mask=rows < M)


@triton.jit
def _value_product_kernel(
    u_ptr,  # (H, M, C) U, float16
    w8, w16, bias_ptr, out_ptr,  # W_v's raw (C, C) blocks; b_v (C,); o out (M, C)
    M, magic,
    TS: tl.constexpr, M_B: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr, BITS: tl.constexpr,
    ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, D: tl.constexpr, C: tl.constexpr, RB: tl.constexpr,
    NR: tl.constexpr, NB: tl.constexpr,
):
    """o[r, hD + j] = W_v[hD + j] . U[h, r] (+ b_v) for NR of the head's rows j: program (head, NR rows)."""
    h = tl.program_id(0)
    j0 = tl.program_id(1) * NR
    rows = tl.arange(0, RB)[:, None]
    rr = tl.minimum(rows, M - 1).to(tl.int64)
    dt = u_ptr.dtype.element_ty
    wr = (h * D + j0 + tl.arange(0, NR)).to(tl.int64)[:, None, None] * (C // 32 * TS)  # [NR, 1, 1]
    acc = tl.zeros([RB, NR], dtype=tl.float32)
    for c0 in tl.static_range(0, C, NB * 32):
        u = tl.load(u_ptr + (h * M + rr) * C + c0 + tl.arange(0, NB * 32)[None, :])  # [RB, NB*32]
        base = wr + (c0 // 32 + tl.arange(0, NB))[None, :, None] * TS
        w = _dequant_tile(w8, w16, base, base >= 0, magic, dt, M_B, QH_B, QS_B, BITS, ZERO, NR, NB, True)
        acc = tl.dot(u, tl.trans(w), acc)  # [RB, NR]
    cols = h * D + j0 + tl.arange(0, NR)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols).to(tl.float32)
    tl.store(out_ptr + rows.to(tl.int64) * C + cols, acc.to(out_ptr.dtype.element_ty), mask=rows < M)


def _block_layout(raw: torch.Tensor, ggml_type, c: int):
    w8, w16 = triton_ops._checked_bytes(raw, ggml_type, (c, c))
    return w8, w16, triton_ops._LAYOUT[ggml_type]


def query_product_blocks(q, w_k_raw: torch.Tensor, ggml_type, n_head: int, dtype: torch.dtype) -> torch.Tensor:
    """Q' (H, M, C) of `dtype` = key_scale(D) * W_k,h^T q_h from W_k's raw blocks (C, C): q a (M, C)
    tensor or the query product's triton_ops.Partials (summed here, as Partials.tensor() would).
    Columns a program: the largest power of 2 <= PRODUCT_COLS that divides C."""
    parts = q if isinstance(q, triton_ops.Partials) else None
    m, c = (parts.rows, parts.shape[-1]) if parts is not None else q.shape
    d = c // n_head
    w8, w16, (ts, m_b, qh_b, qs_b, bits, zero) = _block_layout(w_k_raw, ggml_type, c)
    cols = PRODUCT_COLS
    while c % cols:
        cols //= 2
    qp = torch.empty((n_head, m, c), dtype=dtype, device=w_k_raw.device)
    src = parts.parts if parts is not None else q
    bias = parts.bias if parts is not None and parts.bias is not None else src
    _query_product_kernel[(n_head, c // cols)](
        src, 0 if parts is not None else q.stride(0), bias, w8, w16, qp, m, key_scale(d), triton_ops._MAGIC_BITS,
        TS=ts, M_B=m_b, QH_B=qh_b, QS_B=qs_b, BITS=bits, ZERO=zero,
        SPLIT=parts.parts.shape[0] if parts is not None else 0, BLOCK_M=parts.parts.shape[1] if parts is not None else 1,
        HAS_BIAS=parts is not None and parts.bias is not None, D=d, C=c, RB=max(16, triton.next_power_of_2(m)),
        NB=cols // 32, num_warps=4)
    return qp


def value_product_blocks(u: torch.Tensor, w_v_raw: torch.Tensor, ggml_type, b_v: torch.Tensor | None,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """o (M, C) = W_v,h U_h + b_v from W_v's raw blocks: u (H, M, C) 16-bit (enc_attention's out,
    transposed), contiguous. Into `out` (M, C) if given, else a new tensor of u's dtype."""
    h, m, c = u.shape
    d = c // h
    w8, w16, (ts, m_b, qh_b, qs_b, bits, zero) = _block_layout(w_v_raw, ggml_type, c)
    step = PRODUCT_STEP
    while c % step:
        step //= 2
    if out is None:
        out = torch.empty((m, c), dtype=u.dtype, device=u.device)
    nr = 16
    _value_product_kernel[(h, d // nr)](
        u.contiguous(), w8, w16, b_v if b_v is not None else u, out, m, triton_ops._MAGIC_BITS,
        TS=ts, M_B=m_b, QH_B=qh_b, QS_B=qs_b, BITS=bits, ZERO=zero, HAS_BIAS=b_v is not None, D=d, C=c,
        RB=max(16, triton.next_power_of_2(m)), NR=nr, NB=step // 32, num_warps=4)
    return out
