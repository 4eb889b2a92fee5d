"""`qwhisper verify MODEL...`: the device path against the numpy golden, side by side.

For each GGML file it runs the model on the chosen device (CUDA: Triton kernels on the raw
blocks, float16 activations; CPU: the torch backend, float32) and the numpy golden
(quants.ref, model_ref) on the CPU, and reports:

1. dequantization, per tensor type: every tensor of the file dequantized by the device path
   (CUDA: triton_ops.dequantize; CPU: quants.torch_ops) against quants.ref: max abs error over
   all elements, bit-exact or not (NaN where the golden has NaN counts as equal), and on CUDA
   also float16 outputs against the golden rounded once to float16;
2. matmul, per layer: every QLinear of the model (what the device runs: on CUDA
   triton_ops.linear's GEMV / tensor-core / dequantize+cuBLAS way) on seeded N(0, 1) inputs of
   1, 5 and 64 rows, against float64 x @ W.T + b with the golden's W and the same (rounded) x:
   relative error ||y - ref|| / ||ref|| (Frobenius);
3. on the audio (its first 30 s): encoder output and logits (teacher-forced on the golden's
   greedy tokens), max abs error and max abs / max |golden|, argmax agreement;
4. transcripts: greedy decoding (no timestamps) of the window by the device model from its own
   encoder output, and by the golden: the same tokens or not.

Prints a summary and writes a markdown report (default docs/reports/verification.md).
Exit status 1 when a dequantization is not bit-exact or a matmul error exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import QWhisperError
from .quants import GGMLType

MATMUL_ROWS = (1, 5, 64)  # a decoder step, beams (the vocabulary's tensor-core way), a prompt/encoder
# Relative Frobenius error allowed for one matmul: float16 activations and outputs (2^-11 rounding
# of x, of the output and, on the dequantize+cuBLAS way, of W) -> a few 1e-4; float32 -> ~1e-7.
MATMUL_TOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5}
DEFAULT_REPORT = "docs/reports/verification.md"
DEFAULT_MAX_TOKENS = 96


# --- results -------------------------------------------------------------------------------------

@dataclasses.dataclass
class DequantCheck:
    """One tensor type of a file: the device path's dequantization against quants.ref."""

    ggml_type: str
    tensors: int = 0
    elements: int = 0
    max_abs: float = 0.0  # over finite golden values; inf if a non-finite value differs
    mismatched: int = 0  # elements whose float32 bits differ (NaN == NaN)
    fp16_mismatched: int | None = None  # float16 output vs golden rounded to float16 (CUDA)

    @property
    def exact(self) -> bool:
        return self.mismatched == 0 and not self.fp16_mismatched


@dataclasses.dataclass
class MatmulCheck:
    name: str  # the QLinear's GGML tensor name (without .weight)
    ggml_type: str
    shape: tuple[int, int]  # (N, K)
    rel: dict[int, float]  # rows -> relative Frobenius error
    way: dict[int, str]  # rows -> what ran (triton_ops.pick / cublas / cpu)


@dataclasses.dataclass
class AudioCheck:
    audio: str
    tokens: int  # teacher-forced positions compared (initial tokens included)
    encoder_max_abs: float
    encoder_rel: float  # max abs / max |golden|
    logits_max_abs: float  # decoder fed the golden's audio features
    logits_rel: float
    logits_e2e_max_abs: float  # decoder fed the device's own audio features
    logits_e2e_rel: float
    argmax_agree: float  # fraction of positions with the golden's argmax (end to end)
    golden_text: str
    device_text: str
    same_tokens: bool
    golden_seconds: float
    device_seconds: float


@dataclasses.dataclass
class ModelReport:
    path: str
    file_bytes: int
    device: str
    dtype: str
    dequant: list[DequantCheck]
    matmul: list[MatmulCheck]
    audio: AudioCheck | None
    seconds: float

    @property
    def tolerance(self) -> float:
        return MATMUL_TOL[self.dtype]

    def worst_matmul(self) -> float:
        return max((r for m in self.matmul for r in m.rel.values()), default=0.0)

    @property
    def passed(self) -> bool:
        return all(d.exact for d in self.dequant) and self.worst_matmul() <= self.tolerance


# --- 1. dequantization ---------------------------------------------------------------------------

def _device_dequantize(raw_np: np.ndarray, ggml_type: GGMLType, shape, device, dtype):
    import torch

    raw = torch.from_numpy(np.array(raw_np)).to(device)  # a writable copy of the (read-only) memmap bytes
    if device.type == "cuda":
        from .quants import triton_ops

        return triton_ops.dequantize(raw, ggml_type, shape, dtype)
    from .quants import torch_ops

    return torch_ops.dequantize(raw, ggml_type, shape, dtype)


def _compare_bits(out: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    """(max abs error over finite golden values (inf if a non-finite one differs), bit mismatches)."""
    bits = out.view(np.uint32 if out.dtype == np.float32 else np.uint16)
    ref_bits = ref.view(bits.dtype)
    differ = (bits != ref_bits) & ~(np.isnan(out) & np.isnan(ref))
    n = int(np.count_nonzero(differ))
    if n == 0:
        return 0.0, 0
    finite = np.isfinite(ref)
    if np.any(differ & ~finite):
        return float("inf"), n
    diff = np.abs(out[finite].astype(np.float64) - ref[finite].astype(np.float64))
    return float(np.nanmax(diff)) if diff.size else 0.0, n


def check_dequantize(ggml, device) -> list[DequantCheck]:
    """Every tensor of the file through the device's dequantization vs quants.ref, per type."""
    import torch

    checks: dict[str, DequantCheck] = {}
    for t in ggml.tensors.values():
        c = checks.setdefault(t.ggml_type.name, DequantCheck(t.ggml_type.name))
        ref = t.dequantize()  # numpy golden, float32
        out = _device_dequantize(t.data, t.ggml_type, t.shape, device, torch.float32).cpu().numpy()
        err, n = _compare_bits(out.reshape(ref.shape), ref)
        c.tensors += 1
        c.elements += ref.size
        c.max_abs = max(c.max_abs, err)
        c.mismatched += n
        if device.type == "cuda":
            out16 = _device_dequantize(t.data, t.ggml_type, t.shape, device, torch.float16).cpu().numpy()
            with np.errstate(over="ignore"):  # float32 beyond float16's range -> inf, as the device rounds
                ref16 = ref.astype(np.float16)
            c.fp16_mismatched = (c.fp16_mismatched or 0) + _compare_bits(out16.reshape(ref.shape), ref16)[1]
    order = {name: i for i, name in enumerate(["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])}
    return sorted(checks.values(), key=lambda c: order.get(c.ggml_type, 99))


# --- 2. matmul per layer -------------------------------------------------------------------------

def _way(ggml_type: GGMLType, rows: int, n: int, k: int, device, dtype) -> str:
    if device.type != "cuda":
        return "cpu"
    if ggml_type in (GGMLType.F16, GGMLType.F32):
        return "cublas"
    from .quants import triton_ops

    return triton_ops.pick(rows, n, k, dtype)


def check_matmul(model, weights, device, rows: Sequence[int] = MATMUL_ROWS, seed: int = 0) -> list[MatmulCheck]:
    """Every QLinear of `model` on seeded inputs vs float64 x @ W.T + b with the golden's W, b."""
    import torch

    from .model import QLinear

    dtype = model.dtype
    rng = np.random.default_rng(seed)
    checks = []
    for name, m in model.named_modules():
        if not isinstance(m, QLinear):
            continue
        n, k = m.out_features, m.in_features
        w = weights[f"{name}.weight"].reshape(n, k).astype(np.float64)
        b = weights[f"{name}.bias"].astype(np.float64) if m.bias is not None else None
        rel, way = {}, {}
        for r in rows:
            x = torch.from_numpy(rng.standard_normal((r, k), dtype=np.float32)).to(device, dtype)
            with torch.no_grad():
                y = m(x).double().cpu().numpy()
            ref = x.double().cpu().numpy() @ w.T  # the same (rounded) x as the device saw
            if b is not None:
                ref += b
            rel[r] = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
            way[r] = _way(m.ggml_type, r, n, k, device, dtype)
        checks.append(MatmulCheck(name, m.ggml_type.name, (n, k), rel, way))
        del w
    return checks


def _block_of(name: str) -> str:
    """'decoder.blocks.3.attn.query' -> 'decoder.blocks.3'; others unchanged."""
    parts = name.split(".")
    return ".".join(parts[:3]) if len(parts) > 2 and parts[1] == "blocks" else name


# --- 3./4. audio: encoder, logits, transcript ----------------------------------------------------

def load_samples(path: str) -> np.ndarray:
    """16 kHz mono float32 samples: a .npy of float32 (or int16, / 32768) samples, or any audio file."""
    if str(path).endswith(".npy"):
        x = np.load(path)
        if x.ndim != 1:
            raise QWhisperError(f"{path}: expected a 1-D array of 16 kHz samples, got shape {x.shape}")
        return (x.astype(np.float32) / np.float32(32768.0)) if x.dtype == np.int16 else x.astype(np.float32)
    from .audio import load_audio

    return load_audio(path)


def default_audio() -> str | None:
    """A LibriVox utterance of pocketsphinx-testdata, else the shared jfk.wav, if present."""
    for p in (Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"),
              Path(os.environ.get("QWHISPER_SHARED", "/work/shared")) / "data" / "speech" / "jfk.wav"):
        if p.is_file():
            return str(p)
    return None


def _err(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    d = float(np.abs(a.astype(np.float64) - ref.astype(np.float64)).max())
    return d, d / float(np.abs(ref).max())


def check_audio(model, golden, ggml, samples: np.ndarray, audio_name: str, language: str | None,
                max_tokens: int = DEFAULT_MAX_TOKENS) -> AudioCheck:
    """Encoder, logits and greedy transcript of the first 30 s: device model vs the golden."""
    import torch

    from . import model_ref as R
    from .audio import N_SAMPLES, log_mel_spectrogram, pad_or_trim
    from .decoding import DecodingOptions, DecodingTask
    from .tokenizer import Tokenizer

    mel = log_mel_spectrogram(pad_or_trim(samples.astype(np.float32), N_SAMPLES), ggml.mel_filters)
    tokenizer = Tokenizer.from_ggml(ggml)
    if not tokenizer.is_multilingual:
        language = "en"
    options = DecodingOptions(language=language, without_timestamps=True, sample_len=max_tokens)

    t0 = time.perf_counter()
    xa_ref = R.encode(golden._weights, mel)  # (n_audio_ctx, C) float32
    golden_task = DecodingTask(golden, tokenizer, options)
    golden_result = golden_task.run(torch.from_numpy(xa_ref)[None])[0]
    tokens = list(golden_task.initial_tokens) + list(golden_result.tokens)
    logits_ref = R.decode(golden._weights, np.array(tokens), xa_ref)  # (T, n_vocab)
    golden_seconds = time.perf_counter() - t0

    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    with torch.no_grad():
        xa = model.embed_audio(torch.from_numpy(mel)[None])  # (1, n_audio_ctx, C)
        device_result = DecodingTask(model, tokenizer, options).run(xa)[0]
        sync()
        device_seconds = time.perf_counter() - t0
        tok = torch.tensor([tokens], device=model.device)
        logits = model.logits(tok, model.new_kv_cache(torch.from_numpy(xa_ref)[None]))[0].cpu().numpy()
        logits_e2e = model.logits(tok, model.new_kv_cache(xa))[0].cpu().numpy()
    enc_abs, enc_rel = _err(xa[0].float().cpu().numpy(), xa_ref)
    lg_abs, lg_rel = _err(logits, logits_ref)
    e2e_abs, e2e_rel = _err(logits_e2e, logits_ref)
    agree = float(np.mean(logits_e2e.argmax(-1) == logits_ref.argmax(-1)))
    return AudioCheck(audio_name, len(tokens), enc_abs, enc_rel, lg_abs, lg_rel, e2e_abs, e2e_rel, agree,
                      golden_result.text, device_result.text, list(device_result.tokens) == list(golden_result.tokens),
                      golden_seconds, device_seconds)


# --- one model -----------------------------------------------------------------------------------

def verify_model(path: str, device, samples: np.ndarray | None = None, audio_name: str = "",
                 language: str | None = "en", max_tokens: int = DEFAULT_MAX_TOKENS,
                 matmul_rows: Sequence[int] = MATMUL_ROWS) -> ModelReport:
    import torch

    from .ggml_file import read_ggml
    from .loader import load_model
    from .transcribe import NumpyWhisper

    t0 = time.perf_counter()
    device = torch.device(device)
    ggml = read_ggml(path)
    dequant = check_dequantize(ggml, device)
    model = load_model(ggml, device)
    golden = NumpyWhisper(ggml)  # its Weights: the golden's float32 tensors, dequantized once
    matmul = check_matmul(model, golden._weights, device, matmul_rows)
    audio = None
    if samples is not None:
        audio = check_audio(model, golden, ggml, samples, audio_name, language, max_tokens)
    dtype = str(model.dtype).replace("torch.", "")
    report = ModelReport(str(path), os.path.getsize(path), str(device), dtype, dequant, matmul, audio,
                         time.perf_counter() - t0)
    del model, golden
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return report


# --- output --------------------------------------------------------------------------------------

def _environment(device) -> str:
    import torch

    parts = [f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
             f"numpy {np.__version__}", f"torch {torch.__version__}"]
    if str(device).startswith("cuda"):
        import triton

        parts.append(f"triton {triton.__version__}, CUDA {torch.version.cuda}, GPU {torch.cuda.get_device_name(0)}")
    return ", ".join(parts)


def summary_lines(r: ModelReport) -> list[str]:
    """The printed summary of one model: per type, per block, audio, verdict."""
    out = [f"{Path(r.path).name} on {r.device} ({r.dtype} activations)"]
    for d in r.dequant:
        fp16 = "" if d.fp16_mismatched is None else f", float16 {'exact' if not d.fp16_mismatched else f'{d.fp16_mismatched} differ'}"
        out.append(f"  dequantize {d.ggml_type:5s} {d.tensors:4d} tensors {d.elements:>11,d} values: "
                   f"max abs error {d.max_abs:.3g} ({'bit-exact' if d.mismatched == 0 else f'{d.mismatched} differ'}{fp16})")
    blocks: dict[str, dict[int, float]] = {}
    for m in r.matmul:
        b = blocks.setdefault(_block_of(m.name), {})
        for rows, e in m.rel.items():
            b[rows] = max(b.get(rows, 0.0), e)
    rows = sorted({k for m in r.matmul for k in m.rel})
    out.append("  matmul relative error, worst linear per layer, rows " + " / ".join(map(str, rows)) + ":")
    for name, b in blocks.items():
        out.append(f"    {name:26s} " + "  ".join(f"{b[k]:.2e}" for k in rows))
    if r.audio:
        a = r.audio
        out.append(f"  audio {a.audio}: encoder rel {a.encoder_rel:.2e}, logits rel {a.logits_rel:.2e} "
                   f"(end to end {a.logits_e2e_rel:.2e}, max abs {a.logits_e2e_max_abs:.3g}), argmax agree "
                   f"{a.argmax_agree:.3f} over {a.tokens} positions")
        out.append(f"  transcript {'matches' if a.same_tokens else 'DIFFERS'}: golden {a.golden_text!r}"
                   + ("" if a.same_tokens else f" / device {a.device_text!r}"))
    out.append(f"  {'PASS' if r.passed else 'FAIL'}: dequantization {'bit-exact' if all(d.exact for d in r.dequant) else 'NOT exact'}, "
               f"worst matmul {r.worst_matmul():.2e} (tolerance {r.tolerance:.0e}) [{r.seconds:.1f} s]")
    return out


def format_report(reports: Sequence[ModelReport], environment: str, command: str = "") -> str:
    """Markdown report of several models."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = ["# Verification: device path vs numpy golden", "",
             f"Generated by `qwhisper verify`{f' (`{command}`)' if command else ''} on {date}: {environment}.", "",
             ("What is compared (qwhisper/verify.py): (1) every tensor of the file dequantized by the device path "
             "(CUDA: `triton_ops.dequantize`; CPU: `quants.torch_ops`) against `quants.ref`, bit for bit, float32 "
             "(and on CUDA float16 output against the golden rounded once); (2) every QLinear as the model runs it "
             "(CUDA: `triton_ops.linear`, the way it picks is named) on seeded N(0,1) inputs of "
             f"{'/'.join(map(str, MATMUL_ROWS))} rows against float64 `x @ W.T + b` with the golden's weights and the "
             "same rounded x: relative Frobenius error; (3) on the audio's first 30 s, the encoder output and the logits "
             "teacher-forced on the golden's greedy tokens (from the golden's audio features, and end to end from the "
             "device's own): max abs error, and rel = max abs / max |golden|; (4) greedy decoding without timestamps "
             "by each side from its own audio features: the same tokens or not."), "",
             "## Summary", "",
             ("| model file | device | dequantize: max abs error per type | bit-exact | worst matmul rel (tol) "
             "| encoder rel | logits rel (e2e) | argmax agree | transcript | verdict |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in reports:
        dq = ", ".join(f"{d.ggml_type} {d.max_abs:.3g}" for d in r.dequant)
        exact = "yes" if all(d.exact for d in r.dequant) else "NO"
        a = r.audio
        audio_cols = (f"{a.encoder_rel:.2e} | {a.logits_rel:.2e} ({a.logits_e2e_rel:.2e}) | {a.argmax_agree:.3f} | "
                      f"{'same' if a.same_tokens else 'differs'}" if a else "- | - | - | -")
        lines.append(f"| {Path(r.path).name} | {r.device} {r.dtype} | {dq} | {exact} | "
                     f"{r.worst_matmul():.2e} ({r.tolerance:.0e}) | {audio_cols} | {'PASS' if r.passed else 'FAIL'} |")
    for r in reports:
        lines += ["", f"## {Path(r.path).name}", "",
                  f"`{r.path}` ({r.file_bytes:,} bytes), on {r.device}, {r.dtype} activations, {r.seconds:.1f} s.", "",
                  "| tensor type | tensors | values | max abs error | float32 bits differ | float16 bits differ |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for d in r.dequant:
            lines.append(f"| {d.ggml_type} | {d.tensors} | {d.elements:,} | {d.max_abs:.3g} | {d.mismatched} | "
                         f"{'-' if d.fp16_mismatched is None else d.fp16_mismatched} |")
        rows = sorted({k for m in r.matmul for k in m.rel})
        lines += ["", "| layer | type | N x K | " + " | ".join(f"rel, {k} rows (way)" for k in rows) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in rows) + " |"]
        for m in r.matmul:
            lines.append(f"| {m.name} | {m.ggml_type} | {m.shape[0]}x{m.shape[1]} | "
                         + " | ".join(f"{m.rel[k]:.2e} ({m.way[k]})" for k in rows) + " |")
        if r.audio:
            a = r.audio
            lines += ["", f"Audio `{a.audio}` (first 30 s), {a.tokens} teacher-forced positions:", "",
                      f"- encoder output: max abs {a.encoder_max_abs:.3g}, rel {a.encoder_rel:.2e}",
                      f"- logits from the golden's audio features: max abs {a.logits_max_abs:.3g}, rel {a.logits_rel:.2e}",
                      (f"- logits end to end: max abs {a.logits_e2e_max_abs:.3g}, rel {a.logits_e2e_rel:.2e}; "
                      f"argmax = golden's at {a.argmax_agree:.1%} of positions"),
                      f"- greedy transcript, golden ({a.golden_seconds:.1f} s): {a.golden_text!r}",
                      (f"- greedy transcript, {r.device} ({a.device_seconds:.2f} s): {a.device_text!r} -> "
                      f"{'same tokens' if a.same_tokens else 'DIFFERENT tokens'}")]
    return "\n".join(lines) + "\n"


def save_json(reports: Sequence[ModelReport], environment: str, path: str | os.PathLike) -> None:
    """The reports as JSON (format_report can be rerun from it: load_json)."""
    import json

    Path(path).write_text(json.dumps({"environment": environment,
                                      "reports": [dataclasses.asdict(r) for r in reports]}, indent=1))


def load_json(path: str | os.PathLike) -> tuple[list[ModelReport], str]:
    import json

    data = json.loads(Path(path).read_text())
    reports = []
    for r in data["reports"]:
        r["dequant"] = [DequantCheck(**d) for d in r["dequant"]]
        r["matmul"] = [MatmulCheck(m["name"], m["ggml_type"], tuple(m["shape"]),
                                   {int(k): v for k, v in m["rel"].items()}, {int(k): v for k, v in m["way"].items()})
                       for m in r["matmul"]]
        r["audio"] = AudioCheck(**r["audio"]) if r["audio"] else None
        reports.append(ModelReport(**r))
    return reports, data["environment"]


# --- command line --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="+", help="GGML model file(s) or model names (tiny.en, base-q5_1, ...)")
    parser.add_argument("--audio", default=None,
                        help="speech for the logits/transcript check (any audio file, or a .npy of 16 kHz samples); "
                             "default: a LibriVox utterance of pocketsphinx-testdata or the shared jfk.wav if present")
    parser.add_argument("--no-audio", action="store_true", help="skip the encoder/logits/transcript check")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu, or auto (cuda when available)")
    parser.add_argument("--language", default="en", help="language of the audio (multilingual models)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="greedy tokens decoded at most")
    parser.add_argument("--report", default=DEFAULT_REPORT, help="markdown report to write ('-': none)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    from .models import resolve_model
    from .transcribe import resolve_device

    device = resolve_device(args.device)
    samples, audio_name = None, ""
    if not args.no_audio:
        audio = args.audio or default_audio()
        if audio is not None:
            samples, audio_name = load_samples(audio), Path(audio).name
        else:
            print("qwhisper verify: no audio given or found; skipping the logits/transcript check", file=sys.stderr)
    reports = []
    for name in args.model:
        path = str(resolve_model(name))
        r = verify_model(path, device, samples, audio_name, args.language, args.max_tokens)
        print("\n".join(summary_lines(r)), flush=True)
        reports.append(r)
    if args.report and args.report != "-":
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        command = "qwhisper verify " + " ".join(Path(m).name for m in args.model) + f" --device {args.device}"
        Path(args.report).write_text(format_report(reports, _environment(device), command))
        print(f"wrote {args.report}")
    if args.json:
        save_json(reports, _environment(device), args.json)
    return 0 if all(r.passed for r in reports) else 1


__all__ = [
    "AudioCheck",
    "DequantCheck",
    "MatmulCheck",
    "ModelReport",
    "add_arguments",
    "check_audio",
    "check_dequantize",
    "check_matmul",
    "format_report",
    "run",
    "summary_lines",
    "verify_model",
]
