"""benchmarks/with_settings.py: the constants it sets are what the script it runs sees, and bad
settings are refused with a message naming them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "benchmarks" / "with_settings.py"


def _run(tmp_path, *settings):
    script = tmp_path / "show.py"
    script.write_text("import sys\nfrom qwhisper.quants import triton_decoder as td\n"
                      "print(repr(td.CROSS_Q_BITS), td.CROSS_Q_NB, td.SECOND_PEEL_NB, sys.argv[1:])\n")
    return subprocess.run([sys.executable, str(TOOL), *settings, "--", str(script), "a", "b"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)


def test_settings_reach_the_script(tmp_path):
    out = _run(tmp_path, "quants.triton_decoder.CROSS_Q_BITS=4,5", "quants.triton_decoder.CROSS_Q_NB=0",
               "quants.triton_decoder.SECOND_PEEL_NB={'q4_0': (32,)}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "(4, 5) 0 {'q4_0': (32,)} ['a', 'b']"
    out = _run(tmp_path, "quants.triton_decoder.CROSS_Q_BITS=()")
    assert out.stdout.splitlines()[-1].startswith("() ")


def test_bad_settings_are_named(tmp_path):
    out = _run(tmp_path, "quants.triton_decoder.NO_SUCH_THING=1")
    assert out.returncode != 0 and "has no NO_SUCH_THING" in out.stderr
    out = _run(tmp_path, "quants.triton_decoder.CROSS_Q_NB=thirty")
    assert out.returncode != 0 and "'thirty'" in out.stderr and "CROSS_Q_NB" in out.stderr
    out = _run(tmp_path, "CROSS_Q_NB")
    assert out.returncode != 0 and "MODULE.NAME=VALUE" in out.stderr


def test_runs_a_module(tmp_path):
    (tmp_path / "showmod.py").write_text("import sys\nfrom qwhisper.quants import triton_decoder as td\n"
                                         "print(td.ONE_STEP_WARPS, sys.argv[1:])\n")
    out = subprocess.run([sys.executable, str(TOOL), "quants.triton_decoder.ONE_STEP_WARPS=4", "--", "-m", "showmod", "x"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "4 ['x']"
