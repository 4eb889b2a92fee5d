"""GGML file -> torch Whisper (model.py) on a device.

Every GGML tensor name is a module path plus `weight`/`bias`/`positional_embedding`, so loading
is a name lookup. What is copied:
* QLinear weights (the 2-D matrices, any GGML type): their raw bytes are wrapped, not copied
  (torch.from_numpy on the file's memmap), on CPU; .to(device) copies them once on CUDA.
* Float tensors (biases, norms, conv weights, positional embeddings): F32 ones are views of the
  memmap when their bytes are 4-byte aligned and dtype is float32 (GGML files do not align data,
  so about a quarter of them are; the others are copied: they are small). Other types are
  dequantized by quants/torch_ops.py into `dtype`.
The memmap is read-only; the model never writes its weights (inference only, no_grad).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn

from .errors import ModelFormatError
from .ggml_file import GGMLFile, TensorInfo, read_ggml
from .model import QLinear, Whisper
from .quants import torch_ops

# Cache dequantized QLinear weights on CPU (float32: 4 bytes per weight) up to this size: every
# Whisper up to medium (769 M weights, 3.1 GB). Beyond, weights are dequantized on use.
CPU_WEIGHT_CACHE_BYTES = 4 << 30
# On CUDA, regroup the vocabulary (the tied token embedding) into planes rows at load where the
# Gluon GEMV takes it (Q5_0, K a multiple of 256: base to large-v3; QLinear.to_planes): the
# one-row logits GEMV then runs at ~72 % of copy bandwidth instead of ~41 % (performance.md 21).
VOCAB_PLANES = True
# The same for these weights of every decoder block: the fused step's GEMVs on planes (fc1 first:
# large-v3 q5_0 1.164 -> 1.135 ms a token on an H100, performance.md 21.5; q|k|v, cross-q and fc2
# too: 1.163 -> 1.129, and 5 beams of q4_0 0.588 -> 0.545, 22.2). Not attn.out and cross_attn.out:
# their Gluon GEMVs lost to the Triton step's (22.2). q|k|v go together (the fused step reads them
# as one weight) or not at all.
BLOCK_PLANES = ("attn.query", "attn.key", "attn.value", "cross_attn.query", "mlp.0", "mlp.2")


def _bytes_tensor(t: TensorInfo) -> torch.Tensor:
    """The tensor's raw bytes as a uint8 torch tensor sharing the memmap's memory (no copy)."""
    with warnings.catch_warnings():  # read-only memmap: fine, nothing writes to weights
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(t.data).reshape(-1))


def _float_tensor(path: str, t: TensorInfo, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A float tensor of `shape` (same element count as the file's) and `dtype` on CPU."""
    if int(np.prod(shape)) != t.n_elements:
        raise ModelFormatError(path, f"shape {list(t.shape)} does not fit the model's {list(shape)}",
                               t.offset, t.name)
    return torch_ops.dequantize(_bytes_tensor(t), t.ggml_type, t.shape, dtype).reshape(shape)


def load_model(path_or_ggmlfile: GGMLFile | str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> Whisper:
    """A Whisper model (eval mode, no grad) from a GGML file path or an already read GGMLFile.

    dtype: activation dtype; default float32 on CPU, float16 on CUDA.
    """
    f = path_or_ggmlfile if isinstance(path_or_ggmlfile, GGMLFile) else read_ggml(path_or_ggmlfile)
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.float16
    types = {name: t.ggml_type for name, t in f.tensors.items()}
    with torch.device("meta"):  # shapes only: every tensor is then taken from the file
        model = Whisper(f.hparams, types)

    for name, t in f.tensors.items():
        module_name, attr = name.rsplit(".", 1)
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ModelFormatError(f.path, "tensor has no place in the model", t.offset, name) from None
        if isinstance(module, QLinear) and attr == "weight":
            raw = _bytes_tensor(t)
            if raw.numel() != module.weight.numel():
                raise ModelFormatError(f.path, f"{raw.numel()} bytes, the model expects {module.weight.numel()}",
                                       t.offset, name)
            module.weight = raw.view(module.weight.shape).to(device)
        elif attr in module._parameters:
            value = _float_tensor(f.path, t, tuple(module._parameters[attr].shape), dtype).to(device)
            module._parameters[attr] = nn.Parameter(value, requires_grad=False)
        elif attr in module._buffers:
            module._buffers[attr] = _float_tensor(f.path, t, tuple(module._buffers[attr].shape), dtype).to(device)
        else:
            raise ModelFormatError(f.path, "tensor has no place in the model", t.offset, name)

    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelFormatError(f.path, f"missing tensor {missing[0]!r}{more}")

    qlinears = [m for m in model.modules() if isinstance(m, QLinear)]
    dequantized_bytes = sum(m.in_features * m.out_features for m in qlinears) * torch.finfo(dtype).bits // 8
    cache = device.type == "cpu" and dequantized_bytes <= CPU_WEIGHT_CACHE_BYTES
    for m in qlinears:
        m.cache_dequantized = cache
    if device.type == "cuda" and VOCAB_PLANES:
        model.decoder.token_embedding.to_planes()  # the vocabulary GEMV on planes, where Gluon runs it
    if device.type == "cuda":
        for block in model.decoder.blocks:
            qkv = [n for n in ("attn.query", "attn.key", "attn.value") if n in BLOCK_PLANES]
            if len(qkv) == 3 and not all(block.get_submodule(n).to_planes() for n in qkv):
                for n in qkv:  # one of them could not: none (the three share one merged weight)
                    block.get_submodule(n).from_planes()
            for name in BLOCK_PLANES:
                if name not in qkv:
                    block.get_submodule(name).to_planes()
    return model.eval().requires_grad_(False)
