"""One greedy step's logit rules, argmax and state update in two kernels (greedy_loop._advance).

greedy_loop._advance is ~20 small torch kernels a step: three masked fills, two log-softmax
over the vocabulary, a logsumexp, a max, an argmax, a gather and the state updates. On a GPU
each costs a launch and a pass over (rows, n_vocab) with one block a row, so at one row a step
of tiny spent more time there than in its decoder layers. Here:

1. `_chunks_kernel`, one program per (row, BLOCK ids of it): the masks applied as the values
   are loaded (the reference filters' masks, greedy_loop._Rules, and the row's timestamp
   bounds), then for each id range it overlaps -- text [0, EOT), the other specials
   [EOT, timestamp_begin), the timestamps -- the max, its first id and the sum of exp(x - max);
2. `_finish_kernel`, one program a row: the chunks combined in id order, then

    lse      = log(sum exp over all ids)                     (log_softmax's normaliser)
    ts_lp    = log(sum exp over timestamps) - lse            (logprobs[:, tb:].logsumexp())
    max_text = max over ids < timestamp_begin - lse           (logprobs[:, :tb].max())
    a timestamp if ts_lp > max_text: next = the timestamps' argmax, logprob = -log(their sum
    of exp(x - max)); else next = the argmax of all, logprob = -log(sum of exp(x - max)) --
    log_softmax(masked logits)[next]. The logits are never written.

   and greedy_loop._pick's state update. The shared token count n is advanced by the caller
   (a program doing it would race the others' reads).

Ties go to the lowest id, as torch's argmax. The sums are taken in another order than torch's,
so sum_lp agrees to float32 rounding, not bit for bit, and a timestamp decision can differ from
the torch one only where ts_lp and max_text tie to ~1e-7.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_ops  # noqa: F401  (its import fixes the interpreter's run-time loop bounds)

BLOCK = 2048  # logits a program scans: a row is split over cdiv(n_vocab, BLOCK) programs
WARPS = 4


@triton.jit
def _block(row_ptr, sup_ptr, lo, hi, ban_below, BLOCK: tl.constexpr):
    """Ids [lo, lo + BLOCK) & [lo, hi) of one row, those suppressed or < ban_below at -inf:
    (max, its first id, sum of exp(x - max)); (-inf, lo, 0) when all are masked."""
    ids = lo + tl.arange(0, BLOCK)
    ok = ids < hi
    x = tl.load(row_ptr + ids, mask=ok, other=float("-inf")).to(tl.float32)
    banned = (tl.load(sup_ptr + ids, mask=ok, other=1) != 0) | (ids < ban_below)
    x = tl.where(banned, float("-inf"), x)
    m = tl.max(x, axis=0)
    safe = tl.where(m == float("-inf"), 0.0, m)  # all masked: no NaN from -inf - -inf
    return m, lo + tl.argmax(x, axis=0, tie_break_left=True), tl.sum(tl.exp(x - safe), axis=0)


@triton.jit
def _bounds(last_ts_ptr, pen_ts_ptr, ts_val_ptr, r, V, EOT, TIMESTAMPS: tl.constexpr):
    """Row r's timestamp rules as two bounds: text ids below text_hi and timestamps below ts_lo
    are banned (greedy_loop._advance)."""
    last_ts = tl.load(last_ts_ptr + r) != 0
    pen_ts = tl.load(pen_ts_ptr + r) != 0
    ts_val = tl.load(ts_val_ptr + r)
    if TIMESTAMPS:
        closes = last_ts & (pen_ts == 0)  # text ts -> ts or EOT next
        text_hi = tl.where(closes, EOT, 0)
        # ts ts -> text next; else monotonic: > the last timestamp, >= it if closing a pair
        ts_lo = tl.where(last_ts & pen_ts, V, tl.where(closes, ts_val, ts_val + 1))
    else:
        text_hi = 0
        ts_lo = ts_val * 0
    return last_ts, ts_val, text_hi, ts_lo


@triton.jit
def _chunks_kernel(logits_ptr, stride_l, V, sup_ptr, last_ts_ptr, pen_ts_ptr, ts_val_ptr, part_ptr, TB, EOT,
                     TIMESTAMPS: tl.constexpr, CP: tl.constexpr, BLOCK: tl.constexpr):
    """Program (row r, chunk c): (max, first id, sum exp) of each id range within ids
    [c*BLOCK, (c+1)*BLOCK) -> part[r, side, 0..2, c]."""
    r = tl.program_id(0)
    c = tl.program_id(1)
    row = logits_ptr + r.to(tl.int64) * stride_l
    _, _, text_hi, ts_lo = _bounds(last_ts_ptr, pen_ts_ptr, ts_val_ptr, r, V, EOT, TIMESTAMPS)
    c0 = c * BLOCK
    c1 = tl.minimum(c0 + BLOCK, V)
    out = part_ptr + r.to(tl.int64) * (3 * 3 * CP) + c
    for side in tl.static_range(3):
        if side == 0:
            lo, hi, ban = 0, EOT, text_hi
        elif side == 1:
            lo, hi, ban = EOT, TB, 0
        else:
            lo, hi, ban = TB, V, ts_lo
        a = tl.maximum(lo, c0)
        b = tl.minimum(hi, c1)
        m, i, s = _block(row, sup_ptr, a, b, ban, BLOCK)  # empty when a >= b: (-inf, a, 0)
        tl.store(out + (side * 3) * CP, m)
        tl.store(out + (side * 3 + 1) * CP, s)
        tl.store(out + (side * 3 + 2) * CP, i.to(tl.float32))  # ids < 2^24: exact


@triton.jit
def _side(part_ptr, side: tl.constexpr, C, CP: tl.constexpr):
    """The chunks of one side combined: (max, first id of it, sum of exp(x - max))."""
    cc = tl.arange(0, CP)
    ok = cc < C
    m = tl.load(part_ptr + (side * 3) * CP + cc, mask=ok, other=float("-inf"))
    s = tl.load(part_ptr + (side * 3 + 1) * CP + cc, mask=ok, other=0.0)
    i = tl.load(part_ptr + (side * 3 + 2) * CP + cc, mask=ok, other=0.0)
    mx = tl.max(m, axis=0)
    safe = tl.where(mx == float("-inf"), 0.0, mx)
    total = tl.sum(tl.where(m == float("-inf"), 0.0, s * tl.exp(m - safe)), axis=0)
    first = tl.min(tl.where(m == mx, i, float("inf")), axis=0)  # the lowest id holding the max
    return mx, first.to(tl.int64), total


@triton.jit
def _pair(m_a, i_a, s_a, m_b, i_b, s_b):
    """Two id ranges, a before b, combined."""
    m = tl.maximum(m_a, m_b)
    safe = tl.where(m == float("-inf"), 0.0, m)
    return m, tl.where(m_b > m_a, i_b, i_a), s_a * tl.exp(m_a - safe) + s_b * tl.exp(m_b - safe)


@triton.jit
def _finish_kernel(part_ptr, C, V, buf_ptr, stride_b, n_ptr, last_ptr, last_ts_ptr, pen_ts_ptr, ts_val_ptr,
                   finished_ptr, sum_lp_ptr, TB, EOT, TIMESTAMPS: tl.constexpr, CP: tl.constexpr):
    """Row r: the chunks combined, the timestamp rule decided, the token picked, the state updated."""
    r = tl.program_id(0)
    last_ts, ts_val, _, _ = _bounds(last_ts_ptr, pen_ts_ptr, ts_val_ptr, r, V, EOT, TIMESTAMPS)
    part = part_ptr + r.to(tl.int64) * (3 * 3 * CP)
    m_a, i_a, s_a = _side(part, 0, C, CP)
    m_e, i_e, s_e = _side(part, 1, C, CP)
    m_t, i_t, s_t = _side(part, 2, C, CP)
    m_x, i_x, s_x = _pair(m_a, i_a, s_a, m_e, i_e, s_e)  # ids below timestamp_begin
    m, nxt, s = _pair(m_x, i_x, s_x, m_t, i_t, s_t)
    lp = -tl.log(s)  # log_softmax at the argmax: (max - max) - log(sum exp(x - max))
    if TIMESTAMPS:
        lse = m + tl.log(s)
        ts_lp = m_t + tl.log(s_t) - lse  # logprobs[tb:].logsumexp(); -inf when every timestamp is masked
        to_ts = ts_lp > m_x - lse  # ... > logprobs[:tb].max(): text masked, the timestamps' own normaliser
        nxt = tl.where(to_ts, i_t, nxt)
        lp = tl.where(to_ts, -tl.log(s_t), lp)
    fin = tl.load(finished_ptr + r) != 0
    tl.store(sum_lp_ptr + r, tl.load(sum_lp_ptr + r) + tl.where(fin, 0.0, lp))
    nxt = tl.where(fin, EOT, nxt)
    n = tl.load(n_ptr)
    tl.store(buf_ptr + r.to(tl.int64) * stride_b + n, nxt)
    tl.store(last_ptr + r, nxt)
    is_ts = nxt >= TB
    tl.store(pen_ts_ptr + r, last_ts.to(tl.uint8))
    tl.store(last_ts_ptr + r, is_ts.to(tl.uint8))
    tl.store(ts_val_ptr + r, tl.where(is_ts, nxt, ts_val))
    tl.store(finished_ptr + r, (nxt == EOT).to(tl.uint8))


def advance(st, rules, logits: torch.Tensor) -> None:
    """greedy_loop._advance(st, rules, logits) in two kernels (logits are read, not masked in
    place), then st.n += 1. st: greedy_loop._State, rules: greedy_loop._Rules, same device."""
    rows, v = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    chunks = triton.cdiv(v, BLOCK)
    cp = triton.next_power_of_2(chunks)
    part = torch.empty((rows, 3, 3, cp), dtype=torch.float32, device=logits.device)
    u8 = torch.uint8
    last_ts, pen_ts = st.last_ts.view(u8), st.pen_ts.view(u8)
    ts = bool(rules.timestamps)
    _chunks_kernel[(rows, chunks)](logits, logits.stride(0), v, rules.suppress.view(u8), last_ts, pen_ts, st.ts_val,
                                     part, rules.tb, rules.eot, TIMESTAMPS=ts, CP=cp, BLOCK=BLOCK, num_warps=WARPS)
    _finish_kernel[(rows,)](part, chunks, v, st.buf, st.buf.stride(0), st.n, st.last, last_ts, pen_ts, st.ts_val,
                            st.finished.view(u8), st.sum_lp, rules.tb, rules.eot, TIMESTAMPS=ts, CP=cp, num_warps=1)
    st.n.add_(1)


__all__ = ["advance"]
