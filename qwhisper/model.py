"""Whisper in torch, shaped like openai/whisper's model.py, on GGML weights.

Read top to bottom, smallest parts first: precision policy and QLinear (the one quant-aware
class), attention, residual block, encoder, decoder with a static KV cache, Whisper.
Module attribute names are the GGML tensor names (= openai's state_dict names), so loading is a
name lookup (loader.py). The numpy golden of the same math is model_ref.py.

Precision policy
* Activations run in the model's dtype: float32 on CPU; float16 on CUDA.
* LayerNorm runs in float32 and casts back (openai's LayerNorm); SDPA's softmax accumulates
  in float32 in every backend; logits are returned in float32.
* Exception: one-token decoder steps on CUDA (TextDecoder.fused_step) run the fused kernels of
  quants/triton_decoder.py, whose residual stream, q, attention outputs and MLP hidden are
  float32 (the KV cache keeps the model's dtype).
* Weights stay in their GGML type. QLinear dequantizes to the activation dtype on use
  (quants/torch_ops.py; the CUDA path will swap in Triton kernels behind the same class).
  With `cache_dequantized` set (the loader does so on CPU) the dequantized weight is kept
  per layer: 4 bytes per weight in float32 (tiny ~150 MB, base ~290 MB, large-v3 ~6.2 GB),
  against re-dequantizing every weight at every decoder step.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .ggml_file import HParams
from .quants import GGMLType, row_nbytes, torch_ops

if TYPE_CHECKING:
    from .quants.triton_ops import Partials


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (eps 1e-5) computed in float32 whatever the activation dtype.

    float16/bfloat16 inputs go to F.layer_norm as they are: its kernels accumulate the statistics
    and apply the affine map in float32 and round once to the input dtype, openai's x.float() ...
    .type(x.dtype) without the two casting passes (on CUDA those were a quarter of the encoder's
    kernel time)."""

    _fused_ok = True  # add_forward's Triton kernel; False after it failed to run once (torch ops then)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)

    def add_forward(self, x: Tensor, y: Tensor | Partials) -> tuple[Tensor, Tensor]:
        """(x + y, self(x + y)): a residual add and the LayerNorm after it; on CUDA one Triton
        kernel (quants/triton_ops.add_layer_norm) instead of two (or three with the cast). y may
        be a GEMM's split-K Partials (QLinear.forward_parts), summed by the same kernel."""
        if x.is_cuda and x.dtype == y.dtype and LayerNorm._fused_ok:
            try:
                from .quants.triton_ops import add_layer_norm

                return add_layer_norm(x, y, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
            except torch.cuda.OutOfMemoryError:
                raise
            except (ImportError, RuntimeError, triton_errors()) as e:  # no Triton / toolchain: torch ops
                warnings.warn(f"fused add + LayerNorm unavailable ({type(e).__name__}: {str(e)[:200]}); using torch")
                LayerNorm._fused_ok = False
        x = x + _tensor(y)
        return x, self(x)


def _tensor(y: Tensor | Partials) -> Tensor:
    """A QLinear.forward_parts result as a tensor (Partials summed by their own kernel)."""
    return y if isinstance(y, Tensor) else y.tensor()


class Conv1d(nn.Conv1d):
    """nn.Conv1d whose (dequantized float) weight and bias follow the input's dtype."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return super()._conv_forward(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


class QLinear(nn.Module):
    """y = x @ W.T + b, with W kept as raw GGML bytes of any type (F32, F16, Q4_0 ... Q8_0).

    weight: uint8 buffer (out_features, row_bytes): row r holds the blocks of W[r], so a slice of
    rows is a slice of bytes. bias: float (out_features,) or None. On CUDA a weight the Gluon GEMV
    takes may hold the same bytes regrouped as planes rows instead (`planes`, to_planes).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 ggml_type: GGMLType = GGMLType.F32):
        super().__init__()
        self.in_features, self.out_features, self.ggml_type = in_features, out_features, GGMLType(ggml_type)
        self.register_buffer("weight", torch.empty(out_features, row_nbytes(self.ggml_type, in_features),
                                                   dtype=torch.uint8))
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.cache_dequantized = False
        self._dequantized: Tensor | None = None  # not a buffer: never saved, rebuilt on a device change
        self.planes = False  # weight holds planes rows (quants/planes.py), not the file's ggml blocks

    def to_planes(self) -> bool:
        """Regroup a CUDA weight into planes rows in place (the same bytes and size) if the Gluon
        GEMV (quants/gluon_gemv.py) takes its type and shape and runs on this device; True if the
        weight now holds planes. Every reader of the weight follows `planes`: the CUDA kernels
        read planes, the torch paths convert back (ggml_bytes)."""
        if self.planes or not self.weight.is_cuda or self.cache_dequantized:
            return self.planes
        from .quants import gluon_gemv

        if not gluon_gemv.supports(self.ggml_type, self.out_features, self.in_features) \
                or not gluon_gemv.usable(self.weight.device, self.ggml_type):
            return False
        self._regroup(True)
        return True

    def from_planes(self) -> None:
        """Undo to_planes: the weight holds the file's ggml blocks again (in place)."""
        self._regroup(False)

    def _regroup(self, to: bool) -> None:
        """Regroup the weight in place, 4096 rows at a time (rows are independent: no peak), into
        planes rows (to) or back into ggml blocks."""
        if self.planes == to:
            return
        from .quants import planes

        convert = planes.to_planes if to else planes.from_planes
        for r0 in range(0, self.out_features, 4096):
            rows = self.weight[r0:r0 + 4096]
            rows.copy_(convert(rows, self.ggml_type, rows.shape[0], self.in_features))
        self.planes = to

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """A state_dict holds the file's ggml blocks whatever the layout in memory (planes)."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.planes:
            destination[prefix + "weight"] = self.ggml_bytes()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Loads ggml blocks (what state_dict gives); a planes weight is regrouped again after
        (unless the weight was not copied: missing, or a shape error)."""
        errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.planes and prefix + "weight" in state_dict and len(error_msgs) == errors:
            self.planes = False  # the buffer now holds the ggml blocks just copied
            self._regroup(True)

    def ggml_bytes(self, rows: Tensor | None = None) -> Tensor:
        """The weight's rows (all, or `rows`) as the file's ggml blocks: the weight itself, or a
        converted copy where it holds planes."""
        raw = self.weight if rows is None else self.weight[rows]
        if not self.planes:
            return raw
        from .quants import planes

        return planes.from_planes(raw, self.ggml_type, raw.shape[0], self.in_features)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """W as (out_features, in_features) of `dtype`, on the weight's device."""
        w = self._dequantized
        if w is not None and w.dtype == dtype and w.device == self.weight.device:
            return w
        w = torch_ops.dequantize(self.ggml_bytes(), self.ggml_type, (self.out_features, self.in_features), dtype)
        self._dequantized = w if self.cache_dequantized else None
        return w

    def rows(self, index: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """W[index] (index.shape + (in_features,)): the embedding lookup of a tied embedding."""
        if self.cache_dequantized:
            return F.embedding(index, self.dequantized(dtype))
        raw = self.ggml_bytes(index.reshape(-1))  # only the rows asked for are dequantized
        w = torch_ops.dequantize(raw, self.ggml_type, (raw.shape[0], self.in_features), dtype)
        return w.view(*index.shape, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda and not self.cache_dequantized:
            y = self._via_triton(x)
            if y is not None:
                return y
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch_ops.dense_linear(x, self.dequantized(x.dtype), bias)  # (a vocabulary's odd width: split)

    def forward_parts(self, x: Tensor) -> Tensor | Partials:
        """forward(x), or, where linear() would take the split-K way for a block-quantized weight on
        CUDA (triton_ops.pick: 9..32 float16/bfloat16 rows, a batched step of windows), that GEMM's
        float32 partial sums (triton_ops.splitk_linear) for a consumer that sums them itself:
        LayerNorm.add_forward, Partials.gelu, the batched self-attention (_cached_attention). Not
        for float16 weights (cuBLAS)."""
        if (not x.is_cuda or self.cache_dequantized or self.ggml_type in (GGMLType.F16, GGMLType.F32)
                or QLinear.__dict__.get("_triton_linear") is False):
            return self.forward(x)
        shape = (self.out_features, self.in_features)
        try:
            from .quants import triton_ops

            if triton_ops.pick(x.numel() // max(1, x.shape[-1]), *shape, x.dtype) != "splitk":
                return self.forward(x)
            return triton_ops.splitk_linear(x, self.weight, self.ggml_type, shape, self.bias, self.planes)
        except torch.cuda.OutOfMemoryError:
            raise
        except (ImportError, RuntimeError, triton_errors()) as e:
            warnings.warn(f"split-K GEMM unavailable ({type(e).__name__}: {str(e)[:300]}); using forward()")
            QLinear._triton_linear = False
            return self.forward(x)

    def _via_triton(self, x: Tensor) -> Tensor | None:
        """x @ W.T + b through the Triton kernels on the raw blocks (quants/triton_ops.linear),
        imported on first use; None (and a warning, once) without a working Triton: the caller
        falls back to torch (openai's timing.py way)."""
        fn = QLinear.__dict__.get("_triton_linear")
        if fn is None:
            try:
                from .quants.triton_ops import linear as fn
            except ImportError as e:
                warnings.warn(f"Triton kernels unavailable ({e}); falling back to torch dequantize + F.linear")
                fn = False
            QLinear._triton_linear = fn
        if not fn:
            return None
        try:
            return fn(x, self.weight, self.ggml_type, (self.out_features, self.in_features), self.bias, self.planes)
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, triton_errors()) as e:  # no CUDA toolchain; a Triton too old for a kernel
            warnings.warn(f"Failed to launch Triton kernels ({type(e).__name__}: {str(e)[:300]}); "
                          "falling back to torch dequantize + F.linear")
            QLinear._triton_linear = False
            return None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, ggml_type={self.ggml_type.name}" + (", planes" if self.planes else ""))


def _weight_type(types: Mapping[str, GGMLType] | None, name: str) -> GGMLType:
    return GGMLType.F32 if types is None else types.get(f"{name}.weight", GGMLType.F32)


# ------------------------------------------------------------------------------------------
# attention and blocks
# ------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """openai's MultiHeadAttention on SDPA. Key has no bias.

    The softmax scale is SDPA's default 1/sqrt(d_head); openai multiplies q and k by
    d_head**-0.25 each, the same product (model_ref.py does that; the two differ by rounding only).
    """

    def __init__(self, n_state: int, n_head: int, name: str, types: Mapping[str, GGMLType] | None = None):
        super().__init__()
        self.n_head = n_head
        self.query = QLinear(n_state, n_state, True, _weight_type(types, f"{name}.query"))
        self.key = QLinear(n_state, n_state, False, _weight_type(types, f"{name}.key"))
        self.value = QLinear(n_state, n_state, True, _weight_type(types, f"{name}.value"))
        self.out = QLinear(n_state, n_state, True, _weight_type(types, f"{name}.out"))

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None,
                positions: Tensor | None = None, cache: tuple[Tensor, Tensor] | None = None,
                qk_heads: list[int] | None = None, qk_out: list[Tensor] | None = None) -> Tensor | Partials:
        """x (B, T, C) -> (B, T, C); for a batched step on CUDA (9..32 rows) the out projection's
        split-K Partials instead (QLinear.forward_parts), for the residual add to sum.

        kv: precomputed (k, v), each (B / G, S, C): cross-attention over the audio features,
        shared by the G consecutive rows (beams) of each window (see qkv_attention).
        cache: static self-attention buffers (k_cache, v_cache), each (B, n_ctx, C); this call's
        k, v are written at `positions` (T,) and the queries attend over the whole buffer
        under `mask` (T, n_ctx) bool, True = may attend.
        Neither: self-attention over x, no mask (the encoder).
        qk_heads (cross-attention only): also append to `qk_out` the scaled q.k of these heads,
        (B, len(qk_heads), T, S) float32 before softmax (word timestamps; SDPA returns no weights).
        """
        if kv is not None:
            k, v = kv
            if x.is_cuda and not qk_heads:
                # one query a window: the query product's split-K partials go to the kernel (which
                # declines other shapes; the partials are then summed as query(x) would sum them)
                p = self.query.forward_parts(x)
                o = _cross_attention(p, k, v, self.n_head)
                if o is not None:
                    return self.out.forward_parts(o)
                q = _tensor(p)
            else:
                q = self.query(x)
            if qk_heads:
                qk_out.append(self.qk(q, k, qk_heads))
        else:
            qkv = self.qkv_projection()
            if qkv is not None and cache is not None and x.is_cuda and x.shape[1] == 1:
                # a batched step: the split-K partial sums go to the attention kernel, which adds them
                p = qkv.forward_parts(x)
                if not isinstance(p, Tensor):
                    o = _cached_attention(p, None, None, cache[0], cache[1], self.n_head, positions)
                    if o is not None:
                        return self.out.forward_parts(o)
                    p = p.tensor()
                q, k, v = p.split(self.query.out_features, dim=-1)
            elif qkv is not None:  # one GEMM (GEMV) instead of three; q, k, v are views of its output
                q, k, v = qkv(x).split(self.query.out_features, dim=-1)
            else:
                q, k, v = self.query(x), self.key(x), self.value(x)
            if cache is not None:
                k_cache, v_cache = cache
                if q.is_cuda and q.shape[1] == 1:  # the kernel also writes k, v into the cache
                    o = _cached_attention(q, k, v, k_cache, v_cache, self.n_head, positions)
                    if o is not None:
                        return self.out.forward_parts(o)
                k_cache.index_copy_(1, positions, k)  # (B, n_ctx, C) rows positions <- (B, T, C)
                v_cache.index_copy_(1, positions, v)
                k, v = k_cache, v_cache
        return self.out.forward_parts(self.qkv_attention(q, k, v, mask))

    def qkv_projection(self) -> QLinear | None:
        """One QLinear over the query | key | value rows (the key's bias zeros), or None where the
        three weights differ in type, device, bias dtype or layout (planes). Built on first use: the three weights
        become views of its bytes (a GGML row is self-contained, so no extra memory); rebuilt when
        they or the biases are no longer the ones it was built from (moved, converted, replaced).
        Not a submodule: state_dict and the loader see the three projections only."""
        q, k, v = self.query, self.key, self.value
        got = self.__dict__.get("_qkv")
        if got is not None and got[0] == self._qkv_signature():
            return got[1]
        if (q.ggml_type != k.ggml_type or k.ggml_type != v.ggml_type or q.bias.dtype != v.bias.dtype
                or not q.planes == k.planes == v.planes
                or len({t.device for t in (q.weight, k.weight, v.weight, q.bias, v.bias)}) != 1):
            return None
        c = q.out_features
        lin = QLinear(q.in_features, 3 * c, True, q.ggml_type)
        cat = torch.cat([q.weight.reshape(-1), k.weight.reshape(-1), v.weight.reshape(-1)]).view(3 * c, -1)
        lin.weight = cat
        lin.planes = q.planes  # planes rows are self-contained too: the three's rows, one after another
        lin.bias = nn.Parameter(torch.cat([q.bias.detach(), torch.zeros_like(q.bias), v.bias.detach()]),
                                requires_grad=False)
        for i, m in enumerate((q, k, v)):
            m.weight = cat[i * c:(i + 1) * c]
        self.__dict__["_qkv"] = (self._qkv_signature(), lin)
        return lin

    def _qkv_signature(self) -> tuple:
        """What the merged projection was built from: the weights' and biases' memory, dtype, device."""
        q, k, v = self.query, self.key, self.value
        return (q.weight.data_ptr(), k.weight.data_ptr(), v.weight.data_ptr(), q.bias.data_ptr(), v.bias.data_ptr(),
                q.bias.dtype, q.weight.device, q.planes)

    def kv(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of audio features xa (B, S, C): each (B, S, C)."""
        return self.key(xa), self.value(xa)

    def qk(self, q: Tensor, k: Tensor, heads: list[int]) -> Tensor:
        """q (B, T, C), k (B / G, S, C) -> q.k / sqrt(d_head) of `heads`: (B, len(heads), T, S) float32."""
        b, t, c = q.shape
        s = k.shape[1]
        d = c // self.n_head
        idx = torch.as_tensor(heads, device=q.device)
        qh = q.view(b, t, self.n_head, d).transpose(1, 2)[:, idx].float()  # (B, h, T, D)
        kh = k.view(k.shape[0], s, self.n_head, d).transpose(1, 2)[:, idx].float()  # (B / G, h, S, D)
        kh = kh.repeat_interleave(b // k.shape[0], dim=0)
        return (qh @ kh.transpose(-1, -2)) * d ** -0.5

    def qkv_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """q (B, T, C), k and v (B / G, S, C) -> (B, T, C) through SDPA over n_head heads.

        G > 1 (beams or best_of samples of one window sharing its cross K/V, unmasked): the G
        rows' queries are attended as one (B / G, G * T) block, so K/V are neither copied nor
        reordered per beam.
        """
        b, t, c = q.shape
        s = k.shape[1]
        if k.shape[0] != b:
            g = b // k.shape[0]
            if mask is not None or g * k.shape[0] != b:
                raise ValueError(f"{b} query rows can't share K/V of {k.shape[0]} rows")
            return self.qkv_attention(q.reshape(b // g, g * t, c), k, v, None).reshape(b, t, c)
        d = c // self.n_head
        q = q.view(b, t, self.n_head, d).transpose(1, 2)  # (B, H, T, D)
        k = k.view(b, s, self.n_head, d).transpose(1, 2)  # (B, H, S, D)
        v = v.view(b, s, self.n_head, d).transpose(1, 2)  # (B, H, S, D)
        if mask is None and t <= FEW_QUERIES and q.is_cuda:  # decoder cross-attention: not cuDNN
            with sdpa_kernel(_FEW_QUERY_BACKENDS):
                out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, D)
        return out.transpose(1, 2).reshape(b, t, c)


# SDPA of a few unmasked queries a row on CUDA: the decoder's cross-attention for beams and
# best_of (a window's G rows attended as one block of G queries) and short prompts. Torch picks
# cuDNN there on sm_90; flash attention is faster and deterministic too (5 queries over 1500
# keys, large-v3 heads, H100: 12.5 against 20.7 us; the graphed 5-beam step 0.649 -> 0.599 ms a
# token, performance.md 11.2). cuDNN stays first where nothing here asks otherwise (the encoder).
FEW_QUERIES = 16
_FEW_QUERY_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# One-token self-attention over the static cache on CUDA (batched windows, beams): the fused
# step's split-key kernel reads keys 0..pos only (pos from the device), where SDPA under the
# (T, n_ctx) mask reads all n_ctx rows of every cache (448; a window's first steps need a few).
# Module switch for benchmarks; off -> SDPA.
CACHED_ATTENTION_TRITON = True
_attention_counters: dict = {}  # (device, size) -> int32 zeros the kernel leaves zero

# Cross-attention of one query a window on CUDA (a batched step of windows): the split-key
# kernel over the window's 1500 audio keys, given the query product's split-K partials.
# cuDNN's SDPA, which torch picks for these shapes, is not deterministic there: repeated on the
# same input its output differed in 325 of 640 calls (25 windows, large-v3 shapes, H100), so
# batched transcripts differed run to run (performance.md 11.1). The kernel combines each head's
# partial results in split order: the same bits every time. Beams (several query rows a window)
# keep SDPA, where cuDNN measured deterministic. Module switch; off -> SDPA.
CROSS_ATTENTION_TRITON = True


def _attention_counters_for(device: torch.device, n: int) -> Tensor:
    counters = _attention_counters.get((device, n))
    if counters is None:
        counters = _attention_counters[(device, n)] = torch.zeros(n, dtype=torch.int32, device=device)
    return counters


def _cross_attention(q: Tensor | Partials, k: Tensor, v: Tensor, n_head: int) -> Tensor | None:
    """q (B, 1, C) of one step, or the query product's split-K Partials, over the windows' cross
    k, v (B, S, C) -> (B, 1, C) through triton_decoder.attention (its one-query kernel); None where
    the kernel can't run (switch off, odd head size, a Triton failure): the caller uses SDPA."""
    global CROSS_ATTENTION_TRITON
    b, t, c = q.shape
    d = c // n_head
    if (not CROSS_ATTENTION_TRITON or t != 1 or b != k.shape[0] or d & (d - 1) or k.stride(2) != 1
            or k.stride() != v.stride()):
        return None
    try:
        from .quants import triton_decoder
    except ImportError:
        CROSS_ATTENTION_TRITON = False
        return None
    out = torch.empty((b, c), dtype=q.dtype, device=k.device)
    query = q.view(b, c) if isinstance(q, Tensor) else type(q)(q.parts, q.bias, q.dtype, (b, c))
    if not _attention_ran(triton_decoder, "cross-attention", q=query, k=k, v=v, n_head=n_head, out=out,
                          counters=_attention_counters_for(k.device, k.shape[0] * n_head),
                          split_s=triton_decoder.CROSS_SPLIT_S):
        CROSS_ATTENTION_TRITON = False
        return None
    return out.view(b, 1, c)


def _attention_ran(triton_decoder, what: str, **args) -> bool:
    """triton_decoder.attention(**args); False, with a warning, where it failed to compile or run
    (the caller turns its switch off and uses SDPA). Out of memory is raised."""
    try:
        triton_decoder.attention(**args)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, triton_errors()) as e:
        warnings.warn(f"Triton {what} failed ({type(e).__name__}: {str(e)[:300]}); using SDPA")
        return False
    return True


def _cached_attention(q: Tensor | Partials, k: Tensor | None, v: Tensor | None, k_cache: Tensor, v_cache: Tensor,
                      n_head: int, positions: Tensor) -> Tensor | None:
    """q, k, v (B, 1, C) of one step at positions[0]: writes k, v into row positions[0] of k_cache,
    v_cache (B, n_ctx, C) and attends q over their rows 0..positions[0] -> (B, 1, C). None, with
    the cache untouched, where the Triton kernel can't run (switch off, no Triton, odd head size):
    the caller writes the cache and runs SDPA then. q may be the q|k|v product's split-K Partials
    (B, 1, 3C), k and v None: the kernel adds the partials itself."""
    global CACHED_ATTENTION_TRITON
    parts = not isinstance(q, Tensor)
    b, c = q.shape[0], q.shape[-1] // (3 if parts else 1)
    d = c // n_head
    if (not CACHED_ATTENTION_TRITON or d & (d - 1) or k_cache.stride(2) != 1
            or (not parts and (k.stride(2) != 1 or k.stride() != v.stride()))):
        return None
    try:
        from .quants import triton_decoder
    except ImportError:
        CACHED_ATTENTION_TRITON = False
        return None
    counters = _attention_counters_for(k_cache.device, b * n_head)
    out = torch.empty((b, c), dtype=q.dtype, device=k_cache.device)
    if parts:
        query, k_new, v_new = type(q)(q.parts, q.bias, q.dtype, (b, 3 * c)), None, None
    else:
        query, k_new, v_new = q.view(b, c), k.view(b, c), v.view(b, c)
    if not _attention_ran(triton_decoder, "attention", q=query, k=k_cache, v=v_cache, n_head=n_head, out=out,
                          counters=counters, position=positions, split_s=triton_decoder.SELF_SPLIT_S,
                          k_new=k_new, v_new=v_new):
        CACHED_ATTENTION_TRITON = False
        return None
    return out.view(b, 1, c)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: self-attention, [cross-attention], MLP (Linear 4x, GELU exact, Linear)."""

    def __init__(self, n_state: int, n_head: int, cross_attention: bool, name: str,
                 types: Mapping[str, GGMLType] | None = None):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head, f"{name}.attn", types)
        self.attn_ln = LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head, f"{name}.cross_attn", types) if cross_attention else None
        self.cross_attn_ln = LayerNorm(n_state) if cross_attention else None
        n_mlp = 4 * n_state
        self.mlp = nn.Sequential(QLinear(n_state, n_mlp, True, _weight_type(types, f"{name}.mlp.0")), nn.GELU(),
                                 QLinear(n_mlp, n_state, True, _weight_type(types, f"{name}.mlp.2")))
        self.mlp_ln = LayerNorm(n_state)

    def forward(self, x: Tensor, cross_kv: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None,
                positions: Tensor | None = None, cache: tuple[Tensor, Tensor] | None = None,
                qk_heads: list[int] | None = None, qk_out: list[Tensor] | None = None,
                add: Tensor | None = None, defer: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, C) -> (B, T, C); decoder blocks take cross_kv, mask, positions, cache,
        qk_heads, qk_out (see MHA).

        Every residual add is fused with the LayerNorm after it (LayerNorm.add_forward): add, the
        previous block's deferred MLP output, is added to x with this block's first LayerNorm;
        defer: return (x, MLP output) for the caller to add the same way (the next block, or the
        final LayerNorm) instead of their sum."""
        if add is None:
            h = self.attn_ln(x)
        else:
            x, h = self.attn_ln.add_forward(x, add)
        a = self.attn(h, mask=mask, positions=positions, cache=cache)
        if self.cross_attn is not None:
            x, h = self.cross_attn_ln.add_forward(x, a)
            a = self.cross_attn(h, kv=cross_kv, qk_heads=qk_heads, qk_out=qk_out)
        x, h = self.mlp_ln.add_forward(x, a)
        u = self.mlp[0].forward_parts(h)
        u = self.mlp[1](u) if isinstance(u, Tensor) else u.gelu()  # split-K partials: summed with the GELU
        y = self.mlp[2].forward_parts(u)
        return (x, y) if defer else x + _tensor(y)


# ------------------------------------------------------------------------------------------
# encoder
# ------------------------------------------------------------------------------------------


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int,
                 types: Mapping[str, GGMLType] | None = None):
        super().__init__()
        self.conv1 = Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.empty(n_ctx, n_state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(n_state, n_head, False, f"encoder.blocks.{i}", types) for i in range(n_layer))
        self.ln_post = LayerNorm(n_state)

    def stem(self, x: Tensor) -> Tensor:
        """Conv front end: mel (B, n_mels, 2*n_ctx) -> (B, n_ctx, C) incl. positional embedding."""
        x = F.gelu(self.conv1(x))  # (B, C, 2*n_ctx)
        x = F.gelu(self.conv2(x))  # (B, C, n_ctx): stride 2
        # contiguous (B, n_ctx, C): a permuted view here made every later residual add a strided
        # (non-vectorized) kernel, a third of the encoder's time at batch 8 (H100 profile)
        x = x.permute(0, 2, 1).contiguous()
        assert x.shape[1:] == self.positional_embedding.shape, "incorrect audio shape"
        return x + self.positional_embedding.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """mel (B, n_mels, 2*n_ctx) -> audio features (B, n_ctx, C)."""
        x = self.stem(x)
        y = None  # each block's MLP output, added with the next LayerNorm
        for block in self.blocks:
            x, y = block(x, add=y, defer=True)
        return self.ln_post(x) if y is None else self.ln_post.add_forward(x, y)[1]


# The encoder of a batch of at most this many windows is replayed from a CUDA graph on CUDA: at
# batch 1 its ~750-950 launches cost 2-5x the GPU time (large-v3 q5_0, H100: 51 ms wall for 9.7 ms
# of kernels); from ~8 windows the kernels outlast the launches and a graph's memory is not worth it.
ENCODER_GRAPH_MAX_BATCH = 4


def capture_graph(fn, device: torch.device):
    """Run fn() once eagerly on a side stream (compiles kernels, creates cuBLAS handles, grows the
    dequantize scratch buffer; its side effects happen), then record a second call in a CUDA graph
    (recorded, not run). Returns (graph, fn's output inside the graph, the scratch buffers the graph
    writes: keep them alive as long as the graph)."""
    from .quants import triton_ops

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out, triton_ops.scratch_buffers()


class _GraphedEncoder:
    """A CUDA graph of AudioEncoder.forward for one (batch, dtype, device): a static mel input
    buffer, captured on first use, replayed for every later window of that shape.

    The quantized layers dequantize into triton_ops' shared scratch buffer; the buffers that
    existed at capture are kept alive here, so a later growth of the scratch (the vocabulary of a
    prompt pass) leaves the graph's addresses valid."""

    def __init__(self, mel: Tensor):
        self.mel = torch.zeros_like(mel)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Tensor | None = None
        self.failed = False
        self._keep: list[Tensor] = []

    def run(self, encoder: AudioEncoder, mel: Tensor) -> Tensor | None:
        """Audio features of mel (B, n_mels, frames), or None if the graph cannot be captured."""
        if self.failed:
            return None
        self.mel.copy_(mel)
        if self.graph is None:
            try:
                self.graph, self.out, self._keep = capture_graph(lambda: encoder(self.mel), mel.device)
            except (RuntimeError, ImportError) as e:
                warnings.warn(f"CUDA graph capture of the encoder failed ({e}); encoding eagerly")
                self.failed, self.graph, self.out = True, None, None
                return None
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites the graph's output


# ------------------------------------------------------------------------------------------
# decoder and its static KV cache
# ------------------------------------------------------------------------------------------


class KVCache:
    """The decoder's state for one batch of windows (gpt-fast style static cache).

    self_k/self_v: per layer (B, n_text_ctx, C), preallocated; rows [0, offset) hold the tokens
    decoded so far, written in place at [offset, offset + T) (static shapes for CUDA graphs).
    cross_k/cross_v: per layer (B / n_group, n_audio_ctx, C), computed once from the audio
    features of each window and shared by its n_group rows (beams / best_of samples).
    """

    def __init__(self, self_k: list[Tensor], self_v: list[Tensor], cross_k: list[Tensor], cross_v: list[Tensor],
                 n_group: int = 1):
        self.self_k, self.self_v, self.cross_k, self.cross_v = self_k, self_v, cross_k, cross_v
        self.n_group = n_group
        self.offset = 0  # tokens already in the cache

    @property
    def batch_size(self) -> int:
        return self.self_k[0].shape[0]

    @torch.no_grad()
    def reorder(self, indices: Tensor) -> None:
        """Row b becomes a copy of row indices[b] (beam search: each beam follows its source), in place.
        With n_group > 1 rows may only move within their group (the shared cross K/V stay)."""
        indices = indices.to(device=self.self_k[0].device, dtype=torch.long)
        if indices.shape != (self.batch_size,):
            raise ValueError(f"reorder needs indices of shape ({self.batch_size},), got {tuple(indices.shape)}")
        buffers = (self.self_k, self.self_v, self.cross_k, self.cross_v)
        if self.n_group > 1:
            group = torch.arange(self.batch_size, device=indices.device) // self.n_group
            if not torch.equal(indices // self.n_group, group):
                raise ValueError(f"reorder across groups of {self.n_group} rows sharing cross K/V")
            buffers = (self.self_k, self.self_v)
        for bufs in buffers:
            for buf in bufs:
                buf.copy_(buf.index_select(0, indices))


# A decoder step of at most this many rows is replayed from a CUDA graph (beams, and the batched
# pipeline's windows: qwhisper.batched). Steps of 9..32 rows may dequantize into triton_ops' shared
# scratch buffer; the graph keeps the buffers it was captured with alive (_GraphedStep._keep), so a
# later growth of the scratch leaves its addresses valid. The persistent KV buffers of a graphed
# shape stay allocated (large-v3 q5_0 at 25 rows: 6.4 GB peak above the weights, H100). 32,
# not 16: `--batch-size 32` ran eagerly before (large-v3 q5_0, 25 windows x 112 tokens on an H100:
# 6.04 s eager, 1.04 s graphed; docs/reports/performance.md section 4).
GRAPH_MAX_ROWS = 32
# Steps of at most this many rows run the fused kernels (TextDecoder.fused_step). The kernels
# take up to 8 rows, but at 5 rows (beams) they measured slower than the unfused step on an
# H100 (large-v3 q5_0 graphed: 1.20 against 0.82 ms per token; benchmarks/README.md), so
# beams and best_of stay on the unfused path.
FUSED_STEP_MAX_ROWS = 1
# Buffer sets (each with its graph) per shape: caches alive at once (a language-detection cache
# not yet collected, say) each get one; beyond this they get fresh buffers and run eagerly.
GRAPH_SETS_PER_SHAPE = 2


class _GraphedStep:
    """Persistent KV buffers for one (windows, rows per window, dtype) shape, and a CUDA graph of
    the one-token decoder step on them (TextDecoder.forward_at), captured on first use.

    Every window of that shape reuses the buffers (new_kv_cache copies its cross K/V in and
    zeroes the self-attention rows), so the graph, which holds their addresses, stays valid.
    One KVCache at a time owns them (a second one alive at the same time gets another set, see
    GRAPH_SETS_PER_SHAPE). Replay: tokens copied in, position filled in, no host sync.
    """

    def __init__(self, self_k: list[Tensor], self_v: list[Tensor], cross_k: list[Tensor], cross_v: list[Tensor]):
        self.self_k, self.self_v, self.cross_k, self.cross_v = self_k, self_v, cross_k, cross_v
        rows = self_k[0].shape[0]
        self.tokens = torch.zeros((rows, 1), dtype=torch.long, device=self_k[0].device)
        self.positions = torch.zeros((1,), dtype=torch.long, device=self_k[0].device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None
        self.failed = False  # capture failed once: this shape runs eagerly
        self._keep: list[Tensor] = []  # scratch buffers the graph writes (see GRAPH_MAX_ROWS)
        self._owner: weakref.ref | None = None
        # graphs of the greedy loop's whole step on these buffers (qwhisper.greedy_loop)
        self.loop_graphs: dict = {}
        self.prompt_graphs: dict[tuple[int, int], _GraphedPrompt | None] = {}  # None: capture failed

    def in_use(self) -> bool:
        return self._owner is not None and self._owner() is not None

    def take(self, xa_kv: Iterable[tuple[Tensor, Tensor]], n_group: int) -> KVCache:
        """A KVCache on these buffers: cross K/V of this window copied in (layer by layer, as
        the iterable yields them), self K/V zeroed."""
        for buf, (k, v) in zip(zip(self.cross_k, self.cross_v), xa_kv):
            buf[0].copy_(k)
            buf[1].copy_(v)
        for buf in self.self_k + self.self_v:
            buf.zero_()
        cache = KVCache(self.self_k, self.self_v, self.cross_k, self.cross_v, n_group)
        cache._graphed = self
        self._owner = weakref.ref(cache)
        return cache

    def step(self, decoder: TextDecoder, tokens: Tensor, offset: int, cache: KVCache) -> Tensor | None:
        """Logits (rows, 1, n_vocab) of one token per row at `offset`, from the graph; None if
        it cannot be captured (then the caller runs the step eagerly)."""
        if self.failed:
            return None
        self.tokens.copy_(tokens)
        self.positions.fill_(offset)
        if self.graph is None:
            try:
                self._capture(decoder, cache)
            except RuntimeError as e:  # e.g. an op that cannot be captured: stay correct, go eager
                warnings.warn(f"CUDA graph capture of the decoder step failed ({e}); decoding eagerly")
                self.failed = True
                self.graph = self.logits = None
                return None
        self.graph.replay()
        return self.logits.clone()  # the graph's output buffer is overwritten by the next replay

    def _capture(self, decoder: TextDecoder, cache: KVCache) -> None:
        # the eager run writes this step's K/V; the replay that follows writes the same again
        self.graph, self.logits, self._keep = capture_graph(
            lambda: decoder.forward_at(self.tokens, self.positions, cache), self.tokens.device)

    def prompt(self, decoder: TextDecoder, tokens: Tensor, offset: int, logit_positions: Sequence[int],
               cache: KVCache) -> Tensor | None:
        """Logits (rows, len(logit_positions), n_vocab) of a T-token prompt at `offset`, from a
        graph of the prompt pass padded to T's bucket (PROMPT_BUCKETS); None where it can't (then
        the caller runs it eagerly).

        Padding goes after the prompt (the last token repeated): causal attention keeps the real
        positions from seeing it, and its K/V rows lie beyond the prompt, where each later step
        writes its own row before any query may attend to it."""
        t = tokens.shape[1]
        tb = next((b for b in PROMPT_BUCKETS if b >= t), None)
        lp = [p if p >= 0 else t + p for p in logit_positions]
        if tb is None or offset + tb > decoder.n_ctx or not all(0 <= p < t for p in lp):
            return None
        key = (tb, len(lp))
        g = self.prompt_graphs.get(key, False)
        if g is None:  # its capture failed before
            return None
        if g is False:
            g = _GraphedPrompt(tokens.shape[0], tb, len(lp), tokens.device)
        g.fill(tokens, offset, lp)
        if g.graph is None:
            try:
                g.graph, g.logits, g.keep = capture_graph(
                    lambda: decoder.forward_at(g.tokens, g.positions, cache, logit_positions=g.lp), tokens.device)
            except RuntimeError as e:
                warnings.warn(f"CUDA graph capture of the prompt pass failed ({e}); running it eagerly")
                self.prompt_graphs[key] = None
                return None
            self.prompt_graphs[key] = g
        g.graph.replay()
        return g.logits.clone()


# Prompt lengths the graphed prompt pass is padded to (_GraphedStep.prompt): a graph per bucket
# and number of logit positions; a longer prompt runs eagerly. The eager pass is host-bound
# (~750 launches for large-v3), so padding costs less than it saves.
PROMPT_BUCKETS = (8, 16, 32, 64, 128, 256)


class _GraphedPrompt:
    """Static inputs of one prompt-pass graph: tokens (rows, bucket), positions, logit positions."""

    def __init__(self, rows: int, bucket: int, n_logits: int, device: torch.device):
        self.tokens = torch.zeros((rows, bucket), dtype=torch.long, device=device)
        self.positions = torch.zeros((bucket,), dtype=torch.long, device=device)
        self.lp = torch.zeros((n_logits,), dtype=torch.long, device=device)
        self._arange = torch.arange(bucket, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None
        self.keep: list[Tensor] = []

    def fill(self, tokens: Tensor, offset: int, lp: list[int]) -> None:
        t = tokens.shape[1]
        self.tokens[:, :t].copy_(tokens)
        self.tokens[:, t:].copy_(tokens[:, -1:].expand(-1, self.tokens.shape[1] - t))
        torch.add(self._arange, offset, out=self.positions)
        self.lp.copy_(torch.tensor(lp, dtype=torch.long))


class TextDecoder(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int,
                 types: Mapping[str, GGMLType] | None = None):
        super().__init__()
        self.n_ctx = n_ctx
        # tied embedding: rows looked up for the input, x @ W.T for the logits
        self.token_embedding = QLinear(n_state, n_vocab, False, _weight_type(types, "decoder.token_embedding"))
        self.register_buffer("positional_embedding", torch.empty(n_ctx, n_state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(n_state, n_head, True, f"decoder.blocks.{i}", types) for i in range(n_layer))
        self.ln = LayerNorm(n_state)
        # CUDA: one-token steps of <= GRAPH_MAX_ROWS rows replay a CUDA graph (_GraphedStep)
        self.cuda_graphs = True
        self._graphed: dict[tuple, list[_GraphedStep]] = {}
        # CUDA: one-token steps run the fused kernels of quants/triton_decoder.py (see fused_step)
        self._fused_step = True
        self._fused_error: str | None = None  # why the fused step is off for this decoder, once warned
        self._fused_ran = False  # a fused step has run: later errors are raised, not fallen back from

    @property
    def fused_step(self) -> bool:
        """One-token CUDA steps (no alignment heads) through quants/triton_decoder.py: about 8
        kernels a layer with a float32 residual stream, instead of ~30 torch/Triton ops. Off: the
        unfused path below (also the fallback where the fused step can't run). Setting it drops
        the captured graphs, which recapture on their next step."""
        return self._fused_step

    @fused_step.setter
    def fused_step(self, on: bool) -> None:
        self._fused_step = bool(on)
        self.drop_graphs()

    def drop_graphs(self) -> None:
        """Forget the captured step graphs (they hold the addresses of the weights and kernels
        they ran); each buffer set recaptures on its next step."""
        for sets in self._graphed.values():
            for st in sets:
                st.graph = st.logits = None
                st.loop_graphs.clear()

    def _fused(self, rows: int):
        """The fused step (quants.triton_decoder.decoder_step) if it can run `rows` rows, else None."""
        if not self._fused_step or self._fused_error is not None or rows > FUSED_STEP_MAX_ROWS:
            return None
        try:
            from .quants import triton_decoder
        except ImportError as e:
            self._fused_error = f"Triton unavailable ({e})"
            return None
        why = triton_decoder.unsupported(self, rows)
        return None if why else triton_decoder.decoder_step

    def new_kv_cache(self, xa: Tensor, n_group: int = 1) -> KVCache:
        """Empty self-attention buffers for B * n_group rows and the cross K/V of audio features
        xa (B, n_audio_ctx, C), shared by each window's n_group consecutive rows.

        On CUDA (cuda_graphs on, B * n_group <= GRAPH_MAX_ROWS) the buffers are the model's
        persistent ones for this shape, so that one-token steps can replay a CUDA graph."""
        b, _, c = xa.shape
        if xa.is_cuda and self.cuda_graphs and b * n_group <= GRAPH_MAX_ROWS:
            sets = self._graphed.setdefault((b, n_group, xa.dtype, xa.device), [])
            st = next((s for s in sets if not s.in_use()), None)
            if st is None and len(sets) < GRAPH_SETS_PER_SHAPE:
                def zeros(rows: int, n: int) -> list[Tensor]:
                    return [xa.new_zeros(rows, n, c) for _ in self.blocks]

                st = _GraphedStep(zeros(b * n_group, self.n_ctx), zeros(b * n_group, self.n_ctx),
                                  zeros(b, xa.shape[1]), zeros(b, xa.shape[1]))
                sets.append(st)
            if st is not None:  # one layer's K/V at a time: copied in, then freed (not B x 2 x layers of them)
                return st.take((block.cross_attn.kv(xa) for block in self.blocks), n_group)
        self_k = [xa.new_zeros(b * n_group, self.n_ctx, c) for _ in self.blocks]
        self_v = [xa.new_zeros(b * n_group, self.n_ctx, c) for _ in self.blocks]
        cross = [block.cross_attn.kv(xa) for block in self.blocks]
        return KVCache(self_k, self_v, [k for k, _ in cross], [v for _, v in cross], n_group)

    def forward(self, tokens: Tensor, cache: KVCache, alignment_heads: Sequence[tuple[int, int]] | None = None,
                logit_positions: Sequence[int] | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """tokens (B, T) at positions cache.offset.. -> logits (B, T, n_vocab) float32; advances the cache.

        alignment_heads: (layer, head) pairs; then also returns their cross-attention q.k
        (B, len(alignment_heads), T, n_audio_ctx) float32, pre-softmax (word timestamps).
        logit_positions: indices into the T tokens (negative from the end); then only their logits
        are computed, (B, len(logit_positions), n_vocab) (see forward_at).
        """
        b, t = tokens.shape
        offset = cache.offset
        if offset + t > self.n_ctx:
            raise ValueError(f"{offset} + {t} tokens exceed the decoder context of {self.n_ctx}")
        if b != cache.batch_size:
            raise ValueError(f"tokens have batch {b} but the cache holds {cache.batch_size} rows")
        graphed = getattr(cache, "_graphed", None)
        if graphed is not None and t == 1 and alignment_heads is None and logit_positions is None:
            logits = graphed.step(self, tokens, offset, cache)
            if logits is not None:
                cache.offset = offset + 1
                return logits
        if graphed is not None and t > 1 and alignment_heads is None and logit_positions is not None:
            logits = graphed.prompt(self, tokens, offset, logit_positions, cache)
            if logits is not None:
                cache.offset = offset + t
                return logits
        positions = torch.arange(offset, offset + t, device=tokens.device)  # (T,)
        qk_out: list[Tensor] = []
        logits = self.forward_at(tokens, positions, cache, alignment_heads, qk_out, logit_positions)
        cache.offset = offset + t
        if alignment_heads is None:
            return logits
        # qk_out holds one (B, h_layer, T, S) per layer with heads, in layer order: regroup as asked
        order = sorted(range(len(alignment_heads)), key=lambda j: alignment_heads[j][0])  # stable
        weights = torch.cat(qk_out, dim=1) if qk_out else logits.new_zeros(b, 0, t, cache.cross_k[0].shape[1])
        return logits, weights[:, torch.as_tensor(order, device=weights.device).argsort()]

    def forward_at(self, tokens: Tensor, positions: Tensor, cache: KVCache,
                   alignment_heads: Sequence[tuple[int, int]] | None = None,
                   qk_out: list[Tensor] | None = None, logit_positions: Sequence[int] | Tensor | None = None) -> Tensor:
        """tokens (B, T) at `positions` (T,) long on the device -> logits (B, T, n_vocab) float32,
        or (B, len(logit_positions), n_vocab) of those of the T tokens only.

        logit_positions: the decoder's first pass over a window feeds the whole prompt (up to
        224 tokens) but needs the logits of two positions (<|startoftranscript|>, the last);
        projecting all T onto the vocabulary is T x n_vocab x n_state multiply-adds of waste
        (tiny, 140 prompt tokens: 2.8 G, about half of that pass on the CPU).

        Writes their K/V into the cache but leaves cache.offset alone. Every shape and index is a
        device tensor or fixed by (B, T), nothing is read back to the host: one decoder step can
        be captured in a CUDA graph and replayed with new tokens/positions copied in.
        """
        if (tokens.is_cuda and tokens.shape[1] == 1 and alignment_heads is None and logit_positions is None
                and (step := self._fused(tokens.shape[0])) is not None):
            if self._fused_ran:
                return step(self, tokens, positions, cache)
            try:  # first fused step: a kernel that can't compile here must not stop decoding
                logits = step(self, tokens, positions, cache)
                self._fused_ran = True
                return logits
            except (RuntimeError, ValueError, ImportError, triton_errors()) as e:
                self._fused_error = f"{type(e).__name__}: {e}"
                warnings.warn(f"fused decoder step failed ({self._fused_error[:300]}); using the unfused step")
        dtype = cache.self_k[0].dtype
        # query at position p sees cache rows 0..p (rows beyond are zeros or stale: masked)
        mask = torch.arange(self.n_ctx, device=tokens.device)[None, :] <= positions[:, None]  # (T, n_ctx)
        pe = self.positional_embedding.index_select(0, positions).to(dtype)  # (T, C)
        x = self.token_embedding.rows(tokens, dtype) + pe  # (B, T, C)
        y = None  # each block's MLP output, added with the next LayerNorm
        for i, block in enumerate(self.blocks):
            heads = [h for layer, h in alignment_heads if layer == i] if alignment_heads else None
            x, y = block(x, cross_kv=(cache.cross_k[i], cache.cross_v[i]), mask=mask, positions=positions,
                         cache=(cache.self_k[i], cache.self_v[i]), qk_heads=heads, qk_out=qk_out, add=y, defer=True)
        if logit_positions is not None:  # only these positions' logits: (B, len(logit_positions), C)
            pick = ((lambda t: t.index_select(1, logit_positions)) if isinstance(logit_positions, Tensor)
                    else (lambda t: t[:, list(logit_positions)]))  # a device index tensor: graphed prompt passes
            x, y = pick(x), (None if y is None else pick(_tensor(y)))
        x = self.ln(x) if y is None else self.ln.add_forward(x, y)[1]  # the last block's MLP output added here
        # the tied embedding as a QLinear: on CUDA the quantized blocks go through
        # triton_ops.linear (GEMV / few-row tensor cores) instead of a dequantized copy per step
        return self.token_embedding(x).float()  # (B, T, n_vocab)


def triton_errors() -> type[Exception]:
    """Triton's compile error class (not a RuntimeError), or RuntimeError if triton is absent."""
    try:
        from triton.compiler.errors import CompilationError
    except ImportError:
        return RuntimeError
    return CompilationError


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------


class Whisper(nn.Module):
    """Encoder + decoder. `types`: GGML tensor name -> type of each QLinear weight (default F32)."""

    def __init__(self, dims: HParams, types: Mapping[str, GGMLType] | None = None):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                                    dims.n_audio_layer, types)
        self.decoder = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head,
                                   dims.n_text_layer, types)
        # CUDA: encoder batches of <= ENCODER_GRAPH_MAX_BATCH windows replay a CUDA graph
        self.encoder_graphs = True
        self._encoder_graphs: dict[tuple, _GraphedEncoder] = {}

    @property
    def device(self) -> torch.device:
        return self.decoder.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype (that of the float parameters)."""
        return self.decoder.positional_embedding.dtype

    @torch.no_grad()
    def embed_audio(self, mel: Tensor) -> Tensor:
        """mel (B, n_mels, 2*n_audio_ctx) float32 -> audio features (B, n_audio_ctx, n_audio_state)."""
        expected = (self.dims.n_mels, 2 * self.dims.n_audio_ctx)
        if mel.ndim != 3 or tuple(mel.shape[1:]) != expected:
            raise ValueError(f"mel must be (batch, {expected[0]}, {expected[1]}), got {tuple(mel.shape)}")
        mel = mel.to(self.device, self.dtype)
        if mel.is_cuda and self.encoder_graphs and mel.shape[0] <= ENCODER_GRAPH_MAX_BATCH:
            key = (mel.shape[0], mel.dtype, mel.device)
            graphed = self._encoder_graphs.get(key)
            if graphed is None:
                graphed = self._encoder_graphs[key] = _GraphedEncoder(mel)
            out = graphed.run(self.encoder, mel)
            if out is not None:
                return out
        return self.encoder(mel)

    def cache_decoder_weights(self) -> int:
        """Keep a dequantized copy of every quantized decoder weight (QLinear.cache_dequantized):
        steps of several rows then run F.linear (cuBLAS) on it instead of dequantizing each weight
        at every step; one-row fused steps still read the blocks. Built now, in the activation
        dtype (not inside a CUDA graph capture); returns its bytes. F16/F32 weights need no copy."""
        dense = (GGMLType.F16, GGMLType.F32)
        lins: list[QLinear] = []
        merged: set[int] = set()  # q, k, v of a merged projection: not cached on their own
        for block in self.decoder.blocks:  # self-attention: the merged q|k|v projection is what runs
            att = block.attn
            qkv = att.qkv_projection()
            if qkv is not None:
                lins.append(qkv)
                merged |= {id(att.query), id(att.key), id(att.value)}
        lins += [m for m in self.decoder.modules() if isinstance(m, QLinear) and id(m) not in merged]
        n = 0
        for m in lins:
            if m.ggml_type not in dense:
                m.cache_dequantized = True
                n += m.dequantized(self.dtype).nbytes
        return n

    @torch.no_grad()
    def new_kv_cache(self, audio_features: Tensor, n_group: int = 1) -> KVCache:
        """A KVCache for len(audio_features) * n_group rows: static self-attn buffers + cross K/V
        of the audio, shared by each window's n_group rows (beam search, best_of)."""
        return self.decoder.new_kv_cache(audio_features.to(self.device, self.dtype), n_group)

    @torch.no_grad()
    def logits(self, tokens: Tensor, cache: KVCache, alignment_heads: Sequence[tuple[int, int]] | None = None,
               logit_positions: Sequence[int] | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """tokens (B, T) -> logits (B, T, n_vocab) float32 of positions cache.offset..+T; advances cache.offset.
        With alignment_heads [(layer, head), ...]: (logits, cross-attention q.k (B, heads, T, n_audio_ctx)).
        With logit_positions (indices into the T tokens): only those logits, (B, len(logit_positions), n_vocab)."""
        return self.decoder(tokens.to(self.device), cache, alignment_heads, logit_positions)
