"""f32/f16 GGML file -> block-quantized GGML file, as whisper.cpp's `whisper-quantize` writes it.

whisper.cpp's rule (examples/common-ggml.cpp, ggml_common_quantize_0): a tensor is quantized
when its name matches `.*`, is not one of the skipped names, and it has exactly 2 dims;
everything else (1-D biases and norms, 3-D conv weights) is copied byte for byte. The header
keeps every field but ftype, which becomes the target file type + 1000 * GGML_QNT_VERSION.
Quantization is ggml's reference (no importance matrix), through the numpy golden, so the
output is byte-identical to whisper.cpp's for the same input.

Beyond whisper.cpp: an already quantized input is accepted too (its weights are dequantized
by the golden and quantized again); whisper.cpp refuses such files.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

from .architectures import F32_TENSORS, header_ftype
from .errors import QWhisperError
from .ggml_file import GGMLFile, TensorInfo, read_ggml, write_ggml
from .quants import QUANTIZED_TYPES, GGMLType, parse_type, quantize

QUANTIZE_CHOICES = tuple(t.name.lower() for t in QUANTIZED_TYPES)


def should_quantize(name: str, shape: tuple[int, ...]) -> bool:
    """whisper.cpp's tensor selection: 2-D tensors except the conv biases and positional embeddings."""
    return len(shape) == 2 and name not in F32_TENSORS


def _quantized_tensors(src: GGMLFile, qtype: GGMLType) -> Iterator[TensorInfo]:
    # one tensor at a time: peak memory is one tensor's float32 copy, not the model's
    for t in src.tensors.values():
        if should_quantize(t.name, t.shape) and t.ggml_type != qtype:
            yield TensorInfo(t.name, qtype, t.shape, 0, quantize(t.dequantize(), qtype))
        else:
            yield t


def quantize_file(in_path: str | os.PathLike, out_path: str | os.PathLike, qtype: str | GGMLType) -> Path:
    """Quantize a GGML model file; returns the output path. The input is never modified."""
    qtype = parse_type(qtype) if isinstance(qtype, str) else qtype
    if qtype not in QUANTIZED_TYPES:
        raise QWhisperError(f"cannot quantize to {qtype.name}; choose one of {', '.join(QUANTIZE_CHOICES)}")
    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.exists() and in_path.resolve() == out_path.resolve():
        raise QWhisperError(f"{out_path}: output would overwrite the input model; choose another path")
    src = read_ggml(in_path)
    hp = dataclasses.replace(src.hparams, ftype=header_ftype(qtype))
    write_ggml(out_path, hp, src.mel_filters, src.vocab, _quantized_tensors(src, qtype))
    return out_path


def add_arguments(parser) -> None:
    parser.add_argument("input", help="f16/f32 (or quantized) whisper.cpp GGML model file")
    parser.add_argument("output", help="where to write the quantized model")
    parser.add_argument("type", choices=QUANTIZE_CHOICES, help="block format of the 2-D weights")


def run(args) -> int:
    out = quantize_file(args.input, args.output, args.type)
    print(f"{out}: {os.path.getsize(out):,} bytes ({args.type})")
    return 0
