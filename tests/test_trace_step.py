"""benchmarks/trace_step.py's timeline arithmetic on hand-made records, and the step's trace
bookkeeping (triton_decoder.StepTrace) on the CPU. The records themselves are written on a GPU
(%globaltimer, %smid: inline PTX the interpreter does not run)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import trace_step

from qwhisper.quants import triton_decoder as td


def _records(kernels):
    """(slots, programs, 4) int64 from [[(start, wait, end, sm) in us, ...] per kernel], in ns."""
    rec = np.zeros((len(kernels), 8, 4), dtype=np.int64)
    for s, progs in enumerate(kernels):
        for p, (st, wt, en, sm) in enumerate(progs):
            rec[s, p] = (int(st * 1000), int(wt * 1000), int(en * 1000), sm)
    return rec


def test_kernel_rows_spans_gaps_tails_and_late_programs():
    base = 1_000_000.0  # us: the timer counts from an arbitrary origin
    rec = _records([
        [(base + 0, base + 1, base + 4, 0), (base + 0.5, base + 1, base + 3, 1)],
        # starts before the first kernel ends (4) except one program at 5; released at 4.5
        [(base + 2, base + 4.5, base + 6, 0), (base + 3, base + 4.5, base + 7, 0), (base + 5, base + 5, base + 9, 2)],
    ])
    a, b = trace_step.kernel_rows(rec, 2)
    assert a["span"] == pytest.approx(4.0) and np.isnan(a["gap"])
    assert a["wait_to_median_end"] == pytest.approx(2.5) and a["median_to_last_end"] == pytest.approx(0.5)
    assert a["before_wait"] == pytest.approx(0.75) and a["after_wait_max"] == pytest.approx(3.0)
    assert b["span"] == pytest.approx(5.0)  # 4 -> 9
    assert b["gap"] == pytest.approx(0.5)  # 4 -> first release 4.5
    assert b["late"] == 1 and b["sms"] == 2 and b["max_per_sm"] == 2
    assert b["after_wait_median"] == pytest.approx(2.5)  # 1.5, 2.5 and 4 (the late one from its start)
    assert b["wait_to_median_end"] == pytest.approx(2.5) and b["median_to_last_end"] == pytest.approx(2.0)


def test_stage_table_groups_layers_and_checks_the_kernel_count():
    one = [(0.0, 0.5, 1.0, 0)]
    rec = _records([[(1e6 + t + st, 1e6 + t + wt, 1e6 + t + en, sm) for st, wt, en, sm in one] for t in np.arange(17.0)])
    rows = trace_step.kernel_rows(rec, 17)
    names = [f"k{i}" for i in range(17)]
    table = trace_step.stage_table(rows, names, 2)
    lines = table.splitlines()
    assert lines[2].startswith("| qkv (k0) | 1.00 |")  # the first kernel: start 0 -> end 1
    assert lines[3].startswith("| self_attn (k1) | 1.00 | 0.50 |")  # 1 -> 2, released at 1.5
    assert lines[-3].startswith("| head (k16) |")
    assert "sum of the spans: 17.0 us (17 kernels)" in table
    with pytest.raises(ValueError, match="a 1-layer step has 9"):
        trace_step.stage_table(rows, names, 1)
    with pytest.raises(ValueError, match="slot 0 has no records"):
        trace_step.kernel_rows(np.zeros((1, 4, 4), dtype=np.int64), 1)


def test_step_trace_slots_and_names():
    """A launch while tracing takes the next slot (names kept from the first step); off, none."""
    assert td._trace_kw(4, "gemv", "8x8") == {}
    trace = td.StepTrace(torch.zeros((2, td.TRACE_MAX_PROGRAMS, 4), dtype=torch.int64), [])
    td.trace_steps(trace)
    try:
        kw = td._trace_kw(4, "gemv", "8x8", "", "store")
        assert kw["trace_slot"] == 0 and kw["TRACE"] and kw["trace_ptr"] is trace.records
        assert td._trace_kw(td.TRACE_MAX_PROGRAMS + 1, "cross-attention") == {}  # too many programs: no slot
        assert td._trace_kw(td.TRACE_MAX_PROGRAMS, "self-attention")["trace_slot"] == 1
        assert td._trace_kw(1, "gemv", "1x1") == {}  # past the buffer's slots: not recorded
        trace.slot = 0  # what DecoderStep does at each step
        assert td._trace_kw(4, "gemv", "8x8", "", "store")["trace_slot"] == 0
        assert trace.names == ["gemv 8x8 store", "self-attention"]
    finally:
        td.trace_steps(None)
    assert td._trace_kw(4, "gemv", "8x8") == {}
