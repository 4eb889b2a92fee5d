"""Planes: the same bytes as a ggml block row, regrouped by field, for the CUDA GEMV.

A ggml Q5_0 row is K/32 blocks of 22 bytes (d:f16 | qh:u32 | qs[16]), so its fields sit at
2-byte-aligned offsets and a kernel can only read them 2 or 4 bytes at a time. In planes a row
is the qs of all its blocks (16 bytes a block, 16-byte aligned), then their qh (4 bytes a block),
then their d (2 bytes a block): the same bytes, so the weight takes the file's size in VRAM, and
lane j of a row's 8 lanes reads block j's qs with one 16-byte load, 8 lanes 128 contiguous bytes
(quants/gluon_gemv.py: 72 % of copy bandwidth at the vocabulary against 41 % on ggml blocks,
docs/reports/performance.md 21). Each row stays self-contained (a slice of rows is a slice of
bytes) and 16-byte aligned where K is a multiple of 256 (8 blocks of 22 bytes = 11 x 16).

Field order in a planes row, for every block type: qs | qh | d | m (those the type has). The CPU
golden never sees planes: they exist only in CUDA memory, made at load (QLinear.to_planes).
"""

from __future__ import annotations

import torch

from . import BLOCK_SIZES, GGMLType

# (name, offset in the ggml block, bytes) of each field, in planes order
_FIELDS: dict[GGMLType, tuple[tuple[str, int, int], ...]] = {
    GGMLType.Q4_0: (("qs", 2, 16), ("d", 0, 2)),
    GGMLType.Q4_1: (("qs", 4, 16), ("d", 0, 2), ("m", 2, 2)),
    GGMLType.Q5_0: (("qs", 6, 16), ("qh", 2, 4), ("d", 0, 2)),
    GGMLType.Q5_1: (("qs", 8, 16), ("qh", 4, 4), ("d", 0, 2), ("m", 2, 2)),
    GGMLType.Q8_0: (("qs", 2, 32), ("d", 0, 2)),
}
for _t, _f in _FIELDS.items():
    assert sum(s for _, _, s in _f) == BLOCK_SIZES[_t][1], _t


def plane_offsets(ggml_type: GGMLType) -> dict[str, int]:
    """Where each field's plane starts in a planes row, in bytes per block of the row (multiply by
    K/32): {'qs': 0, 'qh': 16, 'd': 20} for Q5_0. Fields the type lacks are missing."""
    out, at = {}, 0
    for name, _, size in _FIELDS[GGMLType(ggml_type)]:
        out[name] = at
        at += size
    return out


def _check(raw: torch.Tensor, ggml_type: GGMLType, n: int, k: int) -> int:
    if ggml_type not in _FIELDS:
        raise ValueError(f"planes hold block types {[t.name for t in _FIELDS]}, not {GGMLType(ggml_type).name}")
    if k % 32:
        raise ValueError(f"planes need K a multiple of 32, got {k}")
    nb = k // 32
    if raw.dtype != torch.uint8 or raw.numel() != n * nb * BLOCK_SIZES[ggml_type][1]:
        raise ValueError(f"{GGMLType(ggml_type).name} ({n}, {k}) needs {n * nb * BLOCK_SIZES[ggml_type][1]} "
                         f"uint8 bytes, got {raw.numel()} of {raw.dtype}")
    return nb


def to_planes(raw: torch.Tensor, ggml_type: GGMLType, n: int, k: int) -> torch.Tensor:
    """The ggml bytes of an (n, k) weight -> the same bytes as planes rows, shape (n, row bytes)."""
    nb = _check(raw, ggml_type, n, k)
    blocks = raw.reshape(n, nb, BLOCK_SIZES[ggml_type][1])
    return torch.cat([blocks[:, :, o:o + s].reshape(n, nb * s) for _, o, s in _FIELDS[ggml_type]], dim=1)


def from_planes(planes: torch.Tensor, ggml_type: GGMLType, n: int, k: int) -> torch.Tensor:
    """Inverse of to_planes: planes rows -> the ggml bytes, shape (n, row bytes)."""
    nb = _check(planes, ggml_type, n, k)
    rows = planes.reshape(n, -1)
    fields, at = {}, 0
    for _, o, s in _FIELDS[ggml_type]:
        fields[o] = rows[:, at:at + nb * s].reshape(n, nb, s)
        at += nb * s
    return torch.cat([fields[o] for o in sorted(fields)], dim=2).reshape(n, -1)


__all__ = ["from_planes", "plane_offsets", "to_planes"]
