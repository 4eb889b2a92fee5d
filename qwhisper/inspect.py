"""`qwhisper inspect FILE`: header, tensor table and per-type totals of a GGML model (like gguf-dump)."""

from __future__ import annotations

import argparse

from .ggml_file import HPARAM_NAMES, read_ggml
from .quants import BLOCK_SIZES


def add_arguments(parser) -> None:
    parser.add_argument("model", help="GGML model file, or a model name (resolved like transcribe's --model)")
    parser.add_argument("--tensors", action=argparse.BooleanOptionalAction, default=True,
                        help="print the tensor table")


def format_report(f, tensors: bool = True) -> str:
    hp = f.hparams
    lines = [f"file: {f.path}", "hparams:"]
    for name in HPARAM_NAMES:
        extra = f"  ({hp.file_type_name}, quantization version {hp.qnt_version})" if name == "ftype" else ""
        lines.append(f"  {name:<14}{getattr(hp, name)}{extra}")
    lines.append(f"mel filters: {f.mel_filters.shape[0]} x {f.mel_filters.shape[1]} float32")
    lines.append(f"vocabulary: {len(f.vocab)} regular tokens ({'multilingual' if hp.is_multilingual else 'English-only'})")
    if tensors:
        lines.append(f"tensors: {len(f.tensors)}")
        lines.append(f"  {'name':<42}{'type':<6}{'shape':<20}{'bytes':>12}{'offset':>12}")
        for t in f.tensors.values():
            lines.append(f"  {t.name:<42}{t.ggml_type.name:<6}{str(list(t.shape)):<20}{t.nbytes:>12,}{t.offset:>12,}")
    lines.append("totals per type:")
    totals: dict = {}
    for t in f.tensors.values():
        n, b, e = totals.get(t.ggml_type, (0, 0, 0))
        totals[t.ggml_type] = (n + 1, b + t.nbytes, e + t.n_elements)
    for ty, (n, b, e) in sorted(totals.items()):
        bits = 8 * BLOCK_SIZES[ty][1] / BLOCK_SIZES[ty][0]
        lines.append(f"  {ty.name:<6}{n:>5} tensors {e:>14,} weights {b:>14,} bytes  ({bits:.2f} bits/weight)")
    all_bytes = sum(b for _, b, _ in totals.values())
    lines.append(f"  {'all':<6}{len(f.tensors):>5} tensors {sum(e for *_, e in totals.values()):>14,} weights "
                 f"{all_bytes:>14,} bytes")
    return "\n".join(lines)


def run(args) -> int:
    from .models import resolve_model

    print(format_report(read_ggml(resolve_model(args.model)), tensors=args.tensors))
    return 0
