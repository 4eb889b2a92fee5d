"""Whisper weights in other formats -> whisper.cpp GGML file (f16 or f32).

The sources (CTranslate2 folders, OpenAI .pt, Hugging Face folders) are read by checkpoints.py.
The output is laid out exactly as whisper.cpp's `models/convert-pt-to-ggml.py` writes it:
hparams (ftype 1 = f16, 0 = f32), the 80/128-bin slaney mel filterbank (n_mels x 201 f32), the
regular tokens as raw bytes in rank order (50256 for the English vocab, 50257 multilingual; the
special tokens are implied), then every tensor under its openai/whisper name in the openai
state_dict order. In an f16 file, 2-D and 3-D weights are f16; 1-D tensors, the conv biases
(reshaped to (n_state, 1)) and both positional embeddings are f32.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .architectures import converted_type
from .checkpoints import _check_vocab, _CT2Source, _Source, open_source, read_vocab
from .errors import ModelFormatError, QWhisperError
from .ggml_file import HParams, TensorInfo, expected_tensor_shapes, read_ggml, write_ggml
from .quants import GGMLType

FTYPES = {"f32": GGMLType.F32, "f16": GGMLType.F16}
HEADER_FTYPE = {GGMLType.F32: 0, GGMLType.F16: 1}  # the last hparam of a converted file

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------
# the writer


def _converted(source: _Source, hp: HParams, ftype: GGMLType) -> Iterator[TensorInfo]:
    """Every tensor in openai state_dict order, one at a time (peak memory: one tensor)."""
    shapes = expected_tensor_shapes(hp)
    for name in shapes:  # expected_tensor_shapes lists openai's state_dict order
        shape = shapes[name]
        a = source.get(name)
        if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
            a = a.reshape(a.shape[0], 1)  # whisper.cpp adds them to (n_state, n_frames) rows
        if tuple(a.shape) != shape:
            raise ModelFormatError(source.path, f"tensor {name!r} has shape {list(a.shape)}, expected "
                                                f"{list(shape)} from the model's dimensions")
        t = converted_type(name, shape, ftype)
        # astype('<f2') rounds to nearest even, as ggml's f32 -> f16 does (finite values)
        data = np.ascontiguousarray(a, dtype="<f2" if t == GGMLType.F16 else "<f4")
        yield TensorInfo(name, t, shape, 0, data.reshape(-1).view(np.uint8))


def convert(src: PathLike | Sequence[PathLike], out_path: PathLike, ftype: str = "f16",
            vocab: PathLike | None = None) -> Path:
    """Convert a CTranslate2 folder, an OpenAI .pt or a Hugging Face folder to a GGML file.

    `src` may be a list of folders holding model.bin.part1, part2, ... of one CTranslate2 model.
    `vocab` names a vocabulary (see read_vocab) that replaces or supplies the model's own.
    Raises ModelFormatError / QWhisperError naming the offending file.
    """
    from .audio import mel_filters

    if ftype not in FTYPES:
        raise QWhisperError(f"unknown ftype {ftype!r}; choose f16 or f32")
    gtype = FTYPES[ftype]
    if Path(out_path).is_dir():
        raise QWhisperError(f"{out_path}: the output is a folder; give a file name such as ggml-model.bin")
    source = open_source(src)
    tokens = read_vocab(vocab) if vocab is not None else source.vocab
    if tokens is None:
        raise QWhisperError(f"{source.path}: this {source.kind} checkpoint carries no vocabulary; give one "
                            "with --vocab (gpt2.tiktoken / multilingual.tiktoken from openai-whisper's "
                            "whisper/assets, a CTranslate2 vocabulary.txt, a tokenizer.json, or a GGML model "
                            "of the same kind)")
    hp = HParams(*[getattr(source.hparams, f) for f in HParams.__dataclass_fields__][:-1],
                 HEADER_FTYPE[gtype])
    _check_vocab(tokens, hp.n_vocab, Path(vocab) if vocab is not None else source.path)
    if isinstance(source, _CT2Source):
        source.check_tied_projection()
    out_path = Path(out_path)
    write_ggml(out_path, hp, mel_filters(hp.n_mels), tokens, _converted(source, hp, gtype))
    return out_path


# ---------------------------------------------------------------------------------------------
# command line: qwhisper convert SRC OUT.bin [--ftype f16|f32] [--vocab FILE]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC",
                        help="CTranslate2 model folder (model.bin or model.bin.part1...), OpenAI .pt "
                             "checkpoint, or Hugging Face Whisper folder (config.json + model.safetensors)")
    parser.add_argument("out", metavar="OUT.bin", help="GGML file to write")
    parser.add_argument("--ftype", choices=tuple(FTYPES), default="f16",
                        help="weight type (1-D tensors, conv biases and positional embeddings stay f32)")
    parser.add_argument("--f32", dest="ftype", action="store_const", const="f32", help="same as --ftype f32")
    parser.add_argument("--vocab", metavar="FILE", default=None,
                        help="vocabulary: .tiktoken, CTranslate2 vocabulary.txt/json, tokenizer.json, "
                             "vocab.json, or a GGML model to copy it from (needed for OpenAI .pt)")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = convert(args.src, args.out, ftype=args.ftype, vocab=args.vocab)
    f = read_ggml(out)
    print(f"{out}: {f.hparams.file_type_name}, {len(f.tensors)} tensors, {len(f.vocab)} tokens, "
          f"{out.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
