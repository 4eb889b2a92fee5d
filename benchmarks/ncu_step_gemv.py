"""Two fused-step GEMVs of large-v3 shapes (Q5_0 random blocks), for Nsight Compute:

    ncu --kernel-name regex:_step_gemv --launch-skip 2 --launch-count 2 --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy \
        --section WarpStateStats --section SchedulerStats python benchmarks/ncu_step_gemv.py

fc1 (LayerNorm prologue + GELU epilogue, 5120 x 1280) and fc2 (residual epilogue, 1280 x 5120)
of quants/triton_decoder.py, one row each, three times (ncu skips the first pair: compiles).
Output of 2026-11-26 on an H100: docs/reports/data/ncu-step-gemv-large-v3-q5_0-h100.txt.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.environ.get("QWHISPER_SRC", str(Path(__file__).resolve().parents[1])))
from qwhisper.quants import GGMLType  # noqa: E402
from qwhisper.quants import triton_decoder as td  # noqa: E402


def random_q5_0(n: int, k: int) -> torch.Tensor:
    raw = torch.randint(0, 256, (n * (k // 32) * 22,), dtype=torch.uint8, device="cuda")
    raw.view(-1, 22)[:, 0:2] = torch.tensor([0x00, 0x1C], dtype=torch.uint8, device="cuda")  # d = 2^-8
    return raw


def main() -> int:
    torch.manual_seed(0)
    x = torch.randn(1, 1280, device="cuda")
    w1, w2 = random_q5_0(5120, 1280), random_q5_0(1280, 5120)
    ln = (torch.ones(1280, device="cuda"), torch.zeros(1280, device="cuda"), 1e-5)
    b1, b2 = torch.zeros(5120, device="cuda"), torch.zeros(1280, device="cuda")
    h = torch.empty(1, 5120, device="cuda")
    for _ in range(3):
        td.gemv(x, w1, GGMLType.Q5_0, 5120, b1, ln, "gelu", out=h)
        td.gemv(h, w2, GGMLType.Q5_0, 1280, b2, None, "residual", out=x)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
