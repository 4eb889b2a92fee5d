"""One greedy step's logit rules, argmax and state update in one kernel (greedy_loop._advance).

greedy_loop._advance is ~20 small torch kernels a step: three masked fills, two log-softmax
over the vocabulary, a logsumexp, a max, an argmax, a gather and the state updates. On a GPU
each one costs a launch and a pass over (rows, n_vocab) with one block a row, so at one row a
step of tiny spends more time there than in the model. Here one program a row makes one pass
over its logits with an online softmax, once over the text ids [0, timestamp_begin) and once
over the timestamps, keeping for each side the max, its first index and the sum of exp(x - max),
and decides from those:

    lse      = log(sum exp over both sides)                  (log_softmax's normaliser)
    ts_lp    = log(sum exp over timestamps) - lse            (logprobs[:, tb:].logsumexp())
    max_text = max over text - lse                           (logprobs[:, :tb].max())
    a timestamp if ts_lp > max_text: next = the timestamps' argmax, logprob = -log(sum over
    timestamps / exp(their max)); else next = the argmax of all, logprob = -log(sum over all /
    exp(max)) -- log_softmax(masked logits)[next], the masked logits never written.

The masks are the reference filters' (greedy_loop._Rules, SuppressTokens / ApplyTimestampRules),
applied to the values as they are loaded. The sums are taken in another order than torch's, so
sum_lp agrees to float32 rounding, not bit for bit, and a timestamp decision can differ from
the torch one only where ts_lp and max_text tie to ~1e-7. The state update is greedy_loop._pick's;
the shared token count n is advanced by the caller (one program would race the others' reads).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_ops  # noqa: F401  (its import fixes the interpreter's run-time loop bounds)

BLOCK = 2048  # logits a program loads at a time
WARPS = 8


@triton.jit
def _scan(row_ptr, sup_ptr, lo, hi, ban_below, BLOCK: tl.constexpr):
    """Ids [lo, hi) of one row, those suppressed or < ban_below at -inf: (max, its first id,
    sum of exp(x - max)); (-inf, lo, 0) when all are masked."""
    m = tl.full([], float("-inf"), tl.float32)
    idx = lo + tl.zeros([], tl.int32)
    s = tl.zeros([], tl.float32)
    for start in range(lo, hi, BLOCK):
        ids = start + tl.arange(0, BLOCK)
        ok = ids < hi
        x = tl.load(row_ptr + ids, mask=ok, other=float("-inf")).to(tl.float32)
        banned = (tl.load(sup_ptr + ids, mask=ok, other=1) != 0) | (ids < ban_below)
        x = tl.where(banned, float("-inf"), x)
        bm = tl.max(x, axis=0)
        bi = start + tl.argmax(x, axis=0, tie_break_left=True)
        new_m = tl.maximum(m, bm)
        safe = tl.where(new_m == float("-inf"), 0.0, new_m)  # all masked so far: no NaN from -inf - -inf
        s = s * tl.exp(m - safe) + tl.sum(tl.exp(x - safe), axis=0)
        idx = tl.where(bm > m, bi, idx)
        m = new_m
    return m, idx, s


@triton.jit
def _advance_kernel(logits_ptr, stride_l, V, sup_ptr, buf_ptr, stride_b, n_ptr, last_ptr, last_ts_ptr,
                    pen_ts_ptr, ts_val_ptr, finished_ptr, sum_lp_ptr, TB, EOT,
                    TIMESTAMPS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0)
    row = logits_ptr + r.to(tl.int64) * stride_l
    last_ts = tl.load(last_ts_ptr + r) != 0
    pen_ts = tl.load(pen_ts_ptr + r) != 0
    ts_val = tl.load(ts_val_ptr + r)
    ts_val = tl.load(ts_val_ptr + r)
    if TIMESTAMPS:
        closes = last_ts & (pen_ts == 0)  # text ts -> ts or EOT next
        text_hi = tl.where(closes, EOT, 0)  # text ids (< EOT) below it are banned
        # ts ts -> text next; else monotonic: > the last timestamp, >= it if closing a pair
        ts_lo = tl.where(last_ts & pen_ts, V, tl.where(closes, ts_val, ts_val + 1))
        m_a, i_a, s_a = _scan(row, sup_ptr, 0, EOT, text_hi, BLOCK)  # text: [0, EOT)
        m_e, i_e, s_e = _scan(row, sup_ptr, EOT, TB, 0, BLOCK)  # EOT and the other specials
        m_t, i_t, s_t = _scan(row, sup_ptr, TB, V, ts_lo, BLOCK)  # timestamps
        # text side [0, TB) = [0, EOT) + [EOT, TB); first index on ties: the lower range wins
        m_x = tl.maximum(m_a, m_e)
        i_x = tl.where(m_e > m_a, i_e, i_a)
        sx = tl.where(m_x == float("-inf"), 0.0, m_x)
        s_x = s_a * tl.exp(m_a - sx) + s_e * tl.exp(m_e - sx)
    else:
        m_x, i_x, s_x = _scan(row, sup_ptr, 0, TB, 0, BLOCK)
        m_t, i_t, s_t = _scan(row, sup_ptr, TB, V, 0, BLOCK)
    m = tl.maximum(m_x, m_t)
    sm = tl.where(m == float("-inf"), 0.0, m)
    s = s_x * tl.exp(m_x - sm) + s_t * tl.exp(m_t - sm)
    lse = m + tl.log(s)
    nxt = tl.where(m_t > m_x, i_t, i_x)
    lp = -tl.log(s)  # log_softmax at the argmax: (max - max) - log(sum exp(x - max))
    if TIMESTAMPS:
        ts_lp = m_t + tl.log(s_t) - lse  # -inf when every timestamp is masked
        to_ts = ts_lp > m_x - lse
        nxt = tl.where(to_ts, i_t, nxt)
        lp = tl.where(to_ts, -tl.log(s_t), lp)  # the text masked: the timestamps' own normaliser
    fin = tl.load(finished_ptr + r) != 0
    tl.store(sum_lp_ptr + r, tl.load(sum_lp_ptr + r) + tl.where(fin, 0.0, lp))
    nxt = tl.where(fin, EOT, nxt).to(tl.int64)
    n = tl.load(n_ptr)
    tl.store(buf_ptr + r.to(tl.int64) * stride_b + n, nxt)
    tl.store(last_ptr + r, nxt)
    is_ts = nxt >= TB
    tl.store(pen_ts_ptr + r, last_ts.to(tl.uint8))
    tl.store(last_ts_ptr + r, is_ts.to(tl.uint8))
    tl.store(ts_val_ptr + r, tl.where(is_ts, nxt, ts_val))
    tl.store(finished_ptr + r, (nxt == EOT).to(tl.uint8))


def advance(st, rules, logits: torch.Tensor) -> None:
    """greedy_loop._advance(st, rules, logits) in one kernel (logits are read, not masked in
    place), then st.n += 1. st: greedy_loop._State, rules: greedy_loop._Rules, same device."""
    rows, v = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    u8 = torch.uint8
    _advance_kernel[(rows,)](
        logits, logits.stride(0), v, rules.suppress.view(u8), st.buf, st.buf.stride(0), st.n, st.last,
        st.last_ts.view(u8), st.pen_ts.view(u8), st.ts_val, st.finished.view(u8), st.sum_lp, rules.tb, rules.eot,
        TIMESTAMPS=bool(rules.timestamps), BLOCK=BLOCK, num_warps=WARPS)
    st.n.add_(1)


__all__ = ["advance"]
