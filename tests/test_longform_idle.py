"""benchmarks/longform_idle.py's interval arithmetic: the GPU's busy time is the union of its
activities (overlaps count once) and the gaps are what lies between them inside the host span."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from longform_idle import gaps_of


def test_union_and_gaps_with_overlaps_and_nesting():
    gpu = [(10, 20, "a"), (15, 30, "b"), (16, 18, "c"), (40, 50, "d"), (45, 47, "e"), (60, 61, "f")]
    busy, gaps = gaps_of(0, 100, gpu)
    assert busy == (30 - 10) + (50 - 40) + (61 - 60)
    assert gaps == [(10, 0, "(host start)", "a"), (10, 30, "b", "d"), (10, 50, "d", "f"), (39, 61, "f", "(host end)")]
    assert busy + sum(g for g, *_ in gaps) == 100


def test_activity_from_before_the_span_and_none_at_all():
    busy, gaps = gaps_of(10, 30, [(5, 12, "early"), (20, 25, "x")])
    assert busy == 2 + 5 and [g for g, *_ in gaps] == [8, 5]
    assert gaps_of(0, 7, []) == (0, [(7, 0, "(host start)", "(host end)")])
