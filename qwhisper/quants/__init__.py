"""ggml tensor types: ids, block geometry, and numpy quantize/dequantize dispatch.

The type ids are ggml's (`enum ggml_type` in ggml.h); the block geometry is written as
field sums, the way gguf-py writes it, so each number can be checked against the C struct.
Only F32, F16 and the five classic block formats are supported; every other id ggml knows
is recognised by name so that a file using it gets a clear "not supported yet" error.
"""

from __future__ import annotations

import enum
import math

import numpy as np


class GGMLType(enum.IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8


# (weights per block, bytes per block), as field sums of ggml-common.h's structs.
QK = 32
BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (QK, 2 + QK // 2),  # d:f16 | qs: 16 B of nibbles
    GGMLType.Q4_1: (QK, 2 + 2 + QK // 2),  # d:f16 m:f16 | qs
    GGMLType.Q5_0: (QK, 2 + 4 + QK // 2),  # d:f16 | qh: u32 fifth bits | qs
    GGMLType.Q5_1: (QK, 2 + 2 + 4 + QK // 2),  # d:f16 m:f16 | qh | qs
    GGMLType.Q8_0: (QK, 2 + QK),  # d:f16 | qs: 32 x int8
}

# Ids ggml defines that qwhisper does not read (yet). Removed ids (4, 5, 31-33, 36-38) are absent.
UNSUPPORTED_TYPE_NAMES: dict[int, str] = {
    9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}

QUANTIZED_TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0)


def type_name(type_id: int) -> str:
    """ggml's name for a type id, also for ids qwhisper does not support."""
    try:
        return GGMLType(type_id).name
    except ValueError:
        return UNSUPPORTED_TYPE_NAMES.get(type_id, f"unknown type {type_id}")


def parse_type(name: str) -> GGMLType:
    """'q5_1' / 'Q5_1' / 'f16' -> GGMLType; ValueError listing the choices otherwise."""
    try:
        return GGMLType[name.upper()]
    except KeyError:
        choices = ", ".join(t.name.lower() for t in GGMLType)
        raise ValueError(f"unknown tensor type {name!r}; choose one of {choices}") from None


def row_nbytes(ggml_type: GGMLType, n_per_row: int) -> int:
    """Bytes of one row of n_per_row weights; the row length must be a multiple of the block."""
    block, size = BLOCK_SIZES[ggml_type]
    if n_per_row % block:
        raise ValueError(f"{ggml_type.name} needs rows that are a multiple of {block} weights, got {n_per_row}")
    return n_per_row // block * size


def tensor_nbytes(ggml_type: GGMLType, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of numpy shape `shape` (last axis = ggml ne[0], the contiguous one)."""
    n_rows = math.prod(shape[:-1])  # python ints: no overflow on hostile dims
    return n_rows * row_nbytes(ggml_type, shape[-1])


def dequantize(raw: np.ndarray, ggml_type: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    """Raw bytes (uint8) of a tensor -> float32 array of `shape`, by the numpy golden."""
    from . import ref

    return ref.dequantize(raw, ggml_type, shape)


def quantize(x: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """float32 array (last axis contiguous) -> raw bytes (uint8), by the numpy golden."""
    from . import ref

    return ref.quantize(x, ggml_type)
