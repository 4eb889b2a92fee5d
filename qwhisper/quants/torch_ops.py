"""ggml's tensor formats in plain torch: the CPU path of QLinear and an on-device reference.

Same function names and the same float32 arithmetic as the numpy golden (quants/ref.py), so
dequantize() here is bit-exact with ref.dequantize() (tests/test_model.py checks every tensor
of real files):

* d and m are float16 -> float32 conversions (exact);
* `(q - 8)*d`, `(q - 16)*d`, `q*d` are one float32 multiply of an exact small integer;
* `q*d + m` is a multiply (exact: 11-bit mantissa times at most 5 bits) then one rounded add,
  so neither an FMA nor its absence can change the result.
A float16/bfloat16 `dtype` rounds those float32 values once (to nearest even).

Works on any device (CUDA too) and on raw bytes of any shape: they are flattened and cut into
blocks (n_blocks, type_size). A raw tensor must be contiguous bytes of exactly
tensor_nbytes(ggml_type, shape).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import BLOCK_SIZES, QK, GGMLType, tensor_nbytes



def _f16_field(b: torch.Tensor, at: int) -> torch.Tensor:
    """Little-endian f16 at byte `at` of each block (n_blocks, type_size) -> float32 (n_blocks, 1)."""
    return b[:, at : at + 2].contiguous().view(torch.float16).float()  # .contiguous(): aligned copy


def _unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n_blocks, 16) uint8 -> (n_blocks, 32) uint8: lo nibbles = weights 0..15, hi = 16..31."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


def _fifth_bits(qh: torch.Tensor) -> torch.Tensor:
    """qh bytes (n_blocks, 4), a little-endian u32 -> (n_blocks, 32) uint8 of 0x10 or 0 (bit j = weight j)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=qh.device)  # bit i of byte k is weight 8k + i
    bits = (qh.unsqueeze(-1) >> shifts) & 1  # (n_blocks, 4, 8)
    return bits.reshape(qh.shape[0], QK) << 4


# block_q4_0: 18 B / 32 weights = d:f16 | qs:16 B; w = (q - 8)*d
def dequantize_q4_0(b: torch.Tensor) -> torch.Tensor:
    """(n_blocks, 18) uint8 -> (n_blocks, 32) float32."""
    q = _unpack_nibbles(b[:, 2:18]).to(torch.int8) - 8
    return q.float() * _f16_field(b, 0)


# block_q4_1: 20 B / 32 weights = d:f16 | m:f16 | qs:16 B; w = q*d + m
def dequantize_q4_1(b: torch.Tensor) -> torch.Tensor:
    """(n_blocks, 20) uint8 -> (n_blocks, 32) float32."""
    q = _unpack_nibbles(b[:, 4:20])
    return q.float() * _f16_field(b, 0) + _f16_field(b, 2)


# block_q5_0: 22 B / 32 weights = d:f16 | qh:u32 (bit j = bit 4 of q[j]) | qs:16 B; w = (q - 16)*d
def dequantize_q5_0(b: torch.Tensor) -> torch.Tensor:
    """(n_blocks, 22) uint8 -> (n_blocks, 32) float32."""
    q = (_unpack_nibbles(b[:, 6:22]) | _fifth_bits(b[:, 2:6])).to(torch.int8) - 16
    return q.float() * _f16_field(b, 0)


# block_q5_1: 24 B / 32 weights = d:f16 | m:f16 | qh:u32 | qs:16 B; w = q*d + m
def dequantize_q5_1(b: torch.Tensor) -> torch.Tensor:
    """(n_blocks, 24) uint8 -> (n_blocks, 32) float32."""
    q = _unpack_nibbles(b[:, 8:24]) | _fifth_bits(b[:, 4:8])
    return q.float() * _f16_field(b, 0) + _f16_field(b, 2)


# block_q8_0: 34 B / 32 weights = d:f16 | qs:32 x int8; w = q*d
def dequantize_q8_0(b: torch.Tensor) -> torch.Tensor:
    """(n_blocks, 34) uint8 -> (n_blocks, 32) float32."""
    q = b[:, 2:34].contiguous().view(torch.int8)
    return q.float() * _f16_field(b, 0)


_DEQUANTIZE_BLOCKS = {
    GGMLType.Q4_0: dequantize_q4_0,
    GGMLType.Q4_1: dequantize_q4_1,
    GGMLType.Q5_0: dequantize_q5_0,
    GGMLType.Q5_1: dequantize_q5_1,
    GGMLType.Q8_0: dequantize_q8_0,
}
# Blocks per chunk: bounds the int/float temporaries (~25 MB) when dequantizing a large tensor.
_CHUNK_BLOCKS = 1 << 17


def _aligned_view(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bytes -> `dtype` elements; copies first when the bytes are not aligned for dtype
    (GGML files do not align tensor data, so memmap views often start at odd addresses)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if raw.data_ptr() % itemsize:
        raw = raw.clone()
    return raw.view(dtype)


def dequantize(raw: torch.Tensor, ggml_type: GGMLType, shape: Sequence[int],
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Raw GGML bytes (uint8 tensor, any shape, on any device) -> tensor of `shape` and `dtype`.

    Values are those of ref.dequantize() (float32), rounded once to `dtype`. F32 input with
    dtype float32 and aligned bytes is returned as a view, without a copy.
    """
    ggml_type = GGMLType(int(ggml_type))
    shape = tuple(int(n) for n in shape)
    if raw.dtype != torch.uint8:
        raise ValueError(f"raw tensor data must be uint8 bytes, got {raw.dtype}")
    raw = raw.reshape(-1)
    expected = tensor_nbytes(ggml_type, shape)
    if raw.numel() != expected:
        raise ValueError(f"{ggml_type.name} tensor of shape {shape} needs {expected} bytes, got {raw.numel()}")
    if ggml_type == GGMLType.F32:
        return _aligned_view(raw, torch.float32).view(shape).to(dtype)
    if ggml_type == GGMLType.F16:
        return _aligned_view(raw, torch.float16).view(shape).to(dtype)
    fn = _DEQUANTIZE_BLOCKS[ggml_type]
    blocks = raw.view(-1, BLOCK_SIZES[ggml_type][1])
    out = torch.empty((blocks.shape[0], QK), dtype=dtype, device=raw.device)
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        stop = start + _CHUNK_BLOCKS
        out[start:stop] = fn(blocks[start:stop])  # float32 -> dtype: one rounding
    return out.view(shape)


# Output rows of a width that is not a multiple of this get cuBLAS's slow kernels (51865, odd:
# 12x slower on an H100); dense_linear splits, triton_ops.dequant_matmul pads its scratch.
CUBLAS_N_ALIGN = 8


def dense_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, w, bias) for x (..., K) and a dense w (N, K), with N not a multiple of 8 on CUDA
    split as dequantize-and-multiply pads it (triton_ops.dequant_matmul), without a padded copy
    of w: the first N - N % 8 outputs of each row are computed into a buffer whose rows are a
    multiple of 8 wide, the last N % 8 by a second, narrow product into the same rows. cuBLAS
    writes rows of an odd width (the multilingual vocabulary, 51865) with a slow kernel, and
    rows of an even width not divisible by 8 (large-v3's 51866) with a 2-byte-aligned one.
    Returns (..., N), a view with row stride N rounded up to 8 when split.
    """
    n, k = w.shape
    if not x.is_cuda or n % CUBLAS_N_ALIGN == 0 or n < CUBLAS_N_ALIGN:
        return torch.nn.functional.linear(x, w, bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    n8 = n - n % CUBLAS_N_ALIGN
    y = x2.new_empty((x2.shape[0], n8 + CUBLAS_N_ALIGN))
    torch.mm(x2, w[:n8].t(), out=y[:, :n8])
    torch.mm(x2, w[n8:].t(), out=y[:, n8:n])
    y = y[:, :n]
    if bias is not None:
        y += bias
    return y.reshape(*lead, n)
