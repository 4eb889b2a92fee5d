"""Fused one-token decoder step for CUDA: eight kernels per decoder layer instead of ~24.

One greedy (or beam) step of M <= 8 rows, one token per row, is bound by kernel count x
per-kernel time (the GEMVs are instruction-issue bound: Nsight Compute in
docs/reports/performance.md section 4), not by the ~0.6 GB of weights it reads (large-v3 q5_0).
Graphed on an H100, large-v3 q5_0 takes 1.44 ms per token this way against 2.6 unfused, tiny
f16 0.12 against 0.30 (with programmatic dependent launch, PDL below, one-warp GEMV programs,
STEP_WARPS, and loads issued before the PDL wait; performance.md sections 4 and 5). model.py
uses it for one-row steps (FUSED_STEP_MAX_ROWS: at 5 rows it measured slower than the unfused
step). The step runs as:

    embed      x = dequant(token_embedding[tokens]) + positional_embedding[pos]   (float32 residual)
    per layer:
      1. LN(attn_ln) -> GEMV over the concatenated q|k|v rows -> q; k, v written into the
         static self-attention cache at row `pos` (read from a device tensor)
      2. single-query attention over cache rows 0..pos (no mask tensor)
      3. GEMV attn.out, epilogue: + bias + residual (x updated in place)
      4. LN(cross_attn_ln) -> GEMV cross_attn.query -> q
      5. single-query attention over the cross K/V (the n_group rows of a window share one)
      6. GEMV cross_attn.out + bias + residual
      7. LN(mlp_ln) -> GEMV mlp.0 + bias -> exact GELU -> h
      8. GEMV mlp.2 + bias + residual
    LN(ln) -> GEMV over the tied embedding -> float32 logits

The residual stream stays in float32 (the unfused CUDA path rounds it to float16 after every
add); q, attention outputs and the MLP hidden are float32 too; the KV cache keeps its dtype.
LayerNorm statistics are float32 (Chan's pairwise combination of chunk means and sums of
squares, one pass over x); every program of a LN-GEMV normalises the few x rows itself, or,
for block-quantized weights whose loop takes several steps, folds the LayerNorm into the
weight (fold_ln: the statistics come from the x values the loop loads, and are applied in the
epilogue).

Weights stay raw GGML blocks (F16 or Q4_0/Q4_1/Q5_0/Q5_1/Q8_0) and are decoded with
triton_ops' helpers (the ones its bit-exact dequantize test covers). The q, k, v rows of each
self-attention are read as one weight: model.MultiHeadAttention.qkv_projection (a byte concat
the three QLinear weights are views of, no extra memory; the unfused step uses it too).

Attention splits the keys over programs (SPLIT_S rows each, online softmax inside); the last
program of a (row, head) to finish, found with an atomic counter, combines the partial results
in split order (so the result does not depend on which program finished last) and resets the
counter: no combine kernel. Everything is fixed by (M, weights): a step can be captured in a
CUDA graph and replayed with new tokens and position.

Callers: model.TextDecoder.forward_at (one-token steps on CUDA, `fused_step` switch). The
kernels run on CPU tensors under TRITON_INTERPRET=1 (tests/test_triton_decoder.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import QK, GGMLType, row_nbytes, torch_ops, triton_ops
from .planes import from_planes
from .triton_ops import (
    _LAYOUT,
    _MAGIC_BITS,
    _QK,
    _as_type,
    _block_fma,
    _decode_int8,
    _decode_nibbles,
    _dequant_nibbles,
    _f16_at,
    _field_offsets,
    _gemv_config,
    _load_blocks,
    _next_pow2,
    _partials_at,
    _prefetch_at,
    _prefetch_l2,
    gdc_launch_dependents,
    gdc_wait,
    gdc_wait_after,
    pdl_supported,
    prefetch_lines,
)

MAX_ROWS = 8  # rows one fused step can take (model.FUSED_STEP_MAX_ROWS chooses how many it gets)
FUSED_TYPES = (GGMLType.F16,) + tuple(_LAYOUT)  # weight types the kernels read

# Tests under the interpreter raise this (fewer, larger programs: it runs them one by one);
# on the GPU the tile table (triton_ops._gemv_config) decides.
MIN_BLOCK_N = 1
# Blocks per step of the GEMVs without a LayerNorm (out, cross out, fc2) over >= 40 blocks a
# row: a step is one dependent round trip to memory, and 64 blocks instead of 16 cut fc2's
# (K 5120) from 10 to 3. Measured per kernel, large-v3 q5_0 on an H100: fc2 8.6 -> 6.7 us,
# out 4.4 -> 3.8, cross out 4.4 -> 3.6; the LN GEMVs got slower (qkv 8.9 -> 9.6, fc1 8.7 ->
# 12.3: the normalisation per step grows with it), so they keep triton_ops' 16. 0: off.
LONG_STEP_NB = 64
# The step's GEMVs below the vocabulary's width: programs of STEP_WARPS warps, BLOCK_N the
# largest power of 2 <= 16 that leaves >= STEP_MIN_PROGRAMS programs (8 per SM on a 132-SM H100)
# and <= 64 accumulators a thread. Swept on an H100 with PDL on (graphed one-row step, ms per
# token; docs/reports/performance.md section 4): 1 warp / 1056 programs against triton_ops'
# 4 warps / 640: large-v3 q5_0 1.85 -> 1.70, f16 1.69 -> 1.57, tiny q5_0 0.137 -> 0.130, tiny
# f16 0.142 -> 0.129; 2 warps, 8 warps, 264..2112 programs and 8 or 32 blocks a step were slower.
STEP_WARPS = 1
STEP_MIN_PROGRAMS = 1056
# One-row LN GEMVs of at most CROSS_Q_MAX_N rows over >= 40 blocks of a 5-bit type (large-v3's
# cross-q, 1280 x 1280): two folded steps of CROSS_Q_NB blocks instead of three of 16. Measured
# in the graphed large-v3 step on an H100, two rounds (docs/reports/performance.md 14): q5_0
# 1.253 / 1.248 -> 1.236 / 1.231 ms/token at positions 4..35, 1.303 -> 1.282 at 0..255; q4_0 mixed
# (1.175 / 1.162 -> 1.170 / 1.176, 1.210 / 1.204 -> 1.214 / 1.215), so 4-bit types keep 16; one
# step of 40 lost (session 12: 1.283 against 1.270). 0: off.
CROSS_Q_NB = 32
CROSS_Q_MAX_N = 1280
CROSS_Q_BITS = (5,)
# One-row 5-bit GEMVs without LN whose rows fit one LONG_STEP_NB step (large-v3's out and
# cross-out, 40 blocks) run on this many warps: the same 64-block tile at half the registers a
# thread. Measured in the graphed step on an H100 (docs/reports/performance.md 14), 1 -> 2 warps:
# large-v3 q5_0 1.232 -> 1.222 / 1.216 ms/token at positions 4..35, 1.284 -> 1.274 / 1.273 at
# 0..255; q4_0 1.168 / 1.205 -> 1.171-1.172 / 1.210-1.211 (so 4-bit keeps 1); tiny unchanged.
# Q8_0 too (session 17, performance.md 18: its out and cross-out had 227-231 of 1280 programs
# starting only after the kernel before had ended): large-v3 q8_0 1.311-1.315 / 1.353-1.354 ->
# 1.294-1.300 / 1.338 on an H100 (1.270-1.275 / 1.312-1.313 -> 1.257-1.258 / 1.295 on an H200);
# the rule also reaches tiny's and base's fc2 (48 and 64 blocks): tiny q8_0 0.097 / 0.102 -> 0.095
# / 0.099-0.100, base 0.141-0.142 / 0.148 -> 0.140-0.141 / 0.146-0.147 (H100, two rounds each).
ONE_STEP_WARPS = 2
ONE_STEP_WARPS_BITS = (5, 8)
# The same GEMVs over more than one LONG_STEP_NB step (fc2, K 5120): warps a program, by type
# (the others: STEP_WARPS). Measured in the graphed large-v3 step on an H100, two rounds each
# (performance.md 16), 1 -> 2 warps, ms per token at positions 4..35 / 0..255: q5_0 1.220 / 1.271,
# 1.217 / 1.272 -> 1.213 / 1.259, 1.214 / 1.257; q5_1 lost (1.424 / 1.427 -> 1.442 / 1.450).
LONG_STEPS_WARPS = {"q5_0": 2}
# One-row LN GEMVs of at least 4x as many rows as columns (fc1), by type: rows a program, where
# fewer than _tile's (large-v3: 4 rows, 1280 programs; q5_0's are 201 registers, 9 an SM, and
# 666-691 of them start only after the kernel before has ended: trace_step, performance.md 17).
# Measured in the graphed large-v3 step on an H100, two rounds (call s16e), ms per token at
# positions 4..35 / 0..255, 4 -> 2 / 1 rows: q8_0 1.383-1.385 / 1.425-1.426 -> 1.307 / 1.351-1.352
# / 1.353-1.361 / 1.400; q5_0 1.183-1.185 -> 1.229 / 1.279-1.280 and q4_0 1.038 -> 1.107-1.113 /
# 1.149-1.153 lost. The smaller models' fc1 already has <= 2 rows a program.
FC1_ROWS = {"q8_0": 2}
# One-row GEMVs of 4-bit types decode their first step's weights (the bit operations and
# the exact conversion to float32, _decode_nibbles) before the PDL wait, so that after it only the
# products with x are left for that step; same arithmetic, same bits. Measured in the graphed
# step on an H100, two rounds each (docs/reports/performance.md 15), ms per token at positions
# 4..35: large-v3 q4_0 1.171-1.174 -> 1.100 (twice); q4_1 1.337-1.341 -> 1.327-1.329. Lost for the
# others, whose forms were then deleted: q5_0 1.214-1.216 -> 1.258-1.262 (floats; the LN GEMVs
# lost it), q5_1 1.425-1.431 -> 1.439 (GEMVs without LN only), q8_0 1.419-1.422 -> 1.438-1.440;
# 5-bit with only the fifth bits merged before the wait (one int32 a byte pair, session 15,
# performance.md 16): q5_0 1.217-1.220 -> 1.297, q5_1 1.419-1.424 -> 1.498-1.505.
EARLY_DECODE_4BIT = True
# One-row GEMVs of these types below the vocabulary's width hold their whole row before the PDL
# wait: two peeled steps of NB + NB2 blocks (powers of 2: K/32 = 40 = 32 + 8, 160 = 128 + 32, 12 =
# 8 + 4), the LayerNorm folded, so that after the wait no step is left that waits on memory
# (13.4: each step after the first cost ~1.2 us after the wait), and no clamped blocks. Rows a
# program as the step's tiles (>= STEP_MIN_PROGRAMS programs), where they hold at most
# WHOLE_ROW_MAX_VALUES weights (large-v3: out, cross-out, cross-q; q|k|v, fc1 and fc2 would need
# more registers than an SM has for one wave of their programs), on WHOLE_ROW_WARPS warps.
# Measured in the graphed large-v3 step on an H100, two rounds (performance.md 16), ms per token
# at positions 4..35: q5_1 1.423-1.429 -> 1.404-1.406, q4_1 1.320-1.328 -> 1.254-1.256; lost on
# q5_0 (1.220 -> 1.243-1.245), q4_0 (1.106 -> 1.130) and q8_0 (1.417-1.424 -> 1.443-1.446).
WHOLE_ROW_TYPES = ("q4_1", "q5_1")
WHOLE_ROW_MAX_VALUES = 1280
WHOLE_ROW_WARPS = 2
# The other one-row block GEMVs (q|k|v, fc1, fc2), whose whole rows do not fit: a second step of
# NB2 blocks peeled as well (the same mechanism), so one step fewer is left after the wait. By
# type, the candidate NB2s, the first that leaves whole NB-block steps for the loop: 8 for K 1280
# in 16-block steps (16 + 8 before the wait, 16 after, instead of 16 before and 16 + 8 clamped to
# 16 after), 32 for fc2's K 5120 (64 + 32, then 64). Measured in the graphed large-v3 step on an
# H100, two rounds each (performance.md 16), ms per token at positions 4..35: q4_0 1.106 -> 1.070-
# 1.074 with 32, 1.077-1.082 with 8, 1.045-1.054 with both; q5_1 1.423-1.429 -> 1.379-1.389 with
# 32 (1.451-1.460 with 8); q5_0 (fc2 on two warps) 1.203-1.208 -> 1.184-1.191 with 32 (even with
# 32 and fc2 on one warp, 1.241 with 8); q8_0 (16-block steps, fc2 160 = 16 + 16 + 8 x 16) 1.417-
# 1.424 -> 1.383-1.392 with 8 and 16 (16 alone lost: 1.436-1.441); q4_1 1.320-1.328 -> 1.273-
# 1.291 with 8 and 32, but its whole row (WHOLE_ROW_TYPES) gained more, and the two together
# were not measured.
SECOND_PEEL_NB = {"q4_0": (8, 32), "q5_0": (32,), "q5_1": (32,), "q8_0": (8, 16)}
# Both tables were measured on large-v3's rows (K/32 = 40 and 160); rows of fewer blocks (tiny,
# base, small, medium) keep their steps. Tiny q5_1 (K/32 = 12, one clamped 16-block step) lost with
# its whole row, 0.110-0.113 -> 0.121 ms per token (call s15d), and q8_0's 16 would have split
# fc2 on tiny, small and medium, unmeasured there.
PEEL_MIN_BLOCKS = 40
# The one-row step's attention kernels widen the float16 keys and values they load before the PDL
# wait to float32 before it too (the conversions then leave the work after the wait; gdc_wait_after
# keeps ptxas from moving them back). Same bits. Offline sm_90 SASS (32 keys, one warp), instructions
# after the wait and registers: cross-attention 1067 -> 952, 155 -> 156; self-attention 1595 ->
# 1461, 160 -> 166. Measured in the graphed large-v3 step on an H100 (performance.md 16), ms per
# token at positions 4..35 / 0..255: q5_0 1.211-1.213 / 1.258-1.259 -> 1.204 / 1.249-1.250; q5_1
# and q4_0 even at 4..35, -0.005..-0.01 at 0..255. So only the fused one-row step's calls (one
# row, a plain q) widen early: the unfused one-row graph (q|k|v partials) lost 0.02 with it, and
# the batched windows' step (many rows) was not measured with it.
CROSS_EARLY_CONVERT = True
SELF_EARLY_CONVERT = True
# Keys per attention program: self-attention over the cache (<= 448 rows), cross over 1500.
SELF_SPLIT_S, CROSS_SPLIT_S = 64, 32
# Warps per attention program. Session 3 measured 1, 2 and 8 equal or slower than 4. The cross
# K/V of a split have been loaded before the PDL wait since session 4; swept again in session 7
# (bench_model --ablate, H100, graphed one-row step, ms per token), cross-attention of one query
# row per window in one-warp programs of 32 keys: large-v3 q5_0 1.41 -> 1.35, tiny q5_0 0.111 ->
# 0.109 (4 warps at 32 keys: 1.40; 1 warp at 16 or 64 keys: 1.46 / 1.39). Self-attention keeps 4
# (the one-row step aside: ONE_ROW_SELF_SPLIT_S below): one warp lost at 5 beams (0.647 -> 0.654)
# and, at 64 keys, on tiny (0.111 -> 0.126). Beams sharing a window's K/V (query rows x keys in
# one tile) keep 4 as well.
ATTN_WARPS = 4
CROSS_ONE_ROW_WARPS = 1
# One query row per K/V row (the one-row step, a batched step of windows) without a position:
# _cross_attn_kernel, splits of up to this many keys in one step.
CROSS_MAX_SPLIT_S = 64
# Self-attention of this many rows or more (the unfused step of a batch of windows) in one-warp
# programs: large-v3 q5_0 long form with the weight cache, two rounds (performance.md 8.5):
# batch 32 (25 rows) RTFx 918-925 -> 942-944; batch 16 (12-13 rows) 678-685 -> 676-682; batch 8
# 473-474 -> 467-472; 5 beams lost (above).
SELF_ONE_WARP_ROWS = 16
# The one-row step's self-attention: splits of 32 keys in one-warp programs. Graphed one-row step
# on an H100, two rounds (session 12, with SELF_PRELOAD): large-v3 q5_0 1.270-1.271 -> 1.253-1.255
# ms per token at positions 4..35, 1.329 -> 1.302-1.303 at 0..255; tiny q5_0 0.101-0.104 ->
# 0.102-0.104. (Session 7, before the preload: 1.349 -> 1.335, tiny 0.109 -> 0.110.)
ONE_ROW_SELF_SPLIT_S = 32
# Self-attention splits of one step load the cache rows before pos (written by earlier steps)
# before the PDL wait, as the cross-attention loads its K/V; row pos after it. Graphed one-row
# step, large-v3 q5_0 on an H100, two rounds: positions 4..35 1.297-1.300 -> 1.272-1.273 ms per
# token, 0..255 1.367-1.372 -> 1.329-1.335 (session 4 tried it at 4..35 only, within noise then).
SELF_PRELOAD = True

# Programmatic dependent launch (sm_90+): every kernel of the step lets the next one start as
# soon as all its programs run (griddepcontrol.launch_dependents) and the next one waits
# (griddepcontrol.wait) only before it reads what the previous one wrote. What it does before
# the wait is independent of earlier kernels: the GEMVs ask L2 for their weight slice and the
# cross-attention for its keys and values, so the DRAM latency of one kernel overlaps the
# previous one, and launch latency disappears from the chain. CUDA graphs keep the edges.
# Module switch (None: on where the device supports it), for benchmarks.
PDL: bool | None = None


def _pdl(device: torch.device) -> bool:
    return PDL is not False and pdl_supported(device)


def _pdl_kw(pdl: bool) -> dict:
    return {"launch_pdl": True} if pdl else {}


# Timeline records for benchmarks/trace_step.py: while a StepTrace is set (trace_steps), every
# kernel of the step writes, for each of its programs, %globaltimer at its start, after the PDL
# wait and at its end, and its SM, into one slot of the buffer (a slot per launch, in launch
# order, numbered from 0 at each step). Off (TRACE constexpr False) nothing of it is compiled in.
TRACE_MAX_PROGRAMS = 4096
_TRACE_MAXP = tl.constexpr(TRACE_MAX_PROGRAMS)


@dataclass
class StepTrace:
    records: torch.Tensor  # int64 (slots, TRACE_MAX_PROGRAMS, 4): start, after the wait, end (ns), SM
    names: list  # the kernel of each slot, as launched
    slot: int = 0


_trace: StepTrace | None = None


def trace_steps(trace: StepTrace | None) -> None:
    """Record the step's kernels into trace from now on (None: stop). Graphs captured before keep
    what they were captured with: drop them (TextDecoder.drop_graphs) around this."""
    global _trace
    _trace = trace


def _trace_kw(programs: int, kernel: str, *shape) -> dict:
    """The launch arguments that make a kernel of `programs` programs write its records into the
    next slot (none when off, past the buffer's slots, or for more than TRACE_MAX_PROGRAMS)."""
    t = _trace
    if t is None or t.slot >= t.records.shape[0] or programs > TRACE_MAX_PROGRAMS:
        return {}
    if len(t.names) <= t.slot:
        t.names.append(" ".join(str(v) for v in (kernel, *shape) if v != ""))
    t.slot += 1
    return {"trace_ptr": t.records, "trace_slot": t.slot - 1, "TRACE": True}


@triton.jit
def _trace_mark(trace_ptr, trace_slot, program, FIELD: tl.constexpr):
    """trace_ptr[trace_slot, program, FIELD] = %globaltimer (FIELD 0 start, 1 after the wait, 2 end);
    with FIELD 0 also [..., 3] = %smid. trace_slot may arrive as a constexpr (Triton specialises 1),
    so no .to()."""
    at = trace_ptr + (trace_slot * _TRACE_MAXP + program) * 4
    tl.store(at + FIELD, tl.inline_asm_elementwise("mov.u64 $0, %globaltimer; // $1", "=l,r", [program],
                                                   dtype=tl.int64, is_pure=False, pack=1))
    if FIELD == 0:
        tl.store(at + 3, tl.inline_asm_elementwise("mov.u32 $0, %smid; // $1", "=r,r", [program], dtype=tl.int32,
                                                   is_pure=False, pack=1).to(tl.int64))


@triton.jit
def _attn_program(H, PDL: tl.constexpr, trace_ptr, trace_slot, TRACE: tl.constexpr):
    """The attention kernels' program: (K/V row r, head h) x key split -> (pid, split, r, h, its
    index in the grid); records its start, lets the next kernel launch (PDL)."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    program = pid * tl.num_programs(1) + split
    if TRACE:
        _trace_mark(trace_ptr, trace_slot, program, 0)
    r = pid // H
    h = pid % H
    if PDL:
        gdc_launch_dependents()
    return pid, split, r, h, program


EPI_STORE, EPI_RESIDUAL, EPI_GELU, EPI_QKV = 0, 1, 2, 3
_EPILOGUES = {"store": EPI_STORE, "residual": EPI_RESIDUAL, "gelu": EPI_GELU}


# ------------------------------------------------------------------------------------------
# LN-prologue GEMV with fused epilogues
# ------------------------------------------------------------------------------------------


@triton.jit
def _row_stats(x_ptr, stride_xm, M, K, eps, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    """Mean and 1/sqrt(var + eps) of BLOCK_M rows of x (rows past M repeat row M-1): [BLOCK_M] each.

    One pass: each chunk's mean and sum of squared deviations (exact two-pass within the chunk,
    from registers) merged into the running ones with Chan's formula (no E[x^2] - mean^2
    cancellation)."""
    mm = tl.arange(0, BLOCK_M)[:, None]
    kk = tl.arange(0, CHUNK)[None, :]
    row = x_ptr + tl.minimum(mm, M - 1).to(tl.int64) * stride_xm
    n_a = 0.0
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, CHUNK):
        ok = k0 + kk < K
        xv = tl.load(row + k0 + kk, mask=ok, other=0.0).to(tl.float32)
        n_b = tl.minimum(K - k0, CHUNK).to(tl.float32)
        mean_b = tl.sum(xv, axis=1) / n_b
        dev = tl.where(ok, xv - mean_b[:, None], 0.0)
        m2_b = tl.sum(dev * dev, axis=1)
        n = n_a + n_b
        delta = mean_b - mean
        mean += delta * (n_b / n)
        m2 += m2_b + delta * delta * (n_a * n_b / n)
        n_a = n
    rstd = 1.0 / tl.sqrt_rn(m2 / K + eps)
    return mean, rstd


@triton.jit
def _step_ln(ln_w, ln_b, b0, bb, jj, n_blk, EVEN_K: tl.constexpr, LN: tl.constexpr, FOLD: tl.constexpr,
             BITS: tl.constexpr):
    """The LayerNorm's weight and bias at the x indices of the GEMV step at b0, float32 (constants:
    loadable before the PDL wait): (w_lo, b_lo, w_hi, b_hi), hi = weights j + 16 of the 4/5-bit
    blocks (else the same as lo); zeros without LN; FOLD: the weight only (bias zeros)."""
    if LN:
        k_lo = _step_blocks(b0, bb, n_blk, EVEN_K) * _QK + jj
        w_lo = tl.load(ln_w + k_lo).to(tl.float32)
        b_lo = 0.0
        if not FOLD:
            b_lo = tl.load(ln_b + k_lo).to(tl.float32)
        w_hi, b_hi = w_lo, b_lo
        if BITS == 4 or BITS == 5:
            w_hi = tl.load(ln_w + k_lo + 16).to(tl.float32)
            if not FOLD:
                b_hi = tl.load(ln_b + k_lo + 16).to(tl.float32)
        return w_lo, b_lo, w_hi, b_hi
    else:
        return 0.0, 0.0, 0.0, 0.0


@triton.jit
def _x_at(x_row, k, mean, rstd, w, b, LN: tl.constexpr, FOLD: tl.constexpr):
    """(x[m, k], what the products take): x itself without LN, (x - mean) * rstd * w + b with LN,
    x * w with a folded LN; float32."""
    x = tl.load(x_row + k).to(tl.float32)
    if LN:
        if FOLD:
            return x, x * w
        else:
            return x, (x - mean) * rstd * w + b
    else:
        return x, x


@triton.jit
def _step_blocks(b0, bb, n_blk, EVEN_K: tl.constexpr):
    """[NB, 1, 1, 1] the blocks of the GEMV step at b0 (past the row's last: clamped to it)."""
    blk = b0 + bb
    if not EVEN_K:
        blk = tl.minimum(blk, n_blk - 1)
    return blk


@triton.jit
def _gemv_loads(w8, w16, w_row, b0, bb, jj, n_blk, TS: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr,
                BITS: tl.constexpr, EVEN_K: tl.constexpr):
    """One GEMV step's weight loads, blocks b0 .. b0+NB-1 (clamped): F16 rows -> (w float32, -, -);
    blocks -> (d, qs, qh) as triton_ops._load_blocks gives them."""
    blk = _step_blocks(b0, bb, n_blk, EVEN_K)
    if BITS == 16:
        w = tl.load(w16 + w_row + blk * _QK + jj).to(tl.float16, bitcast=True).to(tl.float32)
        if not EVEN_K:
            w = tl.where(b0 + bb < n_blk, w, 0.0)
        return w, w, w
    else:
        return _load_blocks(w8, w16, w_row + blk * TS, b0 + bb < n_blk, jj, QH_B, QS_B, BITS, EVEN_K)


@triton.jit
def _gemv_fma(acc, s1, s2, shift, mean, rstd, w0, qs, qh, x_row, lnw_lo, lnb_lo, lnw_hi, lnb_hi, w16, w_row, b0,
              bb, jj, n_blk, magic, TS: tl.constexpr, M_B: tl.constexpr, BITS: tl.constexpr, ZERO: tl.constexpr,
              EVEN_K: tl.constexpr, LN: tl.constexpr, FOLD: tl.constexpr, BLOCK_M: tl.constexpr,
              DECODED: tl.constexpr = False):
    """One step: acc + the products of the weights loaded by _gemv_loads (w0 = F16 w, or d) with
    x as _x_at gives it (LN weight and bias from _step_ln); FOLD: also s1 + (x - shift) and
    s2 + (x - shift)^2 over this step's x (the LN statistics, see _step_gemv_kernel). DECODED:
    qs, qh went through _decode_nibbles already. Returns (acc, s1, s2)."""
    blk = _step_blocks(b0, bb, n_blk, EVEN_K)
    k_lo = blk * _QK + jj  # [NB, 1, 1, QB] x index of weight j of each block
    x_lo, xg_lo = _x_at(x_row, k_lo, mean, rstd, lnw_lo, lnb_lo, LN, FOLD)
    x_hi, xg_hi = x_lo, xg_lo
    if BITS == 16:
        acc += w0 * xg_lo
    else:
        if BITS != 8:
            x_hi, xg_hi = _x_at(x_row, k_lo + 16, mean, rstd, lnw_hi, lnb_hi, LN, FOLD)
        acc = _block_fma(acc, w0, qs, qh, xg_lo, xg_hi, w16, w_row + blk * TS, b0 + bb < n_blk, jj, magic, M_B, BITS,
                         ZERO, EVEN_K, BLOCK_M == 1, DECODED)
    if FOLD:
        dev = x_lo - shift
        if not EVEN_K:  # a clamped, repeated block counts once
            dev = tl.where(b0 + bb < n_blk, dev, 0.0)
        s1 += dev
        s2 += dev * dev
        if BITS == 4 or BITS == 5:
            dev = x_hi - shift
            if not EVEN_K:
                dev = tl.where(b0 + bb < n_blk, dev, 0.0)
            s1 += dev
            s2 += dev * dev
    return acc, s1, s2


@triton.jit
def _step_gemv_kernel(
    x_ptr, stride_xm,  # (M, K) activations, last axis contiguous, any float dtype
    ln_w, ln_b, fold_w_ptr, fold_b_ptr, eps,  # LN (K,) weight and bias; FOLD: (N,) W @ weight and W @ bias (fold_ln)
    w8, w16,  # raw (N, K) weight: uint8 and int16 views of the same bytes
    bias_ptr,  # (N,) when HAS_BIAS
    out_ptr, stride_om,  # (M, N) output (EPI_RESIDUAL: also the residual, updated in place); EPI_QKV: q (M, n_seg)
    kc_ptr, vc_ptr, stride_cr, stride_cs, pos_ptr, n_seg,  # EPI_QKV: caches (rows, n_ctx, n_seg), position
    M, N, K, magic,
    TS: tl.constexpr, M_B: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr,
    BITS: tl.constexpr, ZERO: tl.constexpr,  # block layout (triton_ops._LAYOUT); BITS 16: F16 rows
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr, EVEN_K: tl.constexpr,
    LN: tl.constexpr, FOLD: tl.constexpr, CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr, EPI: tl.constexpr,
    PF_LINES: tl.constexpr, PDL: tl.constexpr,  # L2 prefetch of the weight slice; see PDL above
    EARLY_DECODE: tl.constexpr = False,  # the first step's weights decoded before the wait (EARLY_DECODE_4BIT)
    NB2: tl.constexpr = 0,  # > 0: a second step of NB2 blocks peeled too, K/32 = NB + NB2 (WHOLE_ROW_TYPES)
    trace_ptr=None, trace_slot=0, TRACE: tl.constexpr = False,  # StepTrace records
):
    # The loop is triton_ops._qgemv_kernel's, through the same step helpers (_load_blocks,
    # _block_fma, wrapped as _gemv_loads / _gemv_fma so the first step can be issued before the PDL
    # wait; 4-D tiles [NB, BLOCK_M, BLOCK_N, QB], clamped rather than masked loads); the epilogue
    # adds bias and residual, applies GELU or scatters q|k|v.
    # LN: the statistics from a pass over x before the loop (_row_stats), x normalised in it; or
    # FOLD: LN(x) @ W.T = rstd * (W @ (g * x) - mean * W @ g) + W @ b for LN weight g and bias b:
    # the loop multiplies x by g only and takes the statistics of the same x values as it goes
    # (every program sees the whole row), W @ g and W @ b come precomputed (fold_ln), and mean
    # and rstd are needed in the epilogue only. FOLD won where the loop has three steps or more
    # (large-v3 q5_0, K 1280 in 16-block steps: 1.45 -> 1.40 ms per token) and lost with one or
    # two (tiny q5_0 0.111 -> 0.116-0.119) and with F16 rows (large-v3 f16 1.51 -> 1.61) on an H100.
    # Before the wait: the first step's blocks (PEEL), with EARLY_DECODE also decoded there
    # (_decode_nibbles; gdc_wait_after keeps ptxas from moving the decode behind the wait), and with
    # NB2 > 0 the rest of the row as a second step of NB2 blocks (its own tile and accumulator), so
    # that the loop after the wait has nothing left to do (WHOLE_ROW_TYPES).
    QB: tl.constexpr = 16 if BITS == 4 or BITS == 5 else 32
    n_blk = K // _QK
    pid = tl.program_id(0)
    if TRACE:
        _trace_mark(trace_ptr, trace_slot, pid, 0)
    if PDL:
        gdc_launch_dependents()
    if PF_LINES > 0:  # weights: written by nobody, so read before the wait
        row_bytes = n_blk * TS if BITS != 16 else 2 * K
        n0 = pid * BLOCK_N
        _prefetch_l2(w8 + n0.to(tl.int64) * row_bytes, (tl.minimum(N - n0, BLOCK_N) * row_bytes).to(tl.int64), PF_LINES)
    bb = tl.arange(0, NB)[:, None, None, None]
    mm = tl.arange(0, BLOCK_M)[None, :, None, None]
    nn = pid * BLOCK_N + tl.arange(0, BLOCK_N)[None, None, :, None]
    jj = tl.arange(0, QB)[None, None, None, :]
    if BITS == 16:
        w_row = tl.minimum(nn, N - 1).to(tl.int64) * K  # [1, 1, BN, 1] element offsets
    else:
        w_row = tl.minimum(nn, N - 1).to(tl.int64) * (n_blk * TS)  # byte offsets
    # The first step's blocks are loaded before the wait (and so before the LN statistics): their
    # round trip overlaps the previous kernel's tail and the statistics' own. Not for F16 rows,
    # whose float32 step tile held across the statistics made large-v3 f16 slower (1.57 -> 1.71
    # ms per token on an H100, LN GEMVs).
    PEEL: tl.constexpr = BITS != 16
    if PEEL:  # with the LN weight and bias of the same step
        w0, qs0, qh0 = _gemv_loads(w8, w16, w_row, 0, bb, jj, n_blk, TS, QH_B, QS_B, BITS, EVEN_K)
        lnw_lo, lnb_lo, lnw_hi, lnb_hi = _step_ln(ln_w, ln_b, 0, bb, jj, n_blk, EVEN_K, LN, FOLD, BITS)
        q0, q1 = qs0, qh0
        if EARLY_DECODE:
            q0, q1 = _decode_nibbles(qs0, qh0, jj, magic, BITS, ZERO)
        if NB2 > 0:  # the rest of the row: blocks NB .. NB + NB2 - 1, all live
            bb2 = tl.arange(0, NB2)[:, None, None, None]
            w0b, qs0b, qh0b = _gemv_loads(w8, w16, w_row, NB, bb2, jj, n_blk, TS, QH_B, QS_B, BITS, True)
            lnw_lo_b, lnb_lo_b, lnw_hi_b, lnb_hi_b = _step_ln(ln_w, ln_b, NB, bb2, jj, n_blk, True, LN, FOLD, BITS)
            q0b, q1b = qs0b, qh0b
            if EARLY_DECODE:
                q0b, q1b = _decode_nibbles(qs0b, qh0b, jj, magic, BITS, ZERO)
    # The epilogue's inputs are loaded early too, not after the loop: the bias and the position
    # (copied in before the step's first kernel) before the wait, the residual right after it.
    n1 = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    m1 = tl.arange(0, BLOCK_M)
    ok = (m1 < M)[:, None] & (n1 < N)[None, :]
    bias = tl.zeros([1, BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + n1, mask=n1 < N, other=0.0).to(tl.float32)[None, :]
    pos = 0
    if EPI == 3:
        pos = tl.load(pos_ptr).to(tl.int64)
    fold_g = bias
    fold_b = bias
    if FOLD:
        fold_g = tl.load(fold_w_ptr + n1, mask=n1 < N, other=0.0)[None, :]
        fold_b = tl.load(fold_b_ptr + n1, mask=n1 < N, other=0.0)[None, :]
    if PDL:  # x, the residual and the caches are the previous kernels'
        if PEEL and EARLY_DECODE and NB2 > 0:
            gdc_wait_after(q0, q1, q0b, q1b)
        elif PEEL and EARLY_DECODE:
            gdc_wait_after(q0, q1)
        else:
            gdc_wait()
    if TRACE:
        _trace_mark(trace_ptr, trace_slot, pid, 1)
    res = bias  # (unused unless EPI == 1)
    if EPI == 1:
        res = tl.load(out_ptr + (m1.to(tl.int64) * stride_om)[:, None] + n1[None, :], mask=ok, other=0.0).to(tl.float32)
    x_row = x_ptr + tl.minimum(mm, M - 1).to(tl.int64) * stride_xm  # [1, BM, 1, 1]
    acc = tl.zeros([NB, BLOCK_M, BLOCK_N, QB], dtype=tl.float32)
    # LN statistics: sums of x - shift and its square (shift = the mean of the row's first QB
    # values, so that the variance's subtraction cancels little), reduced after the loop
    s1 = tl.zeros([NB, BLOCK_M, 1, QB], dtype=tl.float32)
    s2 = s1
    shift = tl.zeros([1, BLOCK_M, 1, 1], dtype=tl.float32)
    mean = shift
    rstd = shift
    if FOLD:
        shift = tl.sum(tl.load(x_row + jj).to(tl.float32), axis=3, keep_dims=True) / QB
    elif LN:
        mean1, rstd1 = _row_stats(x_ptr, stride_xm, M, K, eps, BLOCK_M, CHUNK)
        mean = mean1[None, :, None, None]
        rstd = rstd1[None, :, None, None]
    b_first = 0
    if PEEL:
        acc, s1, s2 = _gemv_fma(acc, s1, s2, shift, mean, rstd, w0, q0, q1, x_row, lnw_lo, lnb_lo, lnw_hi, lnb_hi,
                                w16, w_row, 0, bb, jj, n_blk, magic, TS, M_B, BITS, ZERO, EVEN_K, LN, FOLD, BLOCK_M,
                                EARLY_DECODE)
        b_first = NB
        if NB2 > 0:
            acc2 = tl.zeros([NB2, BLOCK_M, BLOCK_N, QB], dtype=tl.float32)
            s1b = tl.zeros([NB2, BLOCK_M, 1, QB], dtype=tl.float32)
            acc2, s1b, s2b = _gemv_fma(acc2, s1b, s1b, shift, mean, rstd, w0b, q0b, q1b, x_row, lnw_lo_b, lnb_lo_b,
                                       lnw_hi_b, lnb_hi_b, w16, w_row, NB, bb2, jj, n_blk, magic, TS, M_B, BITS, ZERO,
                                       True, LN, FOLD, BLOCK_M, EARLY_DECODE)
            b_first = NB + NB2
    for b0 in range(b_first, n_blk, NB):
        w0, qs0, qh0 = _gemv_loads(w8, w16, w_row, b0, bb, jj, n_blk, TS, QH_B, QS_B, BITS, EVEN_K)
        lnw_lo, lnb_lo, lnw_hi, lnb_hi = _step_ln(ln_w, ln_b, b0, bb, jj, n_blk, EVEN_K, LN, FOLD, BITS)
        acc, s1, s2 = _gemv_fma(acc, s1, s2, shift, mean, rstd, w0, qs0, qh0, x_row, lnw_lo, lnb_lo, lnw_hi, lnb_hi,
                                w16, w_row, b0, bb, jj, n_blk, magic, TS, M_B, BITS, ZERO, EVEN_K, LN, FOLD, BLOCK_M)
    y = tl.sum(tl.sum(acc, axis=3), axis=0)  # [BM, BN]
    sum1 = tl.sum(tl.sum(s1, axis=3), axis=0)
    sum2 = tl.sum(tl.sum(s2, axis=3), axis=0)
    if PEEL and NB2 > 0:
        y += tl.sum(tl.sum(acc2, axis=3), axis=0)
        sum1 += tl.sum(tl.sum(s1b, axis=3), axis=0)
        sum2 += tl.sum(tl.sum(s2b, axis=3), axis=0)
    if FOLD:
        d_mean = sum1 / K  # [BM, 1]: mean - shift
        var = tl.maximum(sum2 / K - d_mean * d_mean, 0.0)
        rstd = 1.0 / tl.sqrt_rn(var + eps)
        mean = tl.sum(tl.sum(shift, axis=3), axis=0) + d_mean  # [BM, 1]
        y = rstd * (y - mean * fold_g) + fold_b
    _epilogue(y, bias, res, pos, n1, m1, ok, out_ptr, stride_om, kc_ptr, vc_ptr, stride_cr, stride_cs, n_seg,
              HAS_BIAS, EPI)
    if TRACE:
        _trace_mark(trace_ptr, trace_slot, pid, 2)


@triton.jit
def _epilogue(y, bias, res, pos, n1, m1, ok, out_ptr, stride_om, kc_ptr, vc_ptr, stride_cr, stride_cs, n_seg,
              HAS_BIAS: tl.constexpr, EPI: tl.constexpr):
    """y [BLOCK_M, BLOCK_N] (rows n1 of W) + bias -> out / out = res + . / GELU / q|k|v scatter at
    cache row pos. bias [1, BN], res [BM, BN] (EPI 1) and pos (EPI 3) come loaded."""
    if HAS_BIAS:
        y += bias
    if EPI == 3:  # q | k | v: q to out, k and v into the caches at row pos
        seg = n1[None, :] // n_seg
        col = n1[None, :] - seg * n_seg
        rows = m1.to(tl.int64)[:, None]
        tl.store(out_ptr + rows * stride_om + col, y.to(out_ptr.dtype.element_ty), mask=ok & (seg == 0))
        at = rows * stride_cr + pos * stride_cs + col
        tl.store(kc_ptr + at, y.to(kc_ptr.dtype.element_ty), mask=ok & (seg == 1))
        tl.store(vc_ptr + at, y.to(vc_ptr.dtype.element_ty), mask=ok & (seg == 2))
    else:
        out = out_ptr + (m1.to(tl.int64) * stride_om)[:, None] + n1[None, :]
        if EPI == 1:
            y += res
        if EPI == 2:  # exact GELU, as nn.GELU()
            y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
        tl.store(out, y.to(out_ptr.dtype.element_ty), mask=ok)


def _kernel_layout(ggml_type: GGMLType) -> tuple[int, int, int, int, int, int]:
    if ggml_type == GGMLType.F16:
        return 0, -1, -1, 0, 16, 0
    if ggml_type not in _LAYOUT:
        raise ValueError(f"the fused decoder step reads {[t.name for t in FUSED_TYPES]}, got {ggml_type.name}")
    return _LAYOUT[ggml_type]


def _raw_views(raw: torch.Tensor, ggml_type: GGMLType, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if raw.dtype != torch.uint8 or raw.numel() != n * row_nbytes(ggml_type, k):
        raise ValueError(f"{ggml_type.name} weight of shape ({n}, {k}) needs {n * row_nbytes(ggml_type, k)} "
                         f"uint8 bytes, got {raw.numel()} {raw.dtype}")
    raw = raw.reshape(-1)
    if raw.storage_offset() % 2:
        raw = raw.clone()
    return raw, raw.view(torch.int16)


def _tile(m: int, n: int, k: int, bits: int, ln: bool, name: str = "") -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, NB, num_warps): triton_ops' GEMV tile table (F16 rows read 32 halfs a
    block, as Q8_0's 32 bytes), with LONG_STEP_NB blocks per step for long rows without LN and
    CROSS_Q_NB for one-row 5-bit cross-q; below the vocabulary's width, one-warp programs
    (STEP_WARPS), at least STEP_MIN_PROGRAMS of them."""
    qb = 16 if bits in (4, 5) else 32
    block_m, block_n, nb, num_warps = _gemv_config(m, n, k, GGMLType.Q8_0 if qb == 32 else GGMLType.Q4_0)
    if LONG_STEP_NB and not ln and k // QK >= 40 and n < 16384 and block_m * LONG_STEP_NB * qb <= 32 * 32 * num_warps:
        nb = LONG_STEP_NB  # (sm_90 compile of the one-warp tiles below: 168 registers, no spills)
    if CROSS_Q_NB and ln and m == 1 and bits in CROSS_Q_BITS and k // QK >= 40 and n <= CROSS_Q_MAX_N:
        nb = CROSS_Q_NB
    if n < 16384:
        num_warps, block_n = STEP_WARPS, 16
        if not ln and m == 1 and bits in ONE_STEP_WARPS_BITS and nb == LONG_STEP_NB:
            num_warps = ONE_STEP_WARPS if k // QK <= nb else LONG_STEPS_WARPS.get(name, STEP_WARPS)
        while block_n > 1 and (triton.cdiv(n, block_n) < STEP_MIN_PROGRAMS or nb * block_m * block_n * qb > 64 * 32 * num_warps):
            block_n //= 2
        if ln and m == 1 and n >= 4 * k:
            block_n = min(block_n, FC1_ROWS.get(name, block_n))
    return block_m, max(block_n, MIN_BLOCK_N), nb, num_warps


def _whole_row(m: int, n: int, k: int, name: str, block_n: int) -> tuple[int, int, int] | None:
    """(NB, NB2, num_warps) of a GEMV of type `name` with _tile's BLOCK_N rows a program that holds
    its whole row before the wait (WHOLE_ROW_TYPES), or None: one row, a block type, N below the
    vocabulary's width, at most WHOLE_ROW_MAX_VALUES weights a program, K/32 >= PEEL_MIN_BLOCKS the
    sum of two powers of 2 (NB2 0: one step)."""
    n_blk = k // QK
    if m != 1 or n >= 16384 or name not in WHOLE_ROW_TYPES or name == "f16" or n_blk < PEEL_MIN_BLOCKS:
        return None
    nb = 1 << (n_blk.bit_length() - 1)
    nb2 = n_blk - nb
    if nb2 & (nb2 - 1) or block_n * k > WHOLE_ROW_MAX_VALUES:
        return None
    return nb, nb2, WHOLE_ROW_WARPS


def _second_peel(m: int, k: int, name: str, nb: int) -> int:
    """NB2 of a one-row GEMV of type `name` (SECOND_PEEL_NB): the first candidate second peeled
    step that leaves at least one step of NB blocks for the loop, and only whole steps (K/32 - NB -
    NB2 a multiple of NB); 0 if none does, or the row has fewer than PEEL_MIN_BLOCKS blocks."""
    if m != 1 or name == "f16" or k // QK < PEEL_MIN_BLOCKS:
        return 0
    for nb2 in SECOND_PEEL_NB.get(name, ()):
        rest = k // QK - nb - nb2
        if rest >= nb and rest % nb == 0:
            return nb2
    return 0


def folds(ggml_type: GGMLType, k: int, nb: int, whole_row: bool = False) -> bool:
    """Whether an LN GEMV over K with NB blocks a step folds its LayerNorm (_step_gemv_kernel):
    block-quantized rows in more than two steps, or in two of CROSS_Q_NB (on an H100: large-v3's
    K 1280 in 16- and 32-block steps gained, tiny's vocabulary projection in two 8-block steps
    lost 5 %), or held whole before the wait (_whole_row: the statistics come from the same x
    values, with no pass of their own)."""
    steps = -(-k // QK // nb)
    return _as_type(ggml_type) != GGMLType.F16 and (whole_row or steps > 2 or (steps == 2 and nb == CROSS_Q_NB))


def fold_ln(raw: torch.Tensor, ggml_type: GGMLType, n: int, k: int, weight: torch.Tensor,
            bias: torch.Tensor, planes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """W @ weight and W @ bias (each (n,) float32, from float64 sums) of a LayerNorm (weight,
    bias) that precedes the raw (n, k) weight W (planes: planes rows): what an LN GEMV adds in its
    epilogue instead of normalising x before the products (_step_gemv_kernel). Rows dequantized
    4096 at a time."""
    ggml_type = _as_type(ggml_type)
    w_rows = raw.reshape(n, -1)
    g, b = weight.double(), bias.double()
    out_g = torch.empty(n, dtype=torch.float64, device=raw.device)
    out_b = torch.empty(n, dtype=torch.float64, device=raw.device)
    for r0 in range(0, n, 4096):
        rows = w_rows[r0:r0 + 4096]
        if planes:
            rows = from_planes(rows, ggml_type, rows.shape[0], k)
        w = torch_ops.dequantize(rows.contiguous(), ggml_type, (rows.shape[0], k), torch.float64)
        out_g[r0:r0 + 4096] = w @ g
        out_b[r0:r0 + 4096] = w @ b
    return out_g.float(), out_b.float()


def _plan(m: int, n: int, k: int, ggml_type: GGMLType, ln: bool) -> tuple[int, int, int, int, int, bool, bool]:
    """How _step_gemv_kernel runs an (m, k) x (n, k) GEMV: (BLOCK_M, BLOCK_N, NB, NB2, num_warps,
    FOLD, EVEN_K), from _tile, _second_peel and _whole_row."""
    bits, name = _kernel_layout(ggml_type)[4], ggml_type.name.lower()
    block_m, block_n, nb, num_warps = _tile(m, n, k, bits, ln, name)
    nb2, whole = _second_peel(m, k, name, nb), _whole_row(m, n, k, name, block_n)
    if whole is not None:
        nb, nb2, num_warps = whole
    fold = ln and folds(ggml_type, k, nb, whole is not None)
    even_k = whole is not None or (k // QK - nb2) % nb == 0
    return block_m, block_n, nb, nb2, num_warps, fold, even_k


def _launch_gemv(x, raw, ggml_type, n, bias, ln, out, epi, qkv=None):
    ggml_type = _as_type(ggml_type)
    m, k = x.shape
    if not 1 <= m <= MAX_ROWS or k % QK:
        raise ValueError(f"the fused GEMV takes 1..{MAX_ROWS} rows of a multiple of {QK}, got {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    w8, w16 = _raw_views(raw, ggml_type, n, k)
    ts, m_b, qh_b, qs_b, bits, zero = _kernel_layout(ggml_type)
    kc, vc, stride_cr, stride_cs, pos, n_seg = qkv if qkv is not None else (out, out, 0, 0, out, 1)
    pdl = _pdl(x.device)
    block_m, block_n, nb, nb2, num_warps, fold, even_k = _plan(m, n, k, ggml_type, ln is not None)
    ln_w, ln_b, eps = ln[:3] if ln is not None else (x, x, 0.0)
    fold_w, fold_b = x, x
    if fold:
        fold_w, fold_b = ln[3:5] if len(ln) > 3 else fold_ln(raw, ggml_type, n, k, ln_w, ln_b)
    row_bytes = 2 * k if bits == 16 else (k // QK) * ts
    _step_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, x.stride(0), ln_w, ln_b, fold_w, fold_b, float(eps), w8, w16, bias if bias is not None else x,
        out, out.stride(0), kc, vc, stride_cr, stride_cs, pos, n_seg, m, n, k, _MAGIC_BITS,
        TS=ts, M_B=m_b, QH_B=qh_b, QS_B=qs_b, BITS=bits, ZERO=zero,
        BLOCK_M=block_m, BLOCK_N=block_n, NB=nb, NB2=nb2, EVEN_K=even_k,
        LN=ln is not None, FOLD=fold, CHUNK=min(_next_pow2(k), max(32, 2048 // block_m)),
        HAS_BIAS=bias is not None, EPI=epi, PF_LINES=prefetch_lines(block_n * row_bytes), PDL=pdl,
        EARLY_DECODE=m == 1 and bits == 4 and EARLY_DECODE_4BIT,
        num_warps=num_warps, **_pdl_kw(pdl),
        **_trace_kw(triton.cdiv(n, block_n), "gemv", f"{n}x{k}", "LN" if ln is not None else "",
                    ("store", "residual", "gelu", "qkv")[epi]))
    return out


def gemv(x: torch.Tensor, raw: torch.Tensor, ggml_type: GGMLType, n: int, bias: torch.Tensor | None = None,
         ln: tuple | None = None, epilogue: str = "store",
         out: torch.Tensor | None = None) -> torch.Tensor:
    """y = f(LN(x) @ W.T + bias) for x (M, K), 1 <= M <= 8, W raw (n, K) blocks; fp32 accumulation.

    ln: (weight, bias, eps) of a LayerNorm applied to x first (statistics in float32), or None;
    (weight, bias, eps, *fold_ln(...)) with its folded vectors precomputed (else computed here).
    epilogue: 'store' (out = y), 'gelu' (out = GELU(y), exact erf form), 'residual'
    (out += y: `out` is the residual stream, updated in place). out: (M, n), row stride free,
    last axis contiguous; default a new float32 tensor ('residual' needs one).
    """
    if epilogue not in _EPILOGUES:
        raise ValueError(f"epilogue must be one of {list(_EPILOGUES)}, got {epilogue!r}")
    if out is None:
        if epilogue == "residual":
            raise ValueError("the 'residual' epilogue adds into `out`: pass the residual stream")
        out = torch.empty((x.shape[0], n), dtype=torch.float32, device=x.device)
    if tuple(out.shape) != (x.shape[0], n) or out.stride(1) != 1:
        raise ValueError(f"out must be ({x.shape[0]}, {n}) with a contiguous last axis, got {tuple(out.shape)}")
    return _launch_gemv(x, raw, ggml_type, n, bias, ln, out, _EPILOGUES[epilogue])


def gemv_qkv(x: torch.Tensor, raw: torch.Tensor, ggml_type: GGMLType, bias: torch.Tensor | None,
             ln: tuple | None, q_out: torch.Tensor,
             k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor, planes: bool = False) -> torch.Tensor:
    """The self-attention projections of one token per row, written where they are used.

    raw: the (3C, C) rows of query | key | value; bias (3C,) (zeros for the key).
    q_out (M, C) <- q; k_cache[m, pos], v_cache[m, pos] (each (>= M, n_ctx, C)) <- k, v, with
    pos = position[0] read on the device (a one-element long tensor). Returns q_out.
    planes: raw holds planes rows: the Gluon GEMV (its q|k|v epilogue), a row at a time, ln folded.
    """
    m, c = x.shape
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dim() != 3 or cache.shape[0] < m or cache.shape[2] != c or cache.stride(2) != 1:
            raise ValueError(f"{name} must be (>= {m}, n_ctx, {c}) with a contiguous last axis, got {tuple(cache.shape)}")
    if k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must have the same strides")
    if tuple(q_out.shape) != (m, c) or q_out.stride(1) != 1:
        raise ValueError(f"q_out must be ({m}, {c}), got {tuple(q_out.shape)}")
    if planes:
        from . import gluon_gemv

        for r in range(m):
            gluon_gemv.gemv(x[r], raw, ggml_type, 3 * c, c, bias, ln, q_out[r], _pdl(x.device), "qkv",
                            qkv=(k_cache[r], v_cache[r], position))
        return q_out
    return _launch_gemv(x, raw, ggml_type, 3 * c, bias, ln, q_out, EPI_QKV,
                        (k_cache, v_cache, k_cache.stride(0), k_cache.stride(1), position, c))


# ------------------------------------------------------------------------------------------
# Single-query attention, split over the keys, combined by the last program
# ------------------------------------------------------------------------------------------


@triton.jit
def _attn_kernel(
    q_ptr, stride_qm,  # (M, H*D) queries
    k_ptr, v_ptr, stride_kr, stride_ks,  # (R, S_max, H*D) keys / values, R = M / G; same strides
    out_ptr, stride_om,  # (M, H*D) output
    kn_ptr, vn_ptr, stride_nm,  # NEW: (M, H*D) this step's key and value of each row (at pos)
    part_o, part_ml,  # float32 scratch (M, H, SPLITS, D) and (M, H, SPLITS, 2)
    counters,  # int32 (>= R*H,), zero on entry, left zero
    pos_ptr,  # CAUSAL: keys 0..pos attended
    S, G, H, qk_scale,  # keys (not CAUSAL); query rows per K/V row; heads; log2(e)/sqrt(D)
    qkv_bias,  # QKV > 0: the q|k|v product's bias (3*H*D,)
    D: tl.constexpr, BG: tl.constexpr, BS: tl.constexpr, SPLIT_S: tl.constexpr, SPLITS: tl.constexpr,
    CAUSAL: tl.constexpr, NEW: tl.constexpr, PRELOAD: tl.constexpr, PREFETCH: tl.constexpr, PDL: tl.constexpr,
    QKV: tl.constexpr = 0,  # > 0: q, k_new, v_new are the columns of a q|k|v Partials with QKV splits (q_ptr:
    QKV_BM: tl.constexpr = 1, QKV_BIAS: tl.constexpr = False,  # its float32 parts, QKV_BM rows a split)
    EARLY_CONVERT: tl.constexpr = False,  # PRELOAD: SELF_EARLY_CONVERT
    trace_ptr=None, trace_slot=0, TRACE: tl.constexpr = False,  # StepTrace records
):
    pid, split, r, h, program = _attn_program(H, PDL, trace_ptr, trace_slot, TRACE)
    gg = tl.arange(0, BG)
    dd = tl.arange(0, D)
    kv = r.to(tl.int64) * stride_kr + h * D + dd[None, :]
    # Before the wait only what no kernel of this step writes may be read: the position (copied in
    # before the step's first kernel), the cross K/V (fixed for the window) and the cache rows
    # before pos (earlier steps). A split of one step (PRELOAD) loads its keys and values into
    # registers there; with CAUSAL, row pos (this step's q|k|v kernel writes it) is read after the
    # wait. Longer cross splits are only asked into L2 (PREFETCH).
    if CAUSAL:
        n_keys = tl.load(pos_ptr).to(tl.int32) + 1
    else:
        n_keys = S
    if PRELOAD:
        ss_pre = split * SPLIT_S + tl.arange(0, BS)
        at_pre = kv + ss_pre.to(tl.int64)[:, None] * stride_ks
        ok_pre = (ss_pre < n_keys - 1 if CAUSAL else ss_pre < n_keys)[:, None]
        kt_pre = tl.load(k_ptr + at_pre, mask=ok_pre, other=0.0)
        vt_pre = tl.load(v_ptr + at_pre, mask=ok_pre, other=0.0)
        if EARLY_CONVERT:  # widened before the wait, as the cross-attention's (CROSS_EARLY_CONVERT)
            kt_pre = kt_pre.to(tl.float32)
            vt_pre = vt_pre.to(tl.float32)
    elif PREFETCH:
        pf_s = tl.minimum(split * SPLIT_S + tl.arange(0, SPLIT_S), S - 1).to(tl.int64)
        pf_at = r.to(tl.int64) * stride_kr + pf_s * stride_ks + h * D  # one head's D values: D*2 bytes
        _prefetch_at(k_ptr + pf_at)
        _prefetch_at(v_ptr + pf_at)
    if PDL:
        if PRELOAD and EARLY_CONVERT:
            gdc_wait_after(kt_pre, vt_pre)
        else:
            gdc_wait()
    if TRACE:
        _trace_mark(trace_ptr, trace_slot, program, 1)
    n_split = tl.cdiv(n_keys, SPLIT_S)
    if split < n_split:  # splits past the keys (self-attention early in a window) do nothing
        rows = (r * G + tl.minimum(gg, G - 1)).to(tl.int64)  # padding rows repeat the last one
        if QKV > 0:  # the split-K partial sums of q, added and rounded as Partials.tensor() would
            q = _partials_at(q_ptr, qkv_bias, rows[:, None], h * D + dd[None, :], dd[None, :] >= 0, 3 * H * D, QKV,
                             QKV_BM, QKV_BIAS, out_ptr.dtype.element_ty) * qk_scale
        else:
            q = tl.load(q_ptr + rows[:, None] * stride_qm + h * D + dd[None, :]).to(tl.float32) * qk_scale  # [BG, D]
        m_i = tl.full([BG], float("-inf"), tl.float32)
        l_i = tl.zeros([BG], dtype=tl.float32)
        acc = tl.zeros([BG, D], dtype=tl.float32)
        if NEW:  # key/value n_keys - 1 (= pos) come from kn/vn, rounded to the cache's dtype; the
            # program of the split that holds pos writes them into the cache (no other one reads row pos)
            if QKV > 0:
                kn = _partials_at(q_ptr, qkv_bias, r, H * D + h * D + dd, dd >= 0, 3 * H * D, QKV, QKV_BM, QKV_BIAS,
                                  out_ptr.dtype.element_ty).to(k_ptr.dtype.element_ty)
                vn = _partials_at(q_ptr, qkv_bias, r, 2 * H * D + h * D + dd, dd >= 0, 3 * H * D, QKV, QKV_BM,
                                  QKV_BIAS, out_ptr.dtype.element_ty).to(v_ptr.dtype.element_ty)
            else:
                new_at = r.to(tl.int64) * stride_nm + h * D + dd
                kn = tl.load(kn_ptr + new_at).to(k_ptr.dtype.element_ty)
                vn = tl.load(vn_ptr + new_at).to(v_ptr.dtype.element_ty)
            if split == n_split - 1:
                at_pos = r.to(tl.int64) * stride_kr + (n_keys - 1).to(tl.int64) * stride_ks + h * D + dd
                tl.store(k_ptr + at_pos, kn)
                tl.store(v_ptr + at_pos, vn)
        for s0 in range(0, SPLIT_S, BS):
            ss = split * SPLIT_S + s0 + tl.arange(0, BS)
            if PRELOAD:
                kt = kt_pre.to(tl.float32)
                vt = vt_pre.to(tl.float32)
                if CAUSAL:  # row pos: this step's, from kn / vn or (not NEW) from the cache after the wait
                    is_new = (ss == n_keys - 1)[:, None]
                    if not NEW:
                        at_pos = kv + (n_keys - 1).to(tl.int64) * stride_ks  # [1, D]
                        kn = tl.load(k_ptr + at_pos)
                        vn = tl.load(v_ptr + at_pos)
                    kt = tl.where(is_new, kn.to(tl.float32), kt)
                    vt = tl.where(is_new, vn.to(tl.float32), vt)
            else:
                ok = (ss < n_keys - 1)[:, None] if NEW else (ss < n_keys)[:, None]
                at = kv + ss.to(tl.int64)[:, None] * stride_ks  # [BS, D]
                kt = tl.load(k_ptr + at, mask=ok, other=0.0).to(tl.float32)
                vt = tl.load(v_ptr + at, mask=ok, other=0.0).to(tl.float32)  # issued before kt is used
                if NEW:
                    is_new = (ss == n_keys - 1)[:, None]
                    kt = tl.where(is_new, kn.to(tl.float32)[None, :], kt)
                    vt = tl.where(is_new, vn.to(tl.float32)[None, :], vt)
            sc = tl.sum(q[:, None, :] * kt[None, :, :], axis=2)  # [BG, BS], log2 units
            sc = tl.where((ss < n_keys)[None, :], sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, axis=1))  # finite: the first step has a key
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(sc - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * vt[None, :, :], axis=1)
            m_i = m_new
        gok = gg < G
        o_at = out_ptr + rows[:, None] * stride_om + h * D + dd[None, :]
        if n_split == 1:
            tl.store(o_at, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=gok[:, None])
        else:
            part = (rows * H + h) * SPLITS + split  # [BG]
            tl.store(part_o + part[:, None] * D + dd[None, :], acc, mask=gok[:, None])
            tl.store(part_ml + part * 2, m_i, mask=gok)
            tl.store(part_ml + part * 2 + 1, l_i, mask=gok)
            tl.debug_barrier()  # every thread's partial stores precede the counter's release
            done = tl.atomic_add(counters + pid, 1, sem="acq_rel")
            if done == n_split - 1:  # the last of this (row, head): combine in split order
                sp = tl.arange(0, SPLITS)[:, None]
                idx = (rows[None, :] * H + h) * SPLITS + sp  # [SPLITS, BG]
                sok = sp < n_split
                mp = tl.load(part_ml + idx * 2, mask=sok, other=float("-inf"), cache_modifier=".cg")
                lp = tl.load(part_ml + idx * 2 + 1, mask=sok, other=0.0, cache_modifier=".cg")
                op = tl.load(part_o + idx[:, :, None] * D + dd[None, None, :], mask=sok[:, :, None], other=0.0,
                             cache_modifier=".cg")  # [SPLITS, BG, D]
                mx = tl.max(mp, axis=0)  # [BG]
                wgt = tl.exp2(mp - mx[None, :])  # 0 for missing splits
                den = tl.sum(lp * wgt, axis=0)
                o = tl.sum(op * wgt[:, :, None], axis=0) / den[:, None]
                tl.store(o_at, o.to(out_ptr.dtype.element_ty), mask=gok[:, None])
                tl.atomic_xchg(counters + pid, 0)
    if TRACE:
        _trace_mark(trace_ptr, trace_slot, program, 2)


@triton.jit
def _cross_attn_kernel(
    q_ptr, stride_qm,  # (M, H*D) queries, one a K/V row; or (QP > 0) the query product's Partials
    k_ptr, v_ptr, stride_kr, stride_ks,  # (M, S, H*D) keys / values; same strides
    out_ptr, stride_om,  # (M, H*D) output
    part_o, part_ml, counters,  # as _attn_kernel's
    S, H, qk_scale, q_bias,  # keys; heads; log2(e)/sqrt(D); QP_BIAS: the product's bias (H*D,)
    D: tl.constexpr, BS: tl.constexpr, SPLITS: tl.constexpr,
    QP: tl.constexpr, QP_BM: tl.constexpr, QP_BIAS: tl.constexpr, PDL: tl.constexpr,
    EARLY_CONVERT: tl.constexpr = False,  # CROSS_EARLY_CONVERT
    trace_ptr=None, trace_slot=0, TRACE: tl.constexpr = False,  # StepTrace records
):
    """Cross-attention of one query row per window: program (row r, head h) x split, BS keys a
    split in one step. The keys and values are loaded before the PDL wait, marked evict-first
    (each step streams every layer's cross K/V once; kept in L2 they only push out what is read
    again); the last program of a (row, head) combines the splits in split order, so the result
    is the same bits every time. QP > 0: q is the query product's split-K partial sums, added here
    and rounded as Partials.tensor() would."""
    pid, split, r, h, program = _attn_program(H, PDL, trace_ptr, trace_slot, TRACE)
    dd = tl.arange(0, D)
    ss = split * BS + tl.arange(0, BS)
    at = r.to(tl.int64) * stride_kr + ss.to(tl.int64)[:, None] * stride_ks + h * D + dd[None, :]  # [BS, D]
    kt = tl.load(k_ptr + at, mask=(ss < S)[:, None], other=0.0, eviction_policy="evict_first")
    vt = tl.load(v_ptr + at, mask=(ss < S)[:, None], other=0.0, eviction_policy="evict_first")
    if EARLY_CONVERT:  # float16 keys and values widened before the wait (their low 13 bits are 0)
        kt = kt.to(tl.float32)
        vt = vt.to(tl.float32)
    if PDL:
        if EARLY_CONVERT:
            gdc_wait_after(kt, vt)
        else:
            gdc_wait()
    if TRACE:
        _trace_mark(trace_ptr, trace_slot, program, 1)
    if QP > 0:
        q = _partials_at(q_ptr, q_bias, r, h * D + dd, dd >= 0, H * D, QP, QP_BM, QP_BIAS, out_ptr.dtype.element_ty)
    else:
        q = tl.load(q_ptr + r.to(tl.int64) * stride_qm + h * D + dd).to(tl.float32)
    sc = tl.sum((q * qk_scale)[None, :] * kt.to(tl.float32), axis=1)  # [BS], log2 units
    sc = tl.where(ss < S, sc, float("-inf"))
    m_i = tl.max(sc, axis=0)  # finite: every split has a key
    p = tl.exp2(sc - m_i)
    l_i = tl.sum(p, axis=0)
    acc = tl.sum(p[:, None] * vt.to(tl.float32), axis=0)  # [D]
    n_split = tl.cdiv(S, BS)
    o_at = out_ptr + r.to(tl.int64) * stride_om + h * D + dd
    if n_split == 1:
        tl.store(o_at, (acc / l_i).to(out_ptr.dtype.element_ty))
    else:
        part = pid * SPLITS + split
        tl.store(part_o + part.to(tl.int64) * D + dd, acc)
        tl.store(part_ml + part * 2, m_i)
        tl.store(part_ml + part * 2 + 1, l_i)
        tl.debug_barrier()  # every thread's partial stores precede the counter's release
        done = tl.atomic_add(counters + pid, 1, sem="acq_rel")
        if done == n_split - 1:  # the last of this (row, head): combine in split order
            sp = tl.arange(0, SPLITS)
            idx = pid * SPLITS + sp
            sok = sp < n_split
            mp = tl.load(part_ml + idx * 2, mask=sok, other=float("-inf"), cache_modifier=".cg")
            lp = tl.load(part_ml + idx * 2 + 1, mask=sok, other=0.0, cache_modifier=".cg")
            op = tl.load(part_o + idx.to(tl.int64)[:, None] * D + dd[None, :], mask=sok[:, None], other=0.0,
                         cache_modifier=".cg")  # [SPLITS, D]
            wgt = tl.exp2(mp - tl.max(mp, axis=0))  # 0 for missing splits
            o = tl.sum(op * wgt[:, None], axis=0) / tl.sum(lp * wgt, axis=0)
            tl.store(o_at, o.to(out_ptr.dtype.element_ty))
            tl.atomic_xchg(counters + pid, 0)
    if TRACE:
        _trace_mark(trace_ptr, trace_slot, program, 2)


def _attn_tiles(g: int, d: int) -> tuple[int, int]:
    """(BG, BS): query rows padded to a power of 2, keys per step with BG*BS*D <= 4096 where it
    can (32 fp32 a thread at 4 warps; 8192 spilled at BG 1, sm_90 compile)."""
    bg = _next_pow2(g)
    return bg, max(16, min(128, 4096 // (bg * d)))


def attention(q: torch.Tensor | triton_ops.Partials, k: torch.Tensor, v: torch.Tensor, n_head: int, out: torch.Tensor,
              counters: torch.Tensor, position: torch.Tensor | None = None, split_s: int = 128,
              k_new: torch.Tensor | None = None, v_new: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax(q k^T / sqrt(D)) v for one query per row, over n_head heads of D = C / n_head.

    q (M, C); k, v (R, S, C) with M = R * G: query rows r*G .. r*G+G-1 share K/V row r (beams of
    a window over its cross K/V). position: None -> all S keys; a one-element long tensor p ->
    keys 0..p only (self-attention over a static cache). out (M, C), any float dtype.
    counters: int32 zeros (>= R * n_head), left zero. split_s: keys per program (power of 2).
    k_new, v_new (M, C), with position and G = 1: this step's key and value, attended as key p
    and written into row p of k and v (the unfused step's cache write, without two copy kernels).
    q may instead be the q|k|v product's split-K Partials (M, 3C) (a batched step, QLinear.
    forward_parts), with position, G = 1 and no k_new / v_new: the kernel adds the partials of q,
    k_new and v_new itself, rounded as Partials.tensor() would, instead of a reduce kernel first.
    """
    parts = q if isinstance(q, triton_ops.Partials) else None
    if parts is not None:
        if k_new is not None or len(parts.shape) != 2:
            raise ValueError("q partials need a (M, C) or, with a position, (M, 3C) shape and no k_new / v_new")
        if position is None:  # the cross-attention's query product
            m, c = parts.shape
            if k.shape[0] != m or k.shape[2] != c:
                raise ValueError(f"query partials {tuple(parts.shape)} need one K/V row each of width {c}, got {tuple(k.shape)}")
        elif parts.shape[1] % 3:
            raise ValueError(f"q|k|v partials need a (M, 3C) shape, got {tuple(parts.shape)}")
        else:
            m, c = parts.shape[0], parts.shape[1] // 3
        if out.dtype != parts.dtype:
            raise ValueError(f"out must be the partials' dtype {parts.dtype}, got {out.dtype}")
        q = parts.parts
        k_new = v_new = None
    else:
        m, c = q.shape
    r, s_max, ck = k.shape
    if ck != c or tuple(v.shape) != tuple(k.shape) or k.stride() != v.stride() or k.stride(2) != 1:
        raise ValueError(f"k and v must be (R, S, {c}) alike with a contiguous last axis, got {tuple(k.shape)}, {tuple(v.shape)}")
    if m % r:
        raise ValueError(f"{m} query rows can't share K/V of {r} rows")
    if counters.dtype != torch.int32 or counters.numel() < r * n_head:
        raise ValueError(f"counters must be int32 with >= {r * n_head} elements")
    g, d = m // r, c // n_head
    if d * n_head != c or d & (d - 1):
        raise ValueError(f"head size {c} / {n_head} must be a power of 2")
    new = k_new is not None or parts is not None
    if k_new is not None and (position is None or g != 1 or v_new is None or tuple(k_new.shape) != (m, c)
                or k_new.stride() != v_new.stride() or tuple(v_new.shape) != (m, c) or k_new.stride(1) != 1):
        raise ValueError(f"k_new and v_new must be ({m}, {c}) alike, with a position and one query row per K/V row")
    bg, bs = _attn_tiles(g, d)
    bs = min(bs, split_s)
    splits = triton.cdiv(s_max, split_s)
    sp2 = _next_pow2(splits)  # the partials' split axis (the combine reads it as one tile)
    pdl = _pdl(q.device)
    if position is None and g == 1 and split_s <= CROSS_MAX_SPLIT_S and not split_s & (split_s - 1):
        part_o = torch.empty((m * n_head * sp2 * d,), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((m * n_head * sp2 * 2,), dtype=torch.float32, device=q.device)
        _cross_attn_kernel[(m * n_head, splits)](
            q, q.stride(0) if parts is None else 0, k, v, k.stride(0), k.stride(1), out, out.stride(0),
            part_o, part_ml, counters, s_max, n_head, math.log2(math.e) / math.sqrt(d),
            q if parts is None or parts.bias is None else parts.bias,
            D=d, BS=split_s, SPLITS=sp2, QP=0 if parts is None else parts.parts.shape[0],
            QP_BM=1 if parts is None else parts.parts.shape[1], QP_BIAS=parts is not None and parts.bias is not None,
            PDL=pdl, EARLY_CONVERT=CROSS_EARLY_CONVERT and m == 1 and parts is None and k.element_size() == 2,
            num_warps=CROSS_ONE_ROW_WARPS, **_pdl_kw(pdl),
            **_trace_kw(m * n_head * splits, "cross-attention"))
        return out
    if parts is not None and position is None:
        raise ValueError(f"query partials need split_s a power of 2 <= {CROSS_MAX_SPLIT_S}, got {split_s}")
    if position is None and g == 1:
        warps = CROSS_ONE_ROW_WARPS
    elif position is not None and (m >= SELF_ONE_WARP_ROWS or (m == 1 and split_s <= ONE_ROW_SELF_SPLIT_S)):
        warps = 1
    else:
        warps = ATTN_WARPS
    part_o = torch.empty((m * n_head * sp2 * d,), dtype=torch.float32, device=q.device)
    part_ml = torch.empty((m * n_head * sp2 * 2,), dtype=torch.float32, device=q.device)
    _attn_kernel[(r * n_head, splits)](
        q, q.stride(0) if parts is None else 0, k, v, k.stride(0), k.stride(1), out, out.stride(0),
        k_new if k_new is not None else q, v_new if v_new is not None else q, k_new.stride(0) if k_new is not None else 0,
        part_o, part_ml, counters,
        position if position is not None else counters, s_max, g, n_head, math.log2(math.e) / math.sqrt(d),
        q if parts is None or parts.bias is None else parts.bias,
        QKV=0 if parts is None else parts.parts.shape[0], QKV_BM=1 if parts is None else parts.parts.shape[1],
        QKV_BIAS=parts is not None and parts.bias is not None,
        D=d, BG=bg, BS=bs, SPLIT_S=split_s, SPLITS=sp2, CAUSAL=position is not None, NEW=new,
        PRELOAD=bs == split_s and (position is None or SELF_PRELOAD),
        EARLY_CONVERT=SELF_EARLY_CONVERT and position is not None and m == 1 and parts is None and k.element_size() == 2,
        PREFETCH=position is None and triton_ops.PREFETCH_L2 and d * k.element_size() <= 128, PDL=pdl,
        num_warps=warps, **_pdl_kw(pdl),
        **_trace_kw(r * n_head * splits, "self-attention" if position is not None else "cross-attention"))
    return out


# ------------------------------------------------------------------------------------------
# Token + positional embedding
# ------------------------------------------------------------------------------------------


@triton.jit
def _embed_kernel(tok_ptr, stride_t, w8, w16, pe_ptr, pos_ptr, x_ptr, K, magic,
                  TS: tl.constexpr, M_B: tl.constexpr, QH_B: tl.constexpr, QS_B: tl.constexpr,
                  BITS: tl.constexpr, ZERO: tl.constexpr, NBLK: tl.constexpr, PDL: tl.constexpr,
                  PNB: tl.constexpr = 0):
    """x[m] = W[tokens[m]] + pe[pos] in float32 (W dequantized as triton_ops.dequantize does;
    PNB > 0: W is planes rows of PNB blocks, quants/planes.py)."""
    m = tl.program_id(0)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()  # tokens and pos come from the step before
    t = tl.load(tok_ptr + m * stride_t).to(tl.int64)
    pos = tl.load(pos_ptr).to(tl.int64)
    n_blk = K // _QK
    x_row = x_ptr + m.to(tl.int64) * K
    pe_row = pe_ptr + pos * K
    for b0 in range(0, n_blk, NBLK):
        blk = b0 + tl.arange(0, NBLK)[:, None]
        ok = blk < n_blk
        if BITS == 16:
            jj = tl.arange(0, 32)[None, :]
            k = blk * _QK + jj
            w = tl.load(w16 + t * K + k, mask=ok, other=0).to(tl.float16, bitcast=True).to(tl.float32)
            tl.store(x_row + k, w + tl.load(pe_row + k, mask=ok, other=0.0).to(tl.float32), mask=ok)
        else:
            d_off, m_off, qh_off, qs_off = _field_offsets(t * n_blk * TS, blk, TS, M_B, QH_B, QS_B, BITS, PNB)
            d = _f16_at(w16, d_off, ok, False)
            if BITS == 8:
                jj = tl.arange(0, 32)[None, :]
                k = blk * _QK + jj
                q = _decode_int8(tl.load(w8 + qs_off + jj, mask=ok, other=0).to(tl.int32), magic)
                tl.store(x_row + k, q * d + tl.load(pe_row + k, mask=ok, other=0.0).to(tl.float32), mask=ok)
            else:
                jj = tl.arange(0, 16)[None, :]
                k = blk * _QK + jj
                w_lo, w_hi = _dequant_nibbles(w8, w16, m_off, qh_off, qs_off, ok, jj, d, magic, M_B, BITS, ZERO)
                tl.store(x_row + k, w_lo + tl.load(pe_row + k, mask=ok, other=0.0).to(tl.float32), mask=ok)
                tl.store(x_row + k + 16, w_hi + tl.load(pe_row + k + 16, mask=ok, other=0.0).to(tl.float32), mask=ok)


def embed(tokens: torch.Tensor, raw: torch.Tensor, ggml_type: GGMLType, n_vocab: int,
          positional_embedding: torch.Tensor, position: torch.Tensor, out: torch.Tensor,
          planes: bool = False) -> torch.Tensor:
    """out (M, C) float32 <- token_embedding[tokens] + positional_embedding[position[0]]; tokens (M,) long.
    planes: raw is planes rows (quants/planes.py)."""
    ggml_type = _as_type(ggml_type)
    m, c = out.shape
    if tokens.shape != (m,) or not out.is_contiguous() or c % QK:
        raise ValueError(f"tokens must be ({m},) and out contiguous (M, C), got {tuple(tokens.shape)}, {tuple(out.shape)}")
    w8, w16 = _raw_views(raw, ggml_type, n_vocab, c)
    pe = positional_embedding if positional_embedding.is_contiguous() else positional_embedding.contiguous()
    ts, m_b, qh_b, qs_b, bits, zero = _kernel_layout(ggml_type)
    # tokens may be a strided view (decoding passes tokens[:, offset:] of the whole sequence)
    pdl = _pdl(out.device)
    _embed_kernel[(m,)](tokens, tokens.stride(0), w8, w16, pe, position, out, c, _MAGIC_BITS,
                        TS=ts, M_B=m_b, QH_B=qh_b, QS_B=qs_b, BITS=bits, ZERO=zero,
                        NBLK=_next_pow2(min(c // QK, 64)), PDL=pdl, PNB=c // QK if planes else 0, num_warps=4,
                        **_pdl_kw(pdl))
    return out


# ------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    qkv: torch.Tensor  # raw (3C, C) rows: query | key | value
    qkv_bias: torch.Tensor  # (3C,) float32, zeros for the key
    qkv_type: GGMLType
    qkv_planes: bool  # qkv holds planes rows: the Gluon GEMV
    qkv_ln: tuple  # the LN GEMVs' ln arguments with their fold_ln vectors: attn_ln -> q|k|v,
    cross_q_ln: tuple  # cross_attn_ln -> cross_attn.query,
    fc1_ln: tuple  # mlp_ln -> mlp.0


class DecoderStep:
    """The fused one-token step of one TextDecoder (built by `prepare`, kept on the decoder).

    Holds each layer's q|k|v rows (MultiHeadAttention.qkv_projection's weight, which the q/k/v
    QLinear weights are views of) with a float32 bias, each LayerNorm folded into the weight after
    it (fold_ln: 2 floats a weight row), and the attention counters.
    """

    def __init__(self, decoder):
        blocks = list(decoder.blocks)
        first = blocks[0]
        self.n_state = first.attn.query.in_features
        self.n_head = first.attn.n_head
        self.device = decoder.token_embedding.weight.device
        self.layers: list[_Layer] = []
        for block in blocks:
            qkv = block.attn.qkv_projection()  # the q|k|v rows, shared with the unfused step
            self.layers.append(_Layer(qkv.weight.reshape(-1), qkv.bias.float(), qkv.ggml_type, qkv.planes,
                                      _folded(block.attn_ln, qkv), _folded(block.cross_attn_ln, block.cross_attn.query),
                                      _folded(block.mlp_ln, block.mlp[0])))
        self.head_ln = _folded(decoder.ln, decoder.token_embedding)
        self.counters = torch.zeros(MAX_ROWS * self.n_head, dtype=torch.int32, device=self.device)
        self.signature = _signature(decoder)

    def __call__(self, decoder, tokens: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
        """tokens (M, 1) at position[0] -> logits (M, 1, n_vocab) float32; writes K/V into the cache."""
        if _trace is not None:
            _trace.slot = 0
        m = tokens.shape[0]
        c, h = self.n_state, self.n_head
        dev = tokens.device
        te = decoder.token_embedding
        x = torch.empty((m, c), dtype=torch.float32, device=dev)  # the residual stream
        embed(tokens[:, 0], te.weight, te.ggml_type, te.out_features, decoder.positional_embedding, position, x,
              te.planes)
        q = torch.empty((m, c), dtype=torch.float32, device=dev)
        a = torch.empty((m, c), dtype=torch.float32, device=dev)
        hid = torch.empty((m, 4 * c), dtype=torch.float32, device=dev)
        for i, (block, lay) in enumerate(zip(decoder.blocks, self.layers)):
            att, xatt = block.attn, block.cross_attn
            gemv_qkv(x, lay.qkv, lay.qkv_type, lay.qkv_bias, lay.qkv_ln, q,
                     cache.self_k[i], cache.self_v[i], position, lay.qkv_planes)
            attention(q, cache.self_k[i], cache.self_v[i], h, a, self.counters, position,
                      split_s=ONE_ROW_SELF_SPLIT_S if m == 1 else SELF_SPLIT_S)
            _linear(a, att.out, out=x, epilogue="residual")
            _linear(x, xatt.query, out=q, ln=lay.cross_q_ln)
            attention(q, cache.cross_k[i], cache.cross_v[i], h, a, self.counters, split_s=CROSS_SPLIT_S)
            _linear(a, xatt.out, out=x, epilogue="residual")
            fc1, fc2 = block.mlp[0], block.mlp[2]
            _linear(x, fc1, out=hid, ln=lay.fc1_ln, epilogue="gelu")
            _linear(hid, fc2, out=x, epilogue="residual")
        logits = _linear(x, te, ln=self.head_ln)
        return logits.view(m, 1, te.out_features)


def _folded(ln, lin) -> tuple:
    """gemv's ln argument for LayerNorm ln before QLinear lin: (weight, bias, eps), with W @ weight
    and W @ bias appended where the step's GEMV folds the LayerNorm (folds, for the tile of any
    row count the step takes, or always on planes: the Gluon GEMV), so that no step computes them."""
    n, k = lin.out_features, lin.in_features
    if not lin.planes and not any(_plan(m, n, k, _as_type(lin.ggml_type), True)[5] for m in range(1, MAX_ROWS + 1)):
        return ln.weight, ln.bias, ln.eps
    return ln.weight, ln.bias, ln.eps, *fold_ln(lin.weight, lin.ggml_type, n, k, ln.weight, ln.bias, lin.planes)


def _linear(x, lin, out=None, ln=None, epilogue="store"):
    if lin.planes:  # planes rows (loader: VOCAB_PLANES, BLOCK_PLANES): the Gluon GEMV, one row at a time
        from . import gluon_gemv

        if out is None:
            out = torch.empty((x.shape[0], lin.out_features), dtype=torch.float32, device=x.device)
        for r in range(x.shape[0]):
            gluon_gemv.gemv(x[r], lin.weight.reshape(-1), lin.ggml_type, lin.out_features, lin.in_features, lin.bias,
                            ln, out[r], _pdl(x.device), epilogue)
        return out
    return gemv(x, lin.weight, lin.ggml_type, lin.out_features, lin.bias, ln, epilogue, out)


def _signature(decoder) -> tuple:
    """What a prepared step depends on: the device and the addresses of the weights it copies or
    folds (q|k|v biases; LayerNorms and the weights after them, fold_ln). Values changed in place
    (load_state_dict into the same tensors) are not seen: call prepare's caller again after
    moving or replacing them, or drop decoder._fused_state."""
    ptrs = [decoder.token_embedding.weight.data_ptr(), decoder.ln.weight.data_ptr(), decoder.ln.bias.data_ptr()]
    for b in decoder.blocks:
        ptrs += [b.attn.query.weight.data_ptr(), b.attn.key.weight.data_ptr(), b.attn.value.weight.data_ptr(),
                 b.attn.query.bias.data_ptr(), b.attn.value.bias.data_ptr(), b.cross_attn.query.weight.data_ptr(),
                 b.mlp[0].weight.data_ptr()]
        ptrs += [t.data_ptr() for ln in (b.attn_ln, b.cross_attn_ln, b.mlp_ln) for t in (ln.weight, ln.bias)]
    return (str(decoder.token_embedding.weight.device), tuple(ptrs))


def unsupported(decoder, rows: int) -> str | None:
    """Why the fused step can't run this decoder at `rows` rows (None: it can)."""
    if not 1 <= rows <= MAX_ROWS:
        return f"{rows} rows (the fused step takes 1..{MAX_ROWS})"
    first = decoder.blocks[0]
    c, h = first.attn.query.in_features, first.attn.n_head
    if c % QK or (c // h) & (c // h - 1):
        return f"n_state {c} / n_head {h}"
    lins = [decoder.token_embedding]
    for b in decoder.blocks:
        if b.cross_attn is None:
            return "a decoder block without cross-attention"
        if b.attn.qkv_projection() is None:
            return "query, key and value weights of different types (or devices, bias dtypes)"
        lins += [b.attn.query, b.attn.out, b.cross_attn.query, b.cross_attn.out, b.mlp[0], b.mlp[2]]
    bad = sorted({lin.ggml_type.name for lin in lins if lin.ggml_type not in FUSED_TYPES})
    return f"weight types {bad}" if bad else None


def prepare(decoder) -> DecoderStep:
    """The decoder's DecoderStep, built on first use and rebuilt when its weights moved."""
    st = getattr(decoder, "_fused_state", None)
    if st is None or st.signature != _signature(decoder):
        st = DecoderStep(decoder)
        decoder._fused_state = st
        if hasattr(decoder, "drop_graphs"):  # captured graphs read the q/k/v weights' old memory
            decoder.drop_graphs()
    return st


def decoder_step(decoder, tokens: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
    """One fused decoder step: tokens (M, 1) long at position (1,) long, both on the decoder's
    device -> logits (M, 1, n_vocab) float32; k, v of the token written into cache.self_k/v."""
    return prepare(decoder)(decoder, tokens, position, cache)


__all__ = [
    "FUSED_TYPES",
    "MAX_ROWS",
    "DecoderStep",
    "attention",
    "decoder_step",
    "embed",
    "gemv",
    "gemv_qkv",
    "prepare",
    "unsupported",
]
