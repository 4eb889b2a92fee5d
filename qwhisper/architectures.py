"""Named Whisper architectures, and GGML files of any of them with random weights.

Real weights of the large models are not available offline, yet their speed and their
token/mel layout can be measured and tested on files of the right shapes; `toy` is a model
small enough for unit tests (gpt-fast's habit: tiny configs live beside the real ones).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .ggml_file import FTYPE_OF_TYPE, QNT_VERSION, QNT_VERSION_FACTOR, HParams, TensorInfo, expected_tensor_shapes
from .quants import QUANTIZED_TYPES, GGMLType, quantize

# n_audio_ctx 1500 = 3000 mel frames / 2 (conv2 stride); n_text_ctx 448 = whisper's max tokens.
_A, _T = 1500, 448
ARCHITECTURES: dict[str, HParams] = {
    #                 n_vocab  a_ctx a_state a_head a_layer t_ctx t_state t_head t_layer mels ftype
    "tiny.en": HParams(51864, _A, 384, 6, 4, _T, 384, 6, 4, 80, 1),
    "tiny": HParams(51865, _A, 384, 6, 4, _T, 384, 6, 4, 80, 1),
    "base.en": HParams(51864, _A, 512, 8, 6, _T, 512, 8, 6, 80, 1),
    "base": HParams(51865, _A, 512, 8, 6, _T, 512, 8, 6, 80, 1),
    "small.en": HParams(51864, _A, 768, 12, 12, _T, 768, 12, 12, 80, 1),
    "small": HParams(51865, _A, 768, 12, 12, _T, 768, 12, 12, 80, 1),
    "medium.en": HParams(51864, _A, 1024, 16, 24, _T, 1024, 16, 24, 80, 1),
    "medium": HParams(51865, _A, 1024, 16, 24, _T, 1024, 16, 24, 80, 1),
    "large-v2": HParams(51865, _A, 1280, 20, 32, _T, 1280, 20, 32, 80, 1),
    "large-v3": HParams(51866, _A, 1280, 20, 32, _T, 1280, 20, 32, 128, 1),
    "large-v3-turbo": HParams(51866, _A, 1280, 20, 32, _T, 1280, 20, 4, 128, 1),
    # unit tests: real vocab and mel layout, one narrow layer each side
    "toy.en": HParams(51864, _A, 64, 2, 1, _T, 64, 2, 1, 80, 1),
    "toy": HParams(51865, _A, 64, 2, 1, _T, 64, 2, 1, 80, 1),
}

# whisper.cpp's converter keeps these 2-D tensors in f32, as all 1-D ones; its quantizer skips them.
F32_TENSORS = ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding",
               "decoder.positional_embedding")


def converted_type(name: str, shape: tuple[int, ...], ftype: GGMLType) -> GGMLType:
    """The type whisper.cpp's convert-pt-to-ggml.py gives a tensor in an f16 (or f32) file."""
    if ftype == GGMLType.F32 or len(shape) < 2 or name in F32_TENSORS:
        return GGMLType.F32
    return GGMLType.F16


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> np.ndarray:
    """openai/whisper's encoder positional embedding, (length, channels) float32."""
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_timescale_increment * np.arange(channels // 2))
    scaled_time = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def random_tensors(hp: HParams, ftype: GGMLType, seed: int = 0):
    """Yield TensorInfo for every tensor of `hp` in whisper.cpp's order, random but well scaled.

    Weights ~ N(0, 1/fan_in) keep activations O(1) through the layers; layer-norm gains are 1.
    Quantized files follow whisper.cpp's rule: 2-D tensors quantized, F32_TENSORS kept.
    """
    rng = np.random.default_rng(seed)
    for name, shape in expected_tensor_shapes(hp).items():
        if name == "encoder.positional_embedding":
            x = sinusoids(*shape)
        elif name.endswith("ln.weight") or name.endswith("ln_post.weight"):
            x = np.ones(shape, np.float32)
        elif len(shape) == 1 or name.endswith(".bias"):
            x = rng.normal(0, 0.02, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            x = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)
        t = converted_type(name, shape, GGMLType.F32 if ftype == GGMLType.F32 else GGMLType.F16)
        if ftype in QUANTIZED_TYPES and len(shape) == 2 and name not in F32_TENSORS:
            t = ftype
        yield TensorInfo(name, t, shape, 0, quantize(x, t))


def header_ftype(ftype: GGMLType) -> int:
    """The header's ftype field for a file whose weights are `ftype` (quantized: + version * 1000)."""
    v = FTYPE_OF_TYPE[ftype]
    return v + QNT_VERSION * QNT_VERSION_FACTOR if ftype in QUANTIZED_TYPES else v


def placeholder_vocab(hp: HParams) -> list[bytes]:
    """Regular-token byte strings for a random model: the 256 single bytes, then unique fillers."""
    n = 50257 if hp.is_multilingual else 50256  # gpt2.tiktoken / multilingual.tiktoken sizes
    return [bytes([i]) for i in range(256)] + [b" tok%d" % i for i in range(256, n)]


def write_random_model(path: str | os.PathLike, arch: str, ftype: str | GGMLType = "f16", seed: int = 0,
                       vocab: list[bytes] | None = None) -> HParams:
    """Write a GGML file of a named architecture with random weights; returns its hparams."""
    from .audio import mel_filters
    from .ggml_file import write_ggml
    from .quants import parse_type

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    ftype = parse_type(ftype) if isinstance(ftype, str) else ftype
    hp = dataclasses.replace(ARCHITECTURES[arch], ftype=header_ftype(ftype))
    write_ggml(path, hp, mel_filters(hp.n_mels), vocab or placeholder_vocab(hp), random_tensors(hp, ftype, seed))
    return hp
