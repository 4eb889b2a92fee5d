"""Run a benchmark script with module constants of qwhisper changed: the A/B runs of one device
call (docs/reports/performance.md) without editing the code between them.

    python benchmarks/with_settings.py "quants.triton_decoder.SECOND_PEEL_NB={'q5_0': (32,)}" \\
        -- benchmarks/bench_model.py --archs large-v3 --types q5_0 --decode-only

Each MODULE.NAME=VALUE sets qwhisper.MODULE.NAME to VALUE read as a Python literal ("4,5" is
(4, 5), "()" an empty tuple, "0" an int); NAME must already exist. The settings are printed first,
then the script runs as __main__ with the arguments after "--" ("-- -m pytest ..." runs a module,
so the GPU tests can run with the same settings).
"""

from __future__ import annotations

import ast
import importlib
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def resolve(setting: str):
    """(module, NAME, VALUE text) of a MODULE.NAME=VALUE setting; NAME must exist in qwhisper.MODULE."""
    target, sep, text = setting.partition("=")
    module_name, _, name = target.rpartition(".")
    if not sep or not module_name or not name:
        raise SystemExit(f"with_settings: {setting!r} is not MODULE.NAME=VALUE")
    module = importlib.import_module(f"qwhisper.{module_name}")
    if not hasattr(module, name):
        raise SystemExit(f"with_settings: qwhisper.{module_name} has no {name}")
    return module, name, text


def apply(setting: str) -> str:
    module, name, text = resolve(setting)
    target = setting.partition("=")[0]
    try:
        value = ast.literal_eval(text) if text.strip() else None
    except (ValueError, SyntaxError):
        raise SystemExit(f"with_settings: {text!r} ({target}) is not a Python literal") from None
    setattr(module, name, value)
    return f"{target}={value!r}"


def main(argv: list[str]) -> None:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        raise SystemExit(__doc__)
    cut = argv.index("--")
    sys.path.insert(0, str(REPO))
    done = [apply(s) for s in argv[:cut]]
    print("# with_settings:", " ".join(done) if done else "(none)", flush=True)
    script, *args = argv[cut + 1:]
    if script == "-m" and args:  # a module, as python -m runs it (pytest, say)
        sys.argv = [args[0], *args[1:]]
        runpy.run_module(args[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = [script, *args]
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
