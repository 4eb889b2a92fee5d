"""quants/triton_greedy.py: one greedy step's rules, argmax and state update in one kernel,
against greedy_loop._advance (the torch ops, themselves tested against the reference filters in
test_greedy_loop.py) on the same state and logits.

Logits are random with mass on a few text ids, EOT and a run of timestamps, scaled so that the
timestamp rule goes both ways; states cover every (last_ts, pen_ts) pair, finished rows, ts_val
with and without a timestamp, suppressed ids, ties, and rows with every timestamp masked. Tokens
and the state must be equal; sum_lp to float32 rounding (the sums are taken in another order).
The interpreter tests run in a child process (`test_interpreter_suite`), as in test_triton.py;
the CUDA test runs the same cases on the GPU."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import run_interpreter_suite

from qwhisper import greedy_loop

pytest.importorskip("triton")

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
interp = pytest.mark.skipif(not INTERPRETING, reason="runs in the interpreter child process (test_interpreter_suite)")

V, TB, EOT = 1600, 1400, 1300  # a small vocabulary: text < EOT <= specials < TB <= timestamps


def test_interpreter_suite():
    """Run this file's interpreter tests in a child process with TRITON_INTERPRET=1."""
    if INTERPRETING:
        pytest.skip("already in the interpreter process")
    run_interpreter_suite(__file__)


def _cases(device, seed: int, rows: int = 24):
    """(state, rules, logits) with a varied state per row."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, V, generator=g) * 2
    logits[:, 5:12] += 6 + 3 * torch.rand(rows, 7, generator=g)
    logits[:, EOT] += 4 * torch.rand(rows, generator=g) + 2
    logits[:, TB:TB + 40] += 5 + 2 * torch.rand(rows, 1, generator=g)  # the rule goes both ways
    logits[0, 7] = logits[0, 9] = logits[0].max() + 1  # a tie: the first id wins
    logits[1, TB + 3] = logits[1, TB + 5] = logits[1].max() + 1
    logits[3, 100] = logits[3, 700] = logits[3].max() + 1  # in two chunks of 256
    st = greedy_loop._State(rows, 448, "cpu")
    st.buf[:, :3] = torch.randint(0, EOT, (rows, 3), generator=g)
    st.n.fill_(3 + seed % 5)
    st.last_ts.copy_(torch.arange(rows) % 2 == 0)
    st.pen_ts.copy_(torch.arange(rows) // 2 % 2 == 0)
    st.ts_val.copy_(torch.where(torch.arange(rows) % 3 == 0, TB - 1, TB + torch.randint(0, 60, (rows,), generator=g)))
    st.ts_val[2] = V - 1  # every timestamp masked (monotonic rule past the last one)
    st.finished.copy_(torch.arange(rows) % 7 == 6)
    st.sum_lp.copy_(torch.randn(rows, generator=g))
    suppress = torch.zeros(V, dtype=torch.bool)
    suppress[torch.randint(0, V, (60,), generator=g)] = True
    suppress[8] = True  # one of the heavy text ids
    suppress[EOT + 1] = True
    for name in vars(st):
        setattr(st, name, getattr(st, name).to(device))
    return st, suppress.to(device), logits.to(device)


def _check(device, monkeypatch):
    from qwhisper.quants import triton_greedy

    monkeypatch.setattr(greedy_loop, "FUSED_ADVANCE", False)  # greedy_loop._advance: the torch ops
    cases = [(2048, True, 0), (2048, False, 1)] + [(256, t, s) for t in (True, False) for s in range(3)]
    for block, timestamps, seed in cases:  # BLOCK 256: a row in 7 chunks, one across all three id ranges
        monkeypatch.setattr(triton_greedy, "BLOCK", block)
        st, suppress, logits = _cases(device, seed)
        st2, _, _ = _cases(device, seed)
        rules = greedy_loop._Rules(suppress, timestamps, TB, EOT)
        kept = logits.clone()
        greedy_loop._advance(st, rules, logits.clone())
        triton_greedy.advance(st2, rules, logits)
        assert torch.equal(logits, kept)  # read, not masked in place
        what = f"block={block} timestamps={timestamps} seed={seed}"
        for name in ("buf", "n", "last", "last_ts", "pen_ts", "ts_val", "finished"):
            assert torch.equal(getattr(st2, name), getattr(st, name)), f"{what}: {name}"
        torch.testing.assert_close(st2.sum_lp, st.sum_lp, rtol=2e-6, atol=2e-6, msg=what)
        if timestamps:  # the cases take both ways of the timestamp rule
            assert (st.last[:, 0] >= TB).any() and (st.last[:, 0] < TB).any(), what


@interp
def test_interp_advance_equals_torch_advance(monkeypatch):
    _check("cpu", monkeypatch)


@pytest.mark.cuda
def test_cuda_advance_equals_torch_advance(monkeypatch):
    _check("cuda", monkeypatch)
