"""numpy GOLDEN forward pass of Whisper: the clean reference, one free function per layer.

This is the model every other implementation (torch on CPU, Triton on CUDA) is checked against,
in the spirit of llm.c's train_gpt2.c: plain numpy, float32 activations, no batching, no torch.
One sequence at a time: a mel window is (n_mels, n_frames), tokens are (T,).

Its math is pinned to openai/whisper's PyTorch model (whisper/model.py), NOT to whisper.cpp:

* GELU is the exact erf form of `nn.GELU()`, 0.5*x*(1 + erf(x/sqrt(2))), evaluated in float64 and
  rounded once (whisper.cpp uses ggml's tanh approximation through an f16 lookup table);
* attention scales q and k each by d_head**-0.25 before q @ k.T, then softmax in float32
  (openai's `qkv_attention`); the decoder's self-attention is causal;
* LayerNorm has eps 1e-5 (nn.LayerNorm's default); its mean and variance are taken in float64;
* the conv front end is conv1 (k=3, pad 1) -> GELU -> conv2 (k=3, stride 2, pad 1) -> GELU,
  then + the encoder's positional embedding;
* logits = x @ token_embedding.T (tied embeddings), float32.

erf: numpy has none, `np.vectorize(math.erf)` costs ~0.2 us per element (seconds per encoder),
and scipy would be a large dependency for one function. `erf`/`erfc` below evaluate in float64
a Taylor series on |x| < 1 and, on |x| >= 1, the rational approximation of exp(x^2)*erfc(x)
that mpmath uses (mpmath/math2.py, BSD): relative error < 1e-14 (tests check it against
Python's math.erf/erfc), so after the float32 rounding GELU is correctly rounded or 1 ulp off.
GELU is computed as 0.5*x*erfc(-x/sqrt(2)), which equals the erf form and keeps full relative
accuracy for large negative x (where torch's float32 1 + erf(x) underflows to 0; the absolute
difference there is below 1e-7).

Weights come from a GGML file: `Weights` dequantizes each tensor once by the numpy golden
(`TensorInfo.dequantize()`, i.e. quants/ref.py), lazily, and caches the float32 array.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from .ggml_file import GGMLFile, HParams, read_ggml

F32 = np.float32
LN_EPS = 1e-5  # nn.LayerNorm's default, as openai/whisper uses it
CONV_KERNEL = 3  # both encoder convs: kernel 3, padding 1


# ------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------


class Weights:
    """GGML tensor name -> float32 array (openai state_dict names), dequantized once, lazily.

    Memory: the float32 copy of every tensor used (tiny: ~150 MB, base: ~290 MB).
    """

    def __init__(self, model: GGMLFile | str | os.PathLike):
        self.file = model if isinstance(model, GGMLFile) else read_ggml(model)
        self.hparams: HParams = self.file.hparams
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        w = self._cache.get(name)
        if w is None:
            w = self.file.tensors[name].dequantize()
            w.setflags(write=False)  # shared by every call: nobody may modify it
            self._cache[name] = w
        return w


# ------------------------------------------------------------------------------------------
# elementwise: erf, GELU, softmax
# ------------------------------------------------------------------------------------------

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
# erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)); 18 terms reach 1e-17 for |x| <= 1.
_ERF_TAYLOR = [(-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(18)]
# exp(x^2) * erfc(x) ~= P(x)/Q(x) for x >= 1 (mpmath/math2.py _erfc_coeff_P/_Q, ascending powers).
_ERFC_P = (1.0000000161203922312, 2.1275306946297962644, 2.2280433377390253297, 1.4695509105618423961,
           0.66275911699770787537, 0.20924776504163751585, 0.045459713768411264339,
           0.0063065951710717791934, 0.00044560259661560421715)
_ERFC_Q = (1.0000000000000000000, 3.2559100272784894318, 4.9019435608903239131, 4.4971472894498014205,
           2.7845640601891186528, 1.2146026030046904138, 0.37647108453729465912,
           0.080970149639040548613, 0.011178148899483545902, 0.00078981003831980423513)


def _horner(coeffs, x: np.ndarray) -> np.ndarray:
    """sum_i coeffs[i] * x**i (ascending coefficients), float64."""
    acc = np.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc


def _erf_small(x: np.ndarray) -> np.ndarray:
    """erf(x) for |x| < 1, float64 Taylor series."""
    return _TWO_OVER_SQRT_PI * x * _horner(_ERF_TAYLOR, x * x)


def _erfc_large(a: np.ndarray) -> np.ndarray:
    """erfc(a) for a >= 1, float64 (underflows to 0 beyond a ~ 26.5, like exp)."""
    with np.errstate(under="ignore"):
        return np.exp(-a * a) * _horner(_ERFC_P, a) / _horner(_ERFC_Q, a)


def erfc(x: np.ndarray) -> np.ndarray:
    """Complementary error function, elementwise, float64 in and out (relative error < 1e-14)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    small = a < 1.0
    out = np.empty_like(x)
    out[small] = 1.0 - _erf_small(x[small])
    r = _erfc_large(a[~small])
    out[~small] = np.where(x[~small] > 0, r, 2.0 - r)
    return out


def erf(x: np.ndarray) -> np.ndarray:
    """Error function, elementwise, float64 in and out (relative error < 1e-14)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    small = a < 1.0
    out = np.empty_like(x)
    out[small] = _erf_small(x[small])
    out[~small] = np.copysign(1.0 - _erfc_large(a[~small]), x[~small])
    return out


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU of nn.GELU(): 0.5*x*(1 + erf(x/sqrt 2)) = 0.5*x*erfc(-x/sqrt 2); any shape, float32."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * erfc(-x64 * math.sqrt(0.5))).astype(F32)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32 (max subtracted first; -inf entries give 0)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = LN_EPS) -> np.ndarray:
    """x (T, C) -> (T, C): (x - mean) / sqrt(var + eps) * weight + bias over C (biased variance)."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    return (((x64 - mean) / np.sqrt(var + eps)).astype(F32) * weight + bias).astype(F32)


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x (T, in) @ weight (out, in).T + bias (out,) -> (T, out)."""
    y = x @ weight.T
    return y if bias is None else y + bias


def conv1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int = 1) -> np.ndarray:
    """x (C_in, T) conv weight (C_out, C_in, 3) + bias (C_out,), padding 1 -> (C_out, T_out),
    T_out = (T + 2 - 3) // stride + 1 (nn.Conv1d's cross-correlation: no kernel flip)."""
    c_in, t = x.shape
    k = weight.shape[-1]
    assert weight.shape[1] == c_in and k == CONV_KERNEL, (x.shape, weight.shape)
    pad = (k - 1) // 2
    xp = np.pad(x, ((0, 0), (pad, pad)))  # (C_in, T + 2)
    t_out = (t + 2 * pad - k) // stride + 1
    y = np.zeros((weight.shape[0], t_out), dtype=F32)
    for j in range(k):  # one matmul per tap: out[:, i] += W[:, :, j] @ xp[:, i*stride + j]
        y += weight[:, :, j] @ xp[:, j : j + stride * (t_out - 1) + 1 : stride]
    return y + bias.reshape(-1, 1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int, q_offset: int | None = None) -> np.ndarray:
    """Multi-head scaled dot-product attention, openai's qkv_attention.

    q (Tq, C), k (Tk, C), v (Tk, C) -> (Tq, C), C = n_head * d_head.
    q_offset None: no mask. Otherwise causal: query i sits at position q_offset + i and sees
    keys 0..q_offset + i (the decoder's self-attention over its cache).
    """
    tq, c = q.shape
    tk = k.shape[0]
    d_head = c // n_head
    scale = F32(d_head ** -0.25)  # on q and k each, as openai (their product: 1/sqrt(d_head))
    qh = (q * scale).reshape(tq, n_head, d_head).transpose(1, 0, 2)  # (H, Tq, D)
    kh = (k * scale).reshape(tk, n_head, d_head).transpose(1, 0, 2)  # (H, Tk, D)
    vh = v.reshape(tk, n_head, d_head).transpose(1, 0, 2)  # (H, Tk, D)
    qk = qh @ kh.transpose(0, 2, 1)  # (H, Tq, Tk)
    if q_offset is not None:
        visible = np.arange(tk)[None, :] <= (q_offset + np.arange(tq))[:, None]  # (Tq, Tk)
        qk = np.where(visible, qk, F32(-np.inf))
    out = softmax(qk) @ vh  # (H, Tq, D)
    return out.transpose(1, 0, 2).reshape(tq, c)


def mlp(w: Weights, p: str, x: np.ndarray) -> np.ndarray:
    """x (T, C) -> (T, C): Linear(C, 4C) -> GELU -> Linear(4C, C)."""
    h = gelu(linear(x, w[f"{p}.mlp.0.weight"], w[f"{p}.mlp.0.bias"]))  # (T, 4C)
    return linear(h, w[f"{p}.mlp.2.weight"], w[f"{p}.mlp.2.bias"])


def qkv(w: Weights, p: str, x: np.ndarray, xkv: np.ndarray | None = None):
    """Projections of attention module p: q from x (T, C); k, v from xkv (default x). Key has no bias."""
    xkv = x if xkv is None else xkv
    q = linear(x, w[f"{p}.query.weight"], w[f"{p}.query.bias"])
    k = linear(xkv, w[f"{p}.key.weight"])
    v = linear(xkv, w[f"{p}.value.weight"], w[f"{p}.value.bias"])
    return q, k, v


def encoder_block(w: Weights, i: int, x: np.ndarray) -> np.ndarray:
    """Encoder block i: x (T, C) -> (T, C); pre-norm self-attention (no mask), then MLP."""
    p = f"encoder.blocks.{i}"
    n_head = w.hparams.n_audio_head
    h = layer_norm(x, w[f"{p}.attn_ln.weight"], w[f"{p}.attn_ln.bias"])
    q, k, v = qkv(w, f"{p}.attn", h)
    x = x + linear(attention(q, k, v, n_head), w[f"{p}.attn.out.weight"], w[f"{p}.attn.out.bias"])
    h = layer_norm(x, w[f"{p}.mlp_ln.weight"], w[f"{p}.mlp_ln.bias"])
    return x + mlp(w, p, h)


def encoder_stem(w: Weights, mel: np.ndarray) -> np.ndarray:
    """Conv front end: mel (n_mels, 2*n_audio_ctx) -> (n_audio_ctx, C) incl. positional embedding."""
    hp = w.hparams
    if mel.shape != (hp.n_mels, 2 * hp.n_audio_ctx):
        raise ValueError(f"mel must be (n_mels, n_frames) = ({hp.n_mels}, {2 * hp.n_audio_ctx}), got {mel.shape}")
    x = gelu(conv1d(mel.astype(F32), w["encoder.conv1.weight"], w["encoder.conv1.bias"], stride=1))  # (C, 3000)
    x = gelu(conv1d(x, w["encoder.conv2.weight"], w["encoder.conv2.bias"], stride=2))  # (C, 1500)
    return x.T + w["encoder.positional_embedding"]  # (1500, C)


def encode(w: Weights, mel: np.ndarray) -> np.ndarray:
    """mel (n_mels, 2*n_audio_ctx) float32 -> audio features xa (n_audio_ctx, n_audio_state) float32."""
    x = encoder_stem(w, mel)
    for i in range(w.hparams.n_audio_layer):
        x = encoder_block(w, i, x)
    return layer_norm(x, w["encoder.ln_post.weight"], w["encoder.ln_post.bias"])


# ------------------------------------------------------------------------------------------
# decoder with KV cache
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DecoderCacheRef:
    """The decoder's state for one window.

    self_k/self_v: per layer (n_text_ctx, C), preallocated; rows [0, offset) hold the keys and
    values of the tokens decoded so far. cross_k/cross_v: per layer (n_audio_ctx, C), the
    cross-attention keys/values of the audio features, computed once per window.
    """

    self_k: list[np.ndarray]
    self_v: list[np.ndarray]
    cross_k: list[np.ndarray]
    cross_v: list[np.ndarray]
    offset: int = 0

    @classmethod
    def new(cls, w: Weights, xa: np.ndarray) -> DecoderCacheRef:
        hp = w.hparams
        if xa.shape != (hp.n_audio_ctx, hp.n_text_state):
            raise ValueError(f"audio features must be ({hp.n_audio_ctx}, {hp.n_text_state}), got {xa.shape}")
        zeros = lambda: np.zeros((hp.n_text_ctx, hp.n_text_state), dtype=F32)  # noqa: E731
        p = [f"decoder.blocks.{i}.cross_attn" for i in range(hp.n_text_layer)]
        cross_k = [linear(xa, w[f"{q}.key.weight"]) for q in p]  # (n_audio_ctx, C) each
        cross_v = [linear(xa, w[f"{q}.value.weight"], w[f"{q}.value.bias"]) for q in p]
        return cls([zeros() for _ in p], [zeros() for _ in p], cross_k, cross_v)


def decoder_block(w: Weights, i: int, x: np.ndarray, cache: DecoderCacheRef) -> np.ndarray:
    """Decoder block i: x (T, C) of the tokens at positions cache.offset.. -> (T, C).

    Writes those tokens' self-attention K/V into the cache (does not advance cache.offset).
    """
    p = f"decoder.blocks.{i}"
    n_head = w.hparams.n_text_head
    t, offset = x.shape[0], cache.offset
    h = layer_norm(x, w[f"{p}.attn_ln.weight"], w[f"{p}.attn_ln.bias"])
    q, k, v = qkv(w, f"{p}.attn", h)
    cache.self_k[i][offset : offset + t] = k
    cache.self_v[i][offset : offset + t] = v
    a = attention(q, cache.self_k[i][: offset + t], cache.self_v[i][: offset + t], n_head, q_offset=offset)
    x = x + linear(a, w[f"{p}.attn.out.weight"], w[f"{p}.attn.out.bias"])

    h = layer_norm(x, w[f"{p}.cross_attn_ln.weight"], w[f"{p}.cross_attn_ln.bias"])
    q = linear(h, w[f"{p}.cross_attn.query.weight"], w[f"{p}.cross_attn.query.bias"])
    a = attention(q, cache.cross_k[i], cache.cross_v[i], n_head)
    x = x + linear(a, w[f"{p}.cross_attn.out.weight"], w[f"{p}.cross_attn.out.bias"])

    h = layer_norm(x, w[f"{p}.mlp_ln.weight"], w[f"{p}.mlp_ln.bias"])
    return x + mlp(w, p, h)


def decoder_embed(w: Weights, tokens: np.ndarray, offset: int) -> np.ndarray:
    """tokens (T,) at positions offset.. -> token + positional embeddings (T, C)."""
    hp = w.hparams
    tokens = np.asarray(tokens).reshape(-1)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= hp.n_vocab):
        raise ValueError(f"token ids must be in [0, {hp.n_vocab}), got {tokens.min()}..{tokens.max()}")
    if offset + tokens.size > hp.n_text_ctx:
        raise ValueError(f"{offset} + {tokens.size} tokens exceed the decoder context of {hp.n_text_ctx}")
    emb = w["decoder.token_embedding.weight"][tokens]
    return emb + w["decoder.positional_embedding"][offset : offset + tokens.size]


def decode(w: Weights, tokens, xa_or_cache: np.ndarray | DecoderCacheRef) -> np.ndarray:
    """Decoder forward: tokens (T,) -> logits (T, n_vocab) float32.

    With audio features xa (n_audio_ctx, C): a fresh cache, the tokens sit at positions 0..T-1.
    With a DecoderCacheRef: the tokens continue at cache.offset, their K/V are appended and
    cache.offset advances by T (incremental decoding gives the logits of a full recompute).
    """
    cache = xa_or_cache if isinstance(xa_or_cache, DecoderCacheRef) else DecoderCacheRef.new(w, xa_or_cache)
    x = decoder_embed(w, tokens, cache.offset)
    for i in range(w.hparams.n_text_layer):
        x = decoder_block(w, i, x, cache)
    cache.offset += x.shape[0]
    x = layer_norm(x, w["decoder.ln.weight"], w["decoder.ln.bias"])
    return x @ w["decoder.token_embedding.weight"].T  # (T, n_vocab)
